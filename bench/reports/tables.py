"""The MeCa paper's Tables II-VII (and extended versions) as Markdown, LaTeX and CSV.

Every table is a :class:`Table`: row labels, column groups (a defense, a ratio, a model, ...),
each with ACC and ASR sub-columns, cells ``mean ± std`` over seeds (``n`` in the caption), and
"Average" rows per dataset. Cells that were not run are missing ("—"), never zero. Everything is
computed from the tidy table; no number is typed in.

Which attacks and defenses a table shows, in which order and under which labels, comes from the
plug-ins' cards (``tables``, ``order``, ``label``, ``variant_params``; :mod:`bench.card`): Tables
II and III show the attacks and defenses that list them, their extended versions every defense
that was run, Table IV the defense that lists it with and without its variant, Tables V-VII the
defense that lists them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.card import NO_DEFENSE
from bench.reports import audit
from bench.reports.tidy import (at_main_budget, card, featured_defense, fmt, in_order, is_variant, label,
                                main_budget_scale, main_model, mean_std, members, one_variant_per_defense,
                                variant_label)

DATASET_ORDER = ["imagenette", "cifar10", "cifar100", "tinyimagenet"]
METRICS = ("acc", "asr")


@dataclass
class Table:
    name: str
    caption: str
    row_names: list[str]                      # names of the row-label levels
    rows: list[tuple]                         # row labels
    columns: list[str]                        # column-group labels
    cells: dict = field(default_factory=dict)  # (row, column, metric) -> (mean, std, n)
    broken: set = field(default_factory=set)   # (row, column) whose mean ACC is a broken model's

    # -- numbers ----------------------------------------------------------------------------------
    def mean(self, row, column, metric) -> float:
        return self.cells.get((row, column, metric), (math.nan, math.nan, 0))[0]

    def seeds(self) -> int:
        ns = [c[2] for c in self.cells.values() if c[2]]
        return max(ns) if ns else 0

    def frame(self) -> pd.DataFrame:
        """Numeric long form: one row per cell with mean, std and n (percentage points)."""
        out = []
        for (row, column, metric), (m, s, n) in self.cells.items():
            out.append({**dict(zip(self.row_names, row)), "column": column, "metric": metric.upper(),
                        "mean": m * 100 if n else np.nan, "std": s * 100 if n else np.nan, "n": n})
        return pd.DataFrame(out)

    # -- text -------------------------------------------------------------------------------------
    def header(self) -> list[str]:
        return [*self.row_names, *[f"{c} {m.upper()}" for c in self.columns for m in METRICS]]

    def text_rows(self) -> list[list[str]]:
        lines = []
        for row in self.rows:
            cells = [fmt(*self.cells.get((row, c, m), (math.nan, math.nan, 0)))
                     + (audit.BROKEN_SIGN if m == "acc" and (row, c) in self.broken else "")
                     for c in self.columns for m in METRICS]
            lines.append([*row, *cells])
        return lines

    def markdown(self) -> str:
        head = self.header()
        note = f"; {audit.BROKEN_SIGN} = {audit.BROKEN_NOTE}" if self.broken else ""
        out = [f"**{self.name}.** {self.caption} (n = {self.seeds()} seed(s) per cell; — = not run{note})", "",
               "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in self.text_rows()]
        return "\n".join(out) + "\n"

    def latex(self) -> str:
        esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")  # noqa: E731
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(self.caption)}}}",
                 r"\begin{tabular}{" + "l" * len(self.row_names) + "rr" * len(self.columns) + "}", r"\toprule",
                 " & ".join([""] * len(self.row_names) + [rf"\multicolumn{{2}}{{c}}{{{esc(c)}}}" for c in self.columns]) + r" \\",
                 " & ".join([esc(n) for n in self.row_names] + ["ACC", "ASR"] * len(self.columns)) + r" \\", r"\midrule"]
        for r in self.text_rows():
            if r[len(self.row_names) - 1] == "Average":
                lines.append(r"\midrule")
            lines.append(" & ".join(esc(c) for c in r) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"

    def write(self, folder: Path, stem: str) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"{stem}.md", folder / f"{stem}.tex", folder / f"{stem}.csv"]
        paths[0].write_text(self.markdown())
        paths[1].write_text(self.latex())
        self.frame().to_csv(paths[2], index=False)
        return paths


def _cells(df: pd.DataFrame, row_cols: list[str], col_col: str, columns: list, col_names: list[str]) -> dict:
    cells = {}
    for key, part in df.groupby(row_cols + [col_col]):
        row, col = tuple(key[:-1]), key[-1]
        if col not in columns:
            continue
        for m in METRICS:
            cells[(row, col_names[columns.index(col)], m)] = mean_std(part[m])
    return cells


def _broken(df: pd.DataFrame, row_cols: list[str], col_col: str, columns: list, col_names: list[str]) -> set:
    """The (row, column) cells whose mean ACC is more than the audit's margin below no defense's."""
    if "acc_nodef" not in df.columns or df.empty:
        return set()
    means = df.groupby(row_cols + [col_col])[["acc", "acc_nodef"]].mean()
    return {(tuple(key[:-1]), col_names[columns.index(key[-1])])
            for key, bad in audit.broken(means).items() if bad and key[-1] in columns}


def _fill(table: Table, df: pd.DataFrame, row_cols: list[str], col_col: str, columns: list,
          col_names: list[str]) -> Table:
    """The table's cells (mean, std, n per metric) and its broken cells, from the runs in ``df``."""
    table.cells = _cells(df, row_cols, col_col, columns, col_names)
    table.broken = _broken(df, row_cols, col_col, columns, col_names)
    return table


