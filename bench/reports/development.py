"""The development report: a defense's readings checked against its paper's own claims.

Where a paper lost its numbers, a defense's readings of it are parameters, and a development
protocol (``docs/meca-development.md``) picks among them on *development* cells: cells that share
no attack, target or seed with the cells the paper's tables report. This module turns a results
folder of such runs (the ``meca-dev-*`` and ``ntml-dev`` suites) into

* ``development.md`` / ``development.csv``: one row per (defense, configuration): for every claim
  the worst value over the development cells and whether every cell passes, the verdict over all
  claims, the mean cost and the number of failed runs; ``development_cells.csv``: the same per cell;
* ``development_rounds.csv`` and ``dev_rounds.png/pdf``: per enhancement round (a numbered
  checkpoint series), the evaluator's ACC/ASR of the intermediate model and, from the per-sample
  logs ``flags_round{k}`` / ``dc_round{k}`` paired with the poison mask *here, after the run*,
  the TPR/FPR detection would have had after that round and the poison share of D_c and D_u;
* ``dev_configs.png/pdf``: a Fig. 7-style plot: final ACC, ASR (and TPR/FPR where the defense
  detects) against the configuration, one line per development attack, with the claims'
  thresholds.

What is checked comes from the plug-ins, never from a name here: a defense declares
``development_claims`` (plain data: a value, a comparison, a reference and the sentence of its
paper the check reads; see ``defenses/meca.py``), its card gives its label, and the
configurations are the distinct parameter sets found in the records. Value syntax:

* ``final.<m>``: the run's record (``acc``, ``asr``, ``ra``, ``tpr``, ``fpr``, ``precision``, ``auroc``);
* ``nodef.<m>``: the cell's backdoored model (its no-defense row; ``acc``/``asr`` also from the
  record's ``acc_nodef``/``asr_nodef``);
* ``clean.acc``: the no-defense row of a clean cell (ratio 0) with the same dataset, model, seed
  and training-set size (else ``nodef.acc``, marked in the table);
* ``<tag>.<m>``: the checkpoint ``tag`` (evaluated by the evaluator after the run);
* ``<prefix>*.<agg>.<m>``: the checkpoints ``<prefix>0, <prefix>1, ...`` in order, reduced by
  ``first``, ``last``, ``drop`` (first - last), ``rise`` (last - first), ``max_rise`` / ``max_drop``
  (the largest change between consecutive rounds; 0 for a single round).

Runs on evaluation cells (target in :data:`EVALUATION_TARGETS` or seed in
:data:`EVALUATION_SEEDS`) are left out and counted: a development table is never computed on the
cells the paper's tables report.

``python -m bench.reports.development --results DIR [--out DIR]``.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.card import NO_DEFENSE
from bench.reports.figures import _save, load_diagnostics, sns
from bench.reports.selection import SelectionError, select, selection_markdown
from bench.reports.tidy import _as_dict, _registry, base_name, label, normalise

EVALUATION_TARGETS = (1,)
EVALUATION_SEEDS = (0, 1)
"""The cells the MeCa paper's tables report (docs/meca-development.md): target 1, seeds 0 and 1."""

OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}
CLAIM_KEYS = {"name", "value", "op", "ref", "offset", "claim"}
AGGREGATES = ("first", "last", "drop", "rise", "max_rise", "max_drop")
FINAL_METRICS = ("acc", "asr", "ra", "tpr", "fpr", "precision", "auroc")
CHECKPOINT_METRICS = ("acc", "asr", "ra")


class ClaimError(ValueError):
    """A development claim a defense declares that this report cannot read."""


