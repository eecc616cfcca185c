"""The leaderboard: defenses ranked by mean robust accuracy, which a broken model cannot win.

The primary score is **mean RA**: robust accuracy (triggered test images whose true class is not
the target, classified as their true class), averaged over seeds per attacked cell, then over
cells (a cell is dataset, model, attack, ratio > 0). RA of x means ASR is at most 1 - x *and* the
model still tells classes apart on at least x of those images, so it is high only when the
backdoor is gone and the model works: a model that predicts one class has RA near 1/classes, a
backdoored one RA near 1 - ASR. Ties go to the lower mean ASR, then the smaller ACC drop. A
defense marked **broken** (below) ranks after every defense that is not, whatever its RA: RA alone
still rewards a model that lost 16 points of ACC if it lost the trigger's effect too.
docs/results.md gives the reasons and what DER, kept as a column, gets wrong.

Columns (rates are fractions here; the Markdown prints percentage points):

* ``mean RA`` ± ``RA spread`` (mean over cells of the std over seeds), ``mean ACC``,
  ``mean ACC drop`` (ACC_nodef - ACC), ``mean ASR``, ``worst ASR`` (the worst attack);
* ``success rate``: the share of cells whose seed-averaged ASR is at most ``asr_threshold``
  (default 20 %) *and* whose ACC drop is at most ``max_acc_drop`` (default 10 points);
* ``broken``: the mean ACC drop over attacked cells, or the ACC drop on clean cells, exceeds
  ``max_acc_drop`` (:func:`bench.reports.audit.broken`); the Markdown marks the row;
* ``mean DER`` ± ``DER spread`` (BackdoorBench), kept for comparison with other benchmarks;
* ``clean ACC cost``: ACC drop on clean cells (ratio 0), what the defense costs without attack;
* ``epochs`` (mean measured cost in standard-training epochs), ``cells``, ``seeds``;
* ``flagged runs``: runs of this defense the audit (:mod:`bench.reports.audit`) flagged; they
  are left out of every other column and listed by :func:`flagged_runs`.

``python -m bench.reports.leaderboard RESULTS --compare-rankings`` prints the ranking by mean DER
(the old one) beside the ranking by mean RA for the same records.
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import pandas as pd

from bench.card import NO_DEFENSE
from bench.reports import audit
from bench.reports.tidy import label, load_runs, older_code, one_variant_per_defense

CELL = ["dataset", "model", "attack", "poison_ratio"]
ASR_THRESHOLD = 0.20
FLAGGED_SHOW = ["dataset", "model", "attack", "poison_ratio", "seed", "acc", "acc_nodef", "asr", "tpr", "fpr",
                "epochs_equiv", "wall_s"]


def check_fraction(name: str, value: float) -> float:
    """``value`` if it is a fraction in [0, 1], else a ValueError naming ``name``."""
    if not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1] (e.g. 0.2 for 20 %), got {value!r}")
    return float(value)


def _per_cell(part: pd.DataFrame) -> pd.DataFrame:
    """Seed means (and std of RA and DER) of one defense's runs, one row per cell."""
    return part.groupby(CELL).agg(ra=("ra", "mean"), ra_std=("ra", "std"), asr=("asr", "mean"),
                                  acc=("acc", "mean"), acc_nodef=("acc_nodef", "mean"), der=("der", "mean"),
                                  der_std=("der", "std"), seeds=("seed", "nunique"))