def _add_averages(table: Table, group_level: int = 0) -> Table:
    """Insert an "Average" row after each group of rows (per dataset), from the cell means."""
    if len(table.row_names) < 2:
        groups = {(): table.rows}
    else:
        groups = {}
        for r in table.rows:
            groups.setdefault(r[:group_level + 1], []).append(r)
    rows = []
    for prefix, members in groups.items():
        rows += members
        avg_row = (*prefix, "Average") if prefix else ("Average",)
        for c in table.columns:
            for m in METRICS:
                means = [table.cells[(r, c, m)][0] for r in members if (r, c, m) in table.cells
                         and not math.isnan(table.cells[(r, c, m)][0])]
                if means:
                    n = min(table.cells[(r, c, m)][2] for r in members if (r, c, m) in table.cells)
                    table.cells[(avg_row, c, m)] = (float(np.mean(means)), 0.0, 1 if n else 0)
        rows.append(avg_row)
    table.rows = rows
    return table


def _ordered(values, order) -> list:
    values = list(dict.fromkeys(values))
    return [v for v in order if v in values] + sorted(v for v in values if v not in order)


def _dataset_attack_rows(sel: pd.DataFrame, attacks: list[str], where=None) -> list[tuple]:
    """(dataset label, attack label) rows, datasets in the paper's order, for cells that have runs."""
    mask = where if where is not None else pd.Series(True, index=sel.index)
    return [(label("dataset", d), label("attack", a)) for d in _ordered(sel["dataset"], DATASET_ORDER)
            for a in attacks if ((sel["dataset"] == d) & (sel["attack"] == a) & mask).any()]


def _with_labels(sel: pd.DataFrame, **extra) -> pd.DataFrame:
    """``sel`` with ``_d`` and ``_a`` (dataset and attack labels) and any extra columns."""
    return sel.assign(_d=sel["dataset"].map(lambda d: label("dataset", d)),
                      _a=sel["attack"].map(lambda a: label("attack", a)), **extra)


def attack_defense_table(df: pd.DataFrame, name: str, caption: str, attacks: list[str], defenses: list[str],
                         poison_ratio: float = 0.05, model: str | None = None) -> Table:
    """Rows (dataset, attack), columns defenses (ACC, ASR): Tables II and III and their extensions."""
    sel = df[df["attack"].isin(attacks) & np.isclose(df["poison_ratio"], poison_ratio)]
    model = model or main_model(sel)
    sel = one_variant_per_defense(sel[sel["model"] == model])
    rows = _dataset_attack_rows(sel, attacks)
    sel = _with_labels(sel)
    cols = [label("defense", d) for d in defenses]
    table = Table(name, f"{caption} ({label('model', model or '?')}, poison ratio {poison_ratio:g})",
                  ["Dataset", "Attack"], rows, cols)
    _fill(table, sel, ["_d", "_a"], "defense", defenses, cols)
    return _add_averages(table)


def extended_defenses(df: pd.DataFrame, table: str) -> list[str]:
    """The columns of an extended Table II/III: the defenses of the paper's table, then every other
    defense that was run (a new plug-in appears without any report edit), in their cards' order."""
    paper = members("defense", table)
    run = [d for d in df["defense"].unique() if d not in paper]
    return paper + in_order("defense", run)