# -- claims ---------------------------------------------------------------------------------------
def _check_value(expr, where: str) -> None:
    if not isinstance(expr, str) or "." not in expr:
        raise ClaimError(f"{where}: a value must be '<source>.<metric>', got {expr!r}")
    head, metric = expr.rsplit(".", 1)
    if head == "final":
        ok = metric in FINAL_METRICS
    elif head == "nodef":
        ok = metric in CHECKPOINT_METRICS
    elif head == "clean":
        ok = metric == "acc"
    elif "*" in head:
        prefix, _, agg = head.partition("*.")
        ok = bool(prefix) and agg in AGGREGATES and metric in CHECKPOINT_METRICS and head.endswith(agg)
    else:
        ok = metric in CHECKPOINT_METRICS
    if not ok:
        raise ClaimError(f"{where}: cannot read value {expr!r} (see bench.reports.development)")


def claims_of(defense: str) -> tuple[dict, ...]:
    """The development claims a registered defense declares (``()`` for none), checked."""
    entry = _registry("defense").lookup(base_name(defense))
    claims = tuple(getattr(entry.obj, "development_claims", ()) or ()) if entry is not None else ()
    for c in claims:
        where = f"{defense}: development claim {c.get('name', '?')!r}" if isinstance(c, dict) else defense
        if not isinstance(c, dict) or not {"name", "value", "op", "ref"} <= set(c) or set(c) - CLAIM_KEYS:
            raise ClaimError(f"{where}: a claim is a dict with name, value, op, ref (and offset, claim)")
        if c["op"] not in OPS:
            raise ClaimError(f"{where}: op must be one of {', '.join(OPS)}, got {c['op']!r}")
        _check_value(c["value"], where)
        if not isinstance(c["ref"], (int, float)) or isinstance(c["ref"], bool):
            _check_value(c["ref"], where)
    return claims


def _series(checkpoints: list[dict], prefix: str, metric: str) -> list[float]:
    found = []
    for cp in checkpoints:
        m = re.fullmatch(re.escape(prefix) + r"(\d+)", str(cp.get("tag", "")))
        if m and cp.get(metric) is not None:
            found.append((int(m.group(1)), float(cp[metric])))
    return [v for _, v in sorted(found)]


def _aggregate(values: list[float], agg: str) -> float:
    if not values:
        return math.nan
    steps = np.diff(values) if len(values) > 1 else np.zeros(1)
    return {"first": values[0], "last": values[-1], "drop": values[0] - values[-1],
            "rise": values[-1] - values[0], "max_rise": float(max(0.0, steps.max())),
            "max_drop": float(max(0.0, (-steps).max()))}[agg]


def resolve(expr, run: dict) -> float:
    """A claim's value or reference for one run (see the module docstring); NaN when missing."""
    if isinstance(expr, (int, float)):
        return float(expr)
    head, metric = expr.rsplit(".", 1)
    if head == "final":
        v = run["row"].get(metric)
    elif head == "nodef":
        v = run["nodef"].get(metric)
    elif head == "clean":
        v = run["clean_acc"]
    elif "*" in head:
        prefix, _, agg = head.partition("*.")
        v = _aggregate(_series(run["checkpoints"], prefix, metric), agg)
    else:
        v = next((cp.get(metric) for cp in run["checkpoints"] if cp.get("tag") == head), None)
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def check_claim(claim: dict, run: dict) -> tuple[float, float, bool]:
    """``(value, threshold, passed)`` of one claim on one run (missing values fail)."""
    value = resolve(claim["value"], run)
    threshold = resolve(claim["ref"], run) + float(claim.get("offset", 0.0))
    passed = not (math.isnan(value) or math.isnan(threshold)) and bool(OPS[claim["op"]](value, threshold))
    return value, threshold, passed


# -- loading --------------------------------------------------------------------------------------
def _raw_records(results: Path) -> pd.DataFrame:
    """Every record (failed ones too): from ``records/`` when there, else the tidy table."""
    rec = results / "records"
    if rec.is_dir():
        rows = []
        for path in sorted(rec.glob("*.json")):
            try:
                rows.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return pd.DataFrame(rows)
    for name in ("runs.parquet", "runs.csv"):
        if (results / name).exists():
            return pd.read_parquet(results / name) if name.endswith("parquet") else pd.read_csv(results / name)
    raise FileNotFoundError(f"no results in {results}: expected records/, runs.parquet or runs.csv")