def _defense_rows(df: pd.DataFrame, asr_threshold: float, max_acc_drop: float) -> pd.DataFrame:
    """One unranked row per defense from the given (defended) runs."""
    attacked = df[(df["poison_ratio"] > 0) & df["asr"].notna()]
    clean = df[np.isclose(df["poison_ratio"], 0.0)]
    rows = []
    for defense, part in attacked.groupby("defense"):
        cells = _per_cell(part)
        success = (cells["asr"] <= asr_threshold + audit.EPS) & ~audit.broken(cells, max_acc_drop)
        clean_part = clean[clean["defense"] == defense]
        # mean ACC / ACC_nodef on attacked cells (row 0) and on clean cells (row 1): the same
        # audit.acc_drop and audit.broken then judge both
        overall = pd.DataFrame([{"acc": cells["acc"].mean(), "acc_nodef": cells["acc_nodef"].mean()},
                                {"acc": clean_part["acc"].mean(), "acc_nodef": clean_part["acc_nodef"].mean()}])
        rows.append({
            "defense": label("defense", defense), "name": defense,
            "mean RA": cells["ra"].mean(), "RA spread": cells["ra_std"].fillna(0).mean(),
            "mean ACC": cells["acc"].mean(), "mean ACC drop": audit.acc_drop(overall).iloc[0],
            "mean ASR": cells["asr"].mean(), "worst ASR": cells["asr"].max(), "success rate": success.mean(),
            "mean DER": cells["der"].mean(), "DER spread": cells["der_std"].fillna(0).mean(),
            "clean ACC cost": audit.acc_drop(overall).iloc[1], "broken": bool(audit.broken(overall, max_acc_drop).any()),
            "epochs": part["epochs_equiv"].mean(), "cells": len(cells), "seeds": int(cells["seeds"].max()),
            "older code runs": int(older_code(part).sum()),
        })
    return pd.DataFrame(rows)


def _ranked(rows: pd.DataFrame, by: list[str], ascending: list[bool]) -> pd.DataFrame:
    if rows.empty:
        return rows
    board = rows.sort_values(by, ascending=ascending, na_position="last", kind="stable", ignore_index=True)
    board.insert(0, "rank", range(1, len(board) + 1))
    return board


def _defended(df: pd.DataFrame) -> pd.DataFrame:
    df = one_variant_per_defense(df)
    return df[df["defense"] != NO_DEFENSE]


def common_cells(df: pd.DataFrame) -> pd.DataFrame:
    """The runs of the cells (attacked or clean) that every defense in ``df`` has a run in: means
    over different attacks are not comparable, so a partly run suite is ranked on what all share."""
    if df.empty:
        return df
    cells = pd.MultiIndex.from_frame(df[CELL])
    shared = set.intersection(*(set(cells[(df["defense"] == d).to_numpy()]) for d in df["defense"].unique()))
    return df[cells.isin(shared)]


def leaderboard(df: pd.DataFrame, asr_threshold: float = ASR_THRESHOLD, max_acc_drop: float = audit.MAX_ACC_DROP,
                shared_cells: bool = False, **audit_options) -> pd.DataFrame:
    """The ranked board (one row per defense) from the tidy table, flagged runs left out.

    ``shared_cells`` ranks on the cells every defense has run only (:func:`common_cells`); without
    it, a board whose defenses cover different cells says so (``board.attrs["uneven_cells"]``).
    ``audit_options`` go to :func:`bench.reports.audit.flag_reasons` (e.g. ``acc_margin``). The
    thresholds travel with the board (``board.attrs``) so :func:`leaderboard_markdown` prints them."""
    check_fraction("asr_threshold", asr_threshold)
    check_fraction("max_acc_drop", max_acc_drop)
    df = _defended(df)
    if shared_cells:
        df = common_cells(df)
    if df.empty:
        return pd.DataFrame()
    is_flagged = audit.flagged(df, **audit_options)
    rows = _defense_rows(df[~is_flagged], asr_threshold, max_acc_drop)
    if rows.empty:
        return rows
    counts = df[is_flagged].groupby("defense").size()
    rows["flagged runs"] = rows["name"].map(counts).fillna(0).astype(int)
    # a broken model ranks below every defense that keeps the model working, whatever its RA
    board = _ranked(rows, ["broken", "mean RA", "mean ASR", "mean ACC drop"], [True, False, True, True])
    board.attrs.update(asr_threshold=asr_threshold, max_acc_drop=max_acc_drop, shared_cells=shared_cells,
                       uneven_cells=board["cells"].nunique() > 1)
    return board