def variant_table(df: pd.DataFrame, poison_ratio: float = 0.05, defense: str | None = None) -> Table:
    """Table IV: a defense without and with its card's variant (MeCa's relabel-and-relearn), rows
    (dataset, attack)."""
    defense = defense or featured_defense("table4")
    found = card("defense", defense) if defense else None
    sel = df[(df["defense"] == defense) & np.isclose(df["poison_ratio"], poison_ratio)]
    model = main_model(sel)
    sel = at_main_budget(sel[sel["model"] == model])
    short = found.variant_display if found is not None else "variant"
    cols = [f"without {short}", f"with {short}"]
    sel = _with_labels(sel, _v=sel["defense_params"].map(lambda d: cols[1] if is_variant(defense, d) else cols[0]))
    attacks = in_order("attack", sel["attack"])
    rows = _dataset_attack_rows(sel, attacks)
    table = Table("Table IV", f"{label('defense', defense or '?')} without and with {short} "
                  f"({', '.join(f'{k}={v}' for k, v in (found.variant_params if found else {}).items())}; "
                  f"{label('model', model or '?')})", ["Dataset", "Attack"], rows, cols)
    _fill(table, sel, ["_d", "_a"], "_v", cols, cols)
    return _add_averages(table)


def variants_table(df: pd.DataFrame, poison_ratio: float = 0.05) -> Table:
    """Every defense run with more than one parameter set or budget scale, side by side: its default
    row, then each variant labelled by the parameters it changes (a suite's ``{name, params}``
    entries) and by its budget scale where that is not the main one, beside No Defense. The other
    tables show one row per defense at the main budget; this one shows the ablations."""
    sel = df[np.isclose(df["poison_ratio"], poison_ratio)]
    model = main_model(sel)
    sel = sel[sel["model"] == model]
    empty = Table("Variants", "no defense was run with more than one parameter set", ["Dataset", "Attack"], [], [])
    if sel.empty:
        return empty
    main = main_budget_scale(sel)
    sel = sel[(sel["defense"] != NO_DEFENSE) | np.isclose(sel["budget_scale"], main)]
    key = sel["params_key"] + "@" + sel["budget_scale"].round(6).astype(str)
    variants = key.groupby(sel["defense"]).nunique()
    multi = [d for d in in_order("defense", variants.index) if variants[d] > 1]
    if not multi:
        return empty
    sel = sel[sel["defense"].isin([NO_DEFENSE, *multi])]

    def name(defense, params, scale):
        text = variant_label(defense, params)
        return text if np.isclose(scale, main) else f"{text} (budget x{scale:g})"

    sel = _with_labels(sel, _v=[name(d, p, b) for d, p, b in
                                zip(sel["defense"], sel["defense_params"], sel["budget_scale"])])
    cols = [label("defense", NO_DEFENSE)] if (sel["defense"] == NO_DEFENSE).any() else []
    for d in multi:
        names = list(dict.fromkeys(sel.loc[sel["defense"] == d, "_v"]))
        cols += [n for n in names if n == label("defense", d)] + sorted(n for n in names if n != label("defense", d))
    attacks = in_order("attack", sel["attack"])
    rows = _dataset_attack_rows(sel, attacks, where=sel["defense"] != NO_DEFENSE)
    table = Table("Variants", f"defenses run with several parameter sets or budget scales ({label('model', model or '?')}, "
                  f"poison ratio {poison_ratio:g}); which defaults are the paper's, which reconstructed or "
                  f"chosen by a development search: settings.md", ["Dataset", "Attack"], rows, cols)
    _fill(table, sel, ["_d", "_a"], "_v", cols, cols)
    return _add_averages(table)


def poison_ratio_table(df: pd.DataFrame, poison_ratios=(0.10, 0.15, 0.20), defense: str | None = None) -> Table:
    """Table V: a defense (default: the one whose card lists Table V) under poison ratios 10/15/20%
    (rows: attacks)."""
    defense = defense or featured_defense("table5")
    sel = one_variant_per_defense(df[df["defense"] == defense])
    model = main_model(sel)
    sel = sel[(sel["model"] == model)]
    sel = sel[np.isclose(sel["poison_ratio"].to_numpy(float)[:, None], np.asarray(poison_ratios, float)[None, :]).any(1)]
    sel = _with_labels(sel, _r=sel["poison_ratio"].map(lambda r: f"{r * 100:g}%"))
    rows = [(label("attack", a),) for a in in_order("attack", sel["attack"])]
    cols = [f"{r * 100:g}%" for r in poison_ratios]
    table = Table("Table V", f"{label('defense', defense or '?')} under poison ratios {', '.join(cols)} "
                  f"({label('model', model or '?')})", ["Attack"], rows, cols)
    _fill(table, sel, ["_a"], "_r", cols, cols)
    return _add_averages(table)