def _resolved_params(defense: str, given: dict) -> dict:
    """A failed run's full parameter set (its record keeps only the spec's overrides)."""
    from bench.registry import params_to_dict

    entry = _registry("defense").lookup(base_name(defense))
    try:
        return params_to_dict(entry.make_params(**dict(given))) if entry is not None else dict(given)
    except Exception:  # noqa: BLE001 - parameters that do not build: keep them as given
        return dict(given)


def _params_key(params: dict) -> str:
    return json.dumps({k: v for k, v in params.items() if k != "preset"}, sort_keys=True, default=str)


def _is_evaluation_cell(target, seed) -> bool:
    try:
        t = None if target is None or (isinstance(target, float) and math.isnan(target)) else int(target)
    except (TypeError, ValueError):
        t = None
    return t in EVALUATION_TARGETS or int(seed) in EVALUATION_SEEDS


def suite_order(defense: str, suites: set[str]) -> list[str]:
    """The parameter keys of ``defense``'s entries in the shipped ``suites``, in the order the suite
    files declare them (so that c01, c02, ... are the numbers the suite's comments use); suites that
    are not shipped (or no longer load) contribute nothing."""
    from bench.suite import expand, load_suite

    order: list[str] = []
    for name in sorted(s for s in suites if isinstance(s, str) and s):
        try:
            specs = expand(load_suite(name))
        except Exception:  # noqa: BLE001 - a results folder of a suite this checkout does not ship
            continue
        for spec in specs:
            if spec.defense == defense:
                key = _params_key(_resolved_params(defense, spec.defense_params))
                if key not in order:
                    order.append(key)
    return order


def _config_labels(defense: str, keys: list[str], order: list[str] = ()) -> dict[str, tuple[str, str]]:
    """``{params_key: (id, description)}``: ids c01, c02, ... in the suite's declaration ``order``
    where given (the numbers its comments use, stable while runs are missing), then the others (the
    defaults first, then by how many parameters differ); descriptions as the parameters that differ
    from the defaults."""
    from bench.reports.tidy import default_params_key

    default = json.loads(default_params_key(base_name(defense)) or "{}")

    def changed(key):
        params = json.loads(key)
        return {k: v for k, v in sorted(params.items())
                if json.dumps(default.get(k, "?"), default=str) != json.dumps(v, default=str)}

    rest = sorted((k for k in keys if k not in order),
                  key=lambda k: (len(changed(k)), json.dumps(changed(k), default=str)))
    ordered = [*order, *rest]
    out = {}
    for i, key in enumerate(ordered, 1):
        if key in keys:
            diff = changed(key)
            out[key] = (f"c{i:02d}", ", ".join(f"{k}={v}" for k, v in diff.items()) or "defaults")
    return out


# -- the per-round numbers ------------------------------------------------------------------------
def round_rows(diag: dict | None) -> list[dict]:
    """Per round k: the evaluator's ACC/ASR of the checkpoint of round k (a numbered series), and
    from the per-sample logs, paired here with the poison mask: the TPR/FPR of the flags after
    round k and the poison share of D_c and D_u of round k."""
    if not diag:
        return []
    mask = diag.get("poison_mask")
    logs = diag.get("sample_logs", {}) or {}
    rows: dict[int, dict] = {}
    for cp in diag.get("checkpoints", []) or []:
        m = re.fullmatch(r"(.*?)(\d+)", str(cp.get("tag", "")))
        if m and m.group(1) and not m.group(1)[-1].isdigit():
            r = rows.setdefault(int(m.group(2)), {})
            r.update({"series": m.group(1), "acc": cp.get("acc"), "asr": cp.get("asr")})
    if mask is not None:
        truth = mask.bool().flatten()
        n_pos, n_neg = int(truth.sum()), int((~truth).sum())
        for key, values in logs.items():
            m = re.fullmatch(r"(flags|dc)_round(\d+)", key)
            if not m or values.numel() != truth.numel():
                continue
            k, v = int(m.group(2)), values.bool().flatten()
            r = rows.setdefault(k, {})
            if m.group(1) == "flags":
                tp = int((v & truth).sum())
                r["tpr"] = tp / n_pos if n_pos else math.nan
                r["fpr"] = (int(v.sum()) - tp) / n_neg if n_neg else math.nan
            else:
                r["dc_poison_share"] = float(truth[v].float().mean()) if v.any() else math.nan
                r["du_poison_share"] = float(truth[~v].float().mean()) if (~v).any() else math.nan
    return [{"round": k, **r} for k, r in sorted(rows.items())]