def flagged_runs(df: pd.DataFrame, **audit_options) -> pd.DataFrame:
    """The runs the leaderboard leaves out, with the audit's reason (one row per run)."""
    df = _defended(df)
    reasons = audit.flag_reasons(df, **audit_options)
    hit = df[reasons != ""]
    out = pd.DataFrame({"defense": [label("defense", d) for d in hit["defense"]]}, index=hit.index)
    for col in FLAGGED_SHOW + ["run_id"]:
        out[col] = hit[col] if col in hit.columns else np.nan
    out["reason"] = reasons[hit.index]
    return out.reset_index(drop=True)


def _pct(v) -> str:
    return "—" if pd.isna(v) else f"{v * 100:.1f}"


def _pm(mean, spread, seeds) -> str:
    return f"{_pct(mean)} ± {spread * 100:.1f}" if seeds > 1 and not pd.isna(mean) else _pct(mean)


def caption(asr_threshold: float = ASR_THRESHOLD, max_acc_drop: float = audit.MAX_ACC_DROP) -> str:
    """One paragraph saying how the board ranks and what its marks mean (for the report's text)."""
    return (f"Defenses ranked by mean robust accuracy (RA: triggered non-target test images classified as "
            f"their true class) over attacked cells, high only when the backdoor is gone and the model still "
            f"works. Success = ASR ≤ {asr_threshold * 100:g} % and ACC drop ≤ {max_acc_drop * 100:g} points; "
            f"'{audit.BROKEN_MARK}' = ACC more than {max_acc_drop * 100:g} points below no defense (on attacked "
            f"or clean cells). DER is shown for comparison only: it caps the accuracy penalty by the ASR gain, "
            f"so it rewards a broken model. Runs the audit flags are not ranked (see 'Flagged runs'); 'older "
            f"plug-in code' marks runs made by another version of the attack or defense than the one "
            f"installed (their numbers are that version's).")


def leaderboard_summary(df, **thresholds) -> str:
    """The sentence above a leaderboard: what the runs cover, how they are ranked, and a warning
    when some of them are miniature runs."""
    n_runs, n_seeds = len(df), df["seed"].nunique() if len(df) else 0
    n_def = df.loc[df["defense"] != NO_DEFENSE, "defense"].nunique() if n_runs else 0
    n_att = df["attack"].nunique() if n_runs else 0
    limits = {k: v for k, v in thresholds.items() if k in ("asr_threshold", "max_acc_drop")}
    summary = (f"{n_runs} successful runs: {n_def} defenses (and the no-defense baseline), {n_att} attacks, "
               f"{n_seeds} seed(s). {caption(**limits)}")
    n_mini = miniature_runs(df)
    if n_mini:
        summary = (f"**{n_mini} of these runs are miniature** (`run --miniature`: shrunken sizes, possibly "
                   f"generated stand-in data, to check that a suite runs; their numbers measure nothing). "
                   + summary)
    return summary