def model_table(df: pd.DataFrame, models=("resnet34", "mobilenetv2"), defense: str | None = None,
                poison_ratio: float = 0.05) -> Table:
    """Table VI: no defense and a defense (default: the one whose card lists Table VI) on other
    architectures (rows: attacks)."""
    defense = defense or featured_defense("table6")
    sel = df[df["model"].isin(models) & df["defense"].isin([NO_DEFENSE, defense]) & np.isclose(df["poison_ratio"], poison_ratio)]
    sel = one_variant_per_defense(sel)
    sel = _with_labels(sel, _c=sel["model"].map(lambda m: label("model", m)) + " "
                       + sel["defense"].map(lambda d: label("defense", d)))
    cols = [f"{label('model', m)} {label('defense', d)}" for m in models for d in (NO_DEFENSE, defense) if d]
    rows = [(label("attack", a),) for a in in_order("attack", sel["attack"])]
    table = Table("Table VI", f"No defense and {label('defense', defense or '?')} on other models", ["Attack"], rows, cols)
    _fill(table, sel, ["_a"], "_c", cols, cols)
    return _add_averages(table)


def clean_vs_poisoned_table(df: pd.DataFrame, defense: str | None = None, poison_ratio: float = 0.05) -> Table:
    """Table VII: poisoned data without/with a defense (default: the one whose card lists Table VII),
    and the clean-data (ratio 0) rows."""
    defense = defense or featured_defense("table7")
    sel = df[df["defense"].isin([NO_DEFENSE, defense])]
    model = main_model(sel)
    sel = one_variant_per_defense(sel[sel["model"] == model])
    sel = sel[np.isclose(sel["poison_ratio"], poison_ratio) | np.isclose(sel["poison_ratio"], 0.0)]
    sel = _with_labels(sel, _data=np.where(np.isclose(sel["poison_ratio"], 0.0), "Clean data", "Poisoned data"),
                       _c=sel["defense"].map(lambda d: label("defense", d)))
    cols = [label("defense", d) for d in (NO_DEFENSE, defense) if d]
    attacks = in_order("attack", sel["attack"])
    rows = [(kind, label("attack", a)) for kind in ("Poisoned data", "Clean data") for a in attacks
            if ((sel["_data"] == kind) & (sel["attack"] == a)).any()]
    table = Table("Table VII", f"Poisoned (ratio {poison_ratio:g}) vs clean data, without and with "
                  f"{label('defense', defense or '?')} ({label('model', model or '?')})", ["Data", "Attack"], rows, cols)
    _fill(table, sel, ["_data", "_a"], "_c", cols, cols)
    return _add_averages(table)


def paper_tables(df: pd.DataFrame) -> dict[str, Table]:
    """Every table, keyed by file stem; tables with no data at all are left out."""
    tables = {}
    for key, name, caption in [("table2", "Table II", "ACC/ASR (%) against classic attacks"),
                               ("table3", "Table III", "ACC/ASR (%) against adaptive attacks")]:
        attacks = members("attack", key)
        tables[key] = attack_defense_table(df, name, caption, attacks, members("defense", key))
        tables[f"{key}_extended"] = attack_defense_table(
            df, f"{name} (extended)", f"{caption}, with every defense run", attacks,
            extended_defenses(df[df["attack"].isin(attacks)], key))
    tables.update({
        "table4": variant_table(df),
        "table5": poison_ratio_table(df),
        "table6": model_table(df),
        "table7": clean_vs_poisoned_table(df),
        "variants": variants_table(df),
    })
    return {k: t for k, t in tables.items() if t.cells}


def markdown_table(frame: pd.DataFrame, missing: str = "—") -> str:
    """A DataFrame as a GitHub markdown table (floats to one decimal, NaN/None as ``missing``)."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return missing
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    head = [str(c) for c in frame.columns]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(out) + "\n"