# -- the report -----------------------------------------------------------------------------------
SUMMARIES = "summaries"
"""A published folder's per-run summaries (``summaries/<run_id>.json``): what this report reads from
a run's diagnostics, without the per-sample data (:func:`run_summary`)."""


def run_summary(diag: dict | None) -> dict:
    """The numbers this report takes from a run's diagnostics: the evaluator's checkpoint
    metrics (tag, ACC, ASR, RA) and the per-round rows (:func:`round_rows`: TPR/FPR and poison
    shares, already aggregated). Plain JSON, a few hundred bytes: ``publish`` writes it beside the
    records, so a published folder rebuilds the development table without per-sample data."""
    if not diag:
        return {}
    checkpoints = [{k: (v if isinstance(v, str) else float(v)) for k, v in c.items()
                    if isinstance(v, (str, int, float))} for c in diag.get("checkpoints", []) or []
                   if isinstance(c, dict)]
    return {"checkpoints": checkpoints, "rounds": round_rows(diag)}


def load_summary(results: Path, run_id: str) -> dict:
    path = Path(results) / SUMMARIES / f"{run_id}.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def development_runs(results: Path) -> tuple[list[dict], pd.DataFrame, dict]:
    """``(runs, failed, notes)``: one dict per successful run of a defense that declares claims on
    a development cell (its row, no-defense and clean references, checkpoints, per-round rows),
    the failed runs of those defenses, and counts of what was left out."""
    results = Path(results)
    raw = _raw_records(results)
    df = normalise(raw) if len(raw) else raw
    notes = {"evaluation_cells": 0, "no_claims": set()}
    if df.empty:
        return [], pd.DataFrame(), notes
    is_eval = np.array([_is_evaluation_cell(t, s) for t, s in zip(df.get("target", [None] * len(df)), df["seed"])],
                       dtype=bool)
    notes["evaluation_cells"] = int((is_eval & (df["defense"] != NO_DEFENSE)).sum())
    df = df[~is_eval]
    mini = df["miniature"].fillna(False).astype(bool) if "miniature" in df.columns else pd.Series(False, df.index)
    if mini.any() and not mini.all():   # miniature rows are a plumbing check, not development evidence
        notes["miniature_left_out"] = int(mini.sum())
        df = df[~mini]
    elif mini.any():
        notes["miniature"] = True
    nodef = df[df["defense"] == NO_DEFENSE]
    by_cell = {c: r for c, r in zip(nodef["cell_id"], nodef.to_dict("records"))}
    clean = nodef[nodef["poison_ratio"] == 0]
    clean_acc = {(r["dataset"], r["model"], int(r["seed"]), r.get("n_train")): r["acc"]
                 for r in clean.to_dict("records")}
    runs = []
    for row in df[(df["defense"] != NO_DEFENSE) & (df["poison_ratio"] > 0)].to_dict("records"):
        if not claims_of(row["defense"]):
            notes["no_claims"].add(row["defense"])
            continue
        none_row = by_cell.get(row["cell_id"], {})
        ref = {"acc": none_row.get("acc", row.get("acc_nodef")), "asr": none_row.get("asr", row.get("asr_nodef")),
               "ra": none_row.get("ra")}
        key = (row["dataset"], row["model"], int(row["seed"]), row.get("n_train"))
        summary = run_summary(load_diagnostics(results, row["run_id"])) or load_summary(results, row["run_id"])
        runs.append({"row": row, "nodef": ref, "clean_acc": clean_acc.get(key, ref["acc"]),
                     "clean_from": "clean cell" if key in clean_acc else "no-defense ACC",
                     "checkpoints": summary.get("checkpoints", []), "rounds": summary.get("rounds", []),
                     "params_key": _params_key(row["defense_params"])})
    failed = pd.DataFrame()
    if "status" in raw.columns:
        bad = raw[(raw["status"] == "failed") & (raw["defense"] != NO_DEFENSE)]
        rows = []
        for r in bad.to_dict("records"):
            spec = _as_dict(r.get("spec"))
            target = (spec.get("attack_params") or {}).get("target", r.get("target"))
            if _is_evaluation_cell(target, r.get("seed", 0)) or not claims_of(r["defense"]):
                continue
            params = _resolved_params(r["defense"], spec.get("defense_params") or {})
            rows.append({"defense": r["defense"], "attack": r.get("attack"), "seed": r.get("seed"),
                         "params_key": _params_key(params), "error": str(r.get("error", ""))[:200]})
        failed = pd.DataFrame(rows)
    return runs, failed, notes