def miniature_runs(df) -> int:
    """How many rows of the tidy table are miniature runs (bench.miniature)."""
    if "miniature" not in df.columns:
        return 0
    return int(df["miniature"].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0")).sum())


def leaderboard_markdown(board: pd.DataFrame, asr_threshold: float | None = None,
                         max_acc_drop: float | None = None) -> str:
    """The board as one Markdown table; thresholds default to those the board was built with."""
    if board.empty:
        return "No defended runs in these results.\n"
    t = board.attrs.get("asr_threshold", ASR_THRESHOLD) if asr_threshold is None else asr_threshold
    d = board.attrs.get("max_acc_drop", audit.MAX_ACC_DROP) if max_acc_drop is None else max_acc_drop
    head = ["#", "Defense", "mean RA", "mean ACC", "ACC drop", "mean ASR", "worst ASR",
            f"success (ASR ≤ {t * 100:g}, ACC drop ≤ {d * 100:g})", "mean DER", "clean ACC cost",
            "cost (epochs)", "cells", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if board.attrs.get("uneven_cells"):
        lines = [f"**The defenses cover different cells ({board['cells'].min()}-{board['cells'].max()}): their "
                 f"means are over different attacks.** Rank on the cells all of them ran with `--shared-cells`.",
                 ""] + lines
    elif board.attrs.get("shared_cells"):
        lines = [f"Ranked on the {board['cells'].iloc[0]} attacked cell(s) every defense has run.", ""] + lines
    for _, r in board.iterrows():
        name = r["defense"] + (f" ({audit.BROKEN_MARK})" if r["broken"] else "")
        if r.get("flagged runs", 0):
            name += f" ({r['flagged runs']} flagged run(s) not ranked)"
        if r.get("older code runs", 0):
            name += f" ({r['older code runs']} run(s) of older plug-in code)"
        lines.append("| " + " | ".join([
            str(r["rank"]), name, _pm(r["mean RA"], r["RA spread"], r["seeds"]), _pct(r["mean ACC"]),
            _pct(r["mean ACC drop"]), _pct(r["mean ASR"]), _pct(r["worst ASR"]), _pct(r["success rate"]),
            _pm(r["mean DER"], r["DER spread"], r["seeds"]), _pct(r["clean ACC cost"]),
            "—" if pd.isna(r["epochs"]) else f"{r['epochs']:.2f}", str(r["cells"]), str(r["seeds"])]) + " |")
    return "\n".join(lines) + "\n"


def flagged_markdown(flagged: pd.DataFrame) -> str:
    """The flagged runs as a Markdown section (heading, one table; a sentence when there are none)."""
    text = "## Flagged runs (not ranked)\n\n"
    if flagged.empty:
        return text + "The audit flagged no run.\n"
    head = ["Defense", "dataset", "model", "attack", "ratio", "seed", "ACC", "ACC no def.", "ASR", "TPR", "FPR",
            "epochs", "wall s", "reason"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in flagged.iterrows():
        num = lambda v: "—" if pd.isna(v) else f"{v:.2f}"  # noqa: E731
        lines.append("| " + " | ".join([
            r["defense"], str(r["dataset"]), str(r["model"]), str(r["attack"]), f"{r['poison_ratio']:g}",
            str(r["seed"]), _pct(r["acc"]), _pct(r["acc_nodef"]), _pct(r["asr"]), _pct(r["tpr"]), _pct(r["fpr"]),
            num(r["epochs_equiv"]), num(r["wall_s"]), r["reason"]]) + " |")
    return text + "\n".join(lines) + "\n"


def ranking_comparison(df: pd.DataFrame, asr_threshold: float = ASR_THRESHOLD,
                       max_acc_drop: float = audit.MAX_ACC_DROP, shared_cells: bool = False,
                       **audit_options) -> pd.DataFrame:
    """The old ranking (mean DER over every run, no audit) beside the new one, per defense (both on
    the cells every defense ran with ``shared_cells``)."""
    defended = common_cells(_defended(df)) if shared_cells else _defended(df)
    old = _ranked(_defense_rows(defended, asr_threshold, max_acc_drop), ["mean DER"], [False])
    new = leaderboard(df, asr_threshold, max_acc_drop, shared_cells=shared_cells, **audit_options)
    if old.empty:
        return pd.DataFrame()
    out = old[["name", "defense", "rank", "mean DER"]].rename(columns={"rank": "rank by mean DER"})
    keep = ["name", "rank", "mean RA", "mean ACC", "mean ACC drop", "mean ASR", "broken", "flagged runs"]
    new_part = new[keep] if not new.empty else pd.DataFrame(columns=keep)
    out = out.merge(new_part.rename(columns={"rank": "rank by mean RA"}), on="name", how="left")
    out = out.sort_values(["rank by mean RA", "rank by mean DER"], na_position="last", ignore_index=True)
    out.attrs.update(asr_threshold=asr_threshold, max_acc_drop=max_acc_drop)
    return out


def ranking_comparison_markdown(cmp: pd.DataFrame) -> str:
    if cmp.empty:
        return "No defended runs in these results.\n"
    head = ["rank by mean RA (new)", "rank by mean DER (old)", "Defense", "mean RA", "mean DER", "mean ACC",
            "ACC drop", "mean ASR"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in cmp.iterrows():
        marks = [audit.BROKEN_MARK] if not pd.isna(r["broken"]) and bool(r["broken"]) else []
        if not pd.isna(r["flagged runs"]) and r["flagged runs"]:
            marks.append(f"{int(r['flagged runs'])} flagged run(s)")
        new_rank = "not ranked" if pd.isna(r["rank by mean RA"]) else str(int(r["rank by mean RA"]))
        lines.append("| " + " | ".join([
            new_rank, str(int(r["rank by mean DER"])), r["defense"] + (f" ({', '.join(marks)})" if marks else ""),
            _pct(r["mean RA"]), _pct(r["mean DER"]), _pct(r["mean ACC"]), _pct(r["mean ACC drop"]),
            _pct(r["mean ASR"])]) + " |")
    return "\n".join(lines) + "\n"


def cost_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean wall seconds and measured epochs (and standard trainings) per defense."""
    if df.empty:
        return pd.DataFrame()
    g = df.groupby("defense").agg(runs=("run_id", "count") if "run_id" in df else ("defense", "size"),
                                  wall_s=("wall_s", "mean"), epochs_equiv=("epochs_equiv", "mean"))
    g.index = [label("defense", d) for d in g.index]
    return g.sort_values("epochs_equiv")


def _fraction_arg(text: str) -> float:
    try:
        return check_fraction("the value", float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_threshold_arguments(p: argparse.ArgumentParser) -> None:
    """``--asr-threshold``, ``--max-acc-drop``, ``--acc-margin`` (fractions), for any command that
    builds the leaderboard; :func:`threshold_options` turns the parsed values into keywords."""
    p.add_argument("--asr-threshold", type=_fraction_arg, default=ASR_THRESHOLD,
                   help="success needs the post-defense ASR at most this (fraction)")
    p.add_argument("--max-acc-drop", type=_fraction_arg, default=audit.MAX_ACC_DROP,
                   help="success needs the ACC drop against no defense at most this; above it a defense is "
                        "marked 'broken model' (fraction)")
    p.add_argument("--acc-margin", type=_fraction_arg, default=audit.ACC_MARGIN,
                   help="audit: a run whose ACC is more than this above its cell's no-defense ACC is flagged "
                        "and not ranked (fraction)")
    p.add_argument("--shared-cells", action="store_true",
                   help="rank on the cells every defense has run only (a partly run suite)")


def threshold_options(args: argparse.Namespace) -> dict:
    """The keywords of :func:`leaderboard` / :func:`ranking_comparison` from parsed arguments."""
    return {"asr_threshold": args.asr_threshold, "max_acc_drop": args.max_acc_drop, "acc_margin": args.acc_margin,
            "shared_cells": getattr(args, "shared_cells", False)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reports.leaderboard", description=__doc__.split("\n")[0])
    p.add_argument("results", help="results folder, runs.parquet / runs.csv, or a records folder's parent")
    p.add_argument("--compare-rankings", action="store_true",
                   help="print the ranking by mean DER (old) beside the ranking by mean RA (new)")
    add_threshold_arguments(p)
    args = p.parse_args(argv)
    try:
        df = load_runs(args.results)
    except FileNotFoundError as exc:
        print(f"leaderboard: {exc}", file=sys.stderr)
        return 2
    options = threshold_options(args)
    if args.compare_rankings:
        print(ranking_comparison_markdown(ranking_comparison(df, **options)), end="")
        return 0
    board = leaderboard(df, **options)
    print(caption(args.asr_threshold, args.max_acc_drop) + "\n")
    print(leaderboard_markdown(board))
    print(flagged_markdown(flagged_runs(df, acc_margin=args.acc_margin)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