def development_table(runs: list[dict], failed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per configuration, per cell)``: the claims' values, thresholds and verdicts."""
    cells, configs = [], []
    defenses = sorted({r["row"]["defense"] for r in runs} | set(failed.get("defense", pd.Series(dtype=str))))
    for defense in defenses:
        claims = claims_of(defense)
        mine = [r for r in runs if r["row"]["defense"] == defense]
        fails = failed[failed["defense"] == defense] if len(failed) else failed
        keys = sorted({r["params_key"] for r in mine} | set(fails.get("params_key", pd.Series(dtype=str))))
        names = _config_labels(defense, keys, suite_order(defense, {r["row"].get("suite") for r in mine}))
        for key in sorted(keys, key=lambda k: names[k][0]):
            cid, desc = names[key]
            group = [r for r in mine if r["params_key"] == key]
            entry = {"name": defense, "defense": label("defense", defense), "config": cid, "configuration": desc,
                     "cells": len(group), "failed": int((fails["params_key"] == key).sum()) if len(fails) else 0}
            all_pass = bool(group) and entry["failed"] == 0
            for c in claims:
                checks = [check_claim(c, r) for r in group]
                for r, (v, t, ok) in zip(group, checks):
                    cells.append({"defense": entry["defense"], "config": cid, "attack": r["row"]["attack"],
                                  "seed": int(r["row"]["seed"]), "claim": c["name"], "value": v,
                                  "threshold": t, "pass": ok, "clean_ref": r["clean_from"]})
                vals = [v for v, _, _ in checks if not math.isnan(v)]
                worst = (min(vals) if c["op"] in (">=", ">") else max(vals)) if vals else math.nan
                entry[c["name"]] = worst
                entry[f"{c['name']} ok"] = bool(checks) and all(ok for _, _, ok in checks)
                all_pass &= entry[f"{c['name']} ok"]
            entry["pass"] = all_pass
            for m in ("acc", "asr", "tpr", "fpr"):
                vals = [r["row"].get(m) for r in group if r["row"].get(m) is not None
                        and not (isinstance(r["row"].get(m), float) and math.isnan(r["row"].get(m)))]
                entry[f"mean {m}"] = float(np.mean(vals)) if vals else math.nan
            costs = [r["row"].get("epochs_equiv") for r in group if r["row"].get("epochs_equiv") is not None]
            entry["epochs_equiv"] = float(np.mean(costs)) if costs else math.nan
            entry["params"] = key
            configs.append(entry)
    return pd.DataFrame(configs), pd.DataFrame(cells)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v * 100:.1f}" if isinstance(v, float) and abs(v) <= 1.5 else f"{v:g}"


def table_markdown(configs: pd.DataFrame, notes: dict) -> str:
    lines = ["# Development table", "",
             "One row per configuration of a defense's readings, on development cells only "
             "(docs/meca-development.md). Each claim: its worst value over the cells (percent) and "
             "✓ when every cell passes. A configuration passes when every claim passes on every cell "
             "and no run failed.", ""]
    if notes.get("evaluation_cells"):
        lines += [f"Left out: {notes['evaluation_cells']} run(s) on evaluation cells (target in "
                  f"{EVALUATION_TARGETS} or seed in {EVALUATION_SEEDS}).", ""]
    if notes.get("miniature"):
        lines += ["**Miniature runs only** (`run --miniature`): a check of the plumbing, not development "
                  "evidence.", ""]
    if notes.get("miniature_left_out"):
        lines += [f"Left out: {notes['miniature_left_out']} miniature run(s).", ""]
    if notes.get("no_claims"):
        lines += [f"Not checked (no development claims declared): {', '.join(sorted(notes['no_claims']))}.", ""]
    if configs.empty:
        return "\n".join(lines + ["(no development runs found)", ""])
    for defense, part in configs.groupby("defense", sort=False):
        claims = [c["name"] for c in claims_of(part["name"].iloc[0])]
        lines += [f"## {defense}", "", "| config | configuration | cells | failed | "
                  + " | ".join(claims) + " | pass | cost (epochs) |",
                  "|---|---|---|---|" + "---|" * len(claims) + "---|---|"]
        for _, r in part.iterrows():
            vals = [f"{_fmt(r[c])} {'✓' if r[f'{c} ok'] else '✗'}" for c in claims]
            lines.append(f"| {r['config']} | {r['configuration']} | {r['cells']} | {r['failed']} | "
                         + " | ".join(vals) + f" | {'**pass**' if r['pass'] else 'fail'} | "
                         + f"{_fmt_cost(r['epochs_equiv'])} |")
        lines.append("")
        for c in claims_of(part["name"].iloc[0]):
            ref = c["ref"] if isinstance(c["ref"], str) else f"{c['ref']:g}"
            off = f" {c.get('offset', 0):+g}" if c.get("offset") else ""
            lines.append(f"- `{c['name']}`: `{c['value']}` {c['op']} `{ref}`{off}. {c.get('claim', '')}")
        lines.append("")
    return "\n".join(lines)


def _fmt_cost(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def configs_figure(runs: list[dict], configs: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 7-style: final ACC / ASR (and TPR / FPR) against the configuration, one line per attack."""
    if not runs or configs.empty:
        return []
    ids = {(r["name"], r["params"]): r["config"] for _, r in configs.iterrows()}
    rows = []
    for r in runs:
        d = label("defense", r["row"]["defense"])
        cid = ids.get((r["row"]["defense"], r["params_key"]))
        for m in ("acc", "asr", "tpr", "fpr"):
            v = r["row"].get(m)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                rows.append({"defense": d, "config": cid, "metric": m.upper(), "value": float(v) * 100,
                             "attack": label("attack", r["row"]["attack"])})
    if not rows:
        return []
    data = pd.DataFrame(rows).sort_values("config")
    names = {label("defense", r["row"]["defense"]): r["row"]["defense"] for r in runs}
    paths = []
    for d, part in data.groupby("defense"):
        g = sns.relplot(part, x="config", y="value", hue="attack", col="metric", kind="line", marker="o",
                        height=2.8, aspect=1.25, errorbar="sd", facet_kws={"sharey": False})
        g.set_axis_labels("configuration", "%")
        # the claims' fixed thresholds on the final numbers, dashed
        lines = {c["value"].split(".", 1)[1].upper(): float(c["ref"]) + float(c.get("offset", 0))
                 for c in claims_of(names.get(d, d)) if c["value"].startswith("final.")
                 and isinstance(c["ref"], (int, float)) and not isinstance(c["ref"], bool)}
        for metric, ax in g.axes_dict.items():
            if metric in lines:
                ax.axhline(lines[metric] * 100, ls="--", lw=0.9, color="grey")
            ax.tick_params(axis="x", rotation=90)
        g.figure.suptitle(f"{d}: final ACC/ASR (and detection) per configuration, development cells", y=1.04)
        stem = "dev_configs" if data["defense"].nunique() == 1 else f"dev_configs_{_slug(d)}"
        paths += _save(g.figure, out, stem)
    return paths


def rounds_frame(runs: list[dict], configs: pd.DataFrame) -> pd.DataFrame:
    ids = {(r["name"], r["params"]): r["config"] for _, r in configs.iterrows()} if len(configs) else {}
    rows = []
    for r in runs:
        d = label("defense", r["row"]["defense"])
        for rr in r["rounds"]:
            rows.append({"defense": d, "config": ids.get((r["row"]["defense"], r["params_key"])), "attack": r["row"]["attack"],
                         "seed": int(r["row"]["seed"]), **rr})
    return pd.DataFrame(rows)


def rounds_figure(rounds: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 6-style per configuration: ACC/ASR of the intermediate models and the TPR/FPR their
    flags would have had, over the rounds (mean over the development cells)."""
    if rounds.empty or "round" not in rounds.columns:
        return []
    cols = [c for c in ("acc", "asr", "tpr", "fpr", "dc_poison_share") if c in rounds.columns]
    long = rounds.melt(id_vars=["defense", "config", "attack", "seed", "round"], value_vars=cols,
                       var_name="metric").dropna(subset=["value"])
    if long.empty:
        return []
    long = long.assign(value=long["value"].astype(float) * 100,
                       metric=long["metric"].map(lambda m: "D_c poison share" if m == "dc_poison_share" else m.upper()))
    paths = []
    for d, part in long.groupby("defense"):
        g = sns.relplot(part.sort_values("config"), x="round", y="value", hue="config", col="metric",
                        kind="line", marker="o", height=2.8, aspect=1.1, errorbar=None,
                        facet_kws={"sharey": False})
        g.set_axis_labels("round", "%")
        for ax in g.axes.flat:
            ax.xaxis.get_major_locator().set_params(integer=True)
        g.figure.suptitle(f"{d}: the intermediate models over the rounds, development cells (mean)", y=1.04)
        stem = "dev_rounds" if long["defense"].nunique() == 1 else f"dev_rounds_{_slug(d)}"
        paths += _save(g.figure, out, stem)
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def build(results: Path, out: Path | None = None) -> dict:
    """Write the development table, its CSVs and figures; returns what was written."""
    results = Path(results)
    out = Path(out) if out else results / "report" / "development"
    out.mkdir(parents=True, exist_ok=True)
    runs, failed, notes = development_runs(results)
    configs, cells = development_table(runs, failed)
    rounds = rounds_frame(runs, configs)
    choices = select(configs, runs)
    (out / "development.md").write_text(table_markdown(configs, notes) + selection_markdown(choices))
    configs.to_csv(out / "development.csv", index=False)
    cells.to_csv(out / "development_cells.csv", index=False)
    rounds.to_csv(out / "development_rounds.csv", index=False)
    return {"table": out / "development.md", "configs": configs, "notes": notes, "choices": choices,
            "figures": configs_figure(runs, configs, out) + rounds_figure(rounds, out)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reports.development", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True, help="results folder of the development suites")
    p.add_argument("--out", default=None, help="output folder (default: <results>/report/development)")
    args = p.parse_args(argv)
    try:
        written = build(Path(args.results), args.out)
    except (FileNotFoundError, ClaimError, SelectionError) as exc:
        print(f"development report: {exc}")
        return 2
    cfg = written["configs"]
    n_pass = int(cfg["pass"].sum()) if len(cfg) else 0
    print(f"development table: {written['table']} ({len(cfg)} configuration(s), {n_pass} passing)")
    for c in written["choices"]:
        print(f"{c['defense']}: {c['config']} ({c['configuration']}) is the {c['kind']} by the written rule"
              + (f"; misses {', '.join(c['misses'])}" if c["misses"] else ""))
    if written["notes"].get("evaluation_cells"):
        print(f"left out {written['notes']['evaluation_cells']} run(s) on evaluation cells")
    for path in written["figures"]:
        print(f"figure: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
