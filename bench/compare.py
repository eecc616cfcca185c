"""``compare``: regression check of candidate results against a baseline.

Runs are matched by spec (``run_id``: the hash of everything a run's numbers depend on, which
excludes the suite name, the code version and the machine). For every matched run the deltas of
ACC and ASR (percentage points) are printed with the mean deltas; the check fails (exit 1) when
any candidate ASR rises by more than ``--max-asr-increase`` points, any ACC falls by more than
``--max-acc-drop`` points, a baseline run is missing from the candidate (or failed there), or the
audit (:mod:`bench.reports.audit`) flags any candidate run as impossible-looking (ACC above its
cell's no-defense ACC by more than ``--audit-acc-margin`` points, perfect detection at zero cost,
a returned model of another architecture). A flagged run counts as a regression: a regression
check exists to vouch for a defense, and a run that looks impossible is either a defense that
reaches what it must not or a fault in the suite; either way "OK" would be wrong. Every candidate
run is audited, also those the baseline lacks (a new defense's own runs).

In Python (e.g. inside a user's pytest)::

    from bench.compare import assert_no_regression
    assert_no_regression("baseline_results/", "results/", max_asr_increase=2, max_acc_drop=2)
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.reports import audit
from bench.reports.tidy import load_runs

KEY = "run_id"
SHOW = ["dataset", "model", "attack", "poison_ratio", "defense", "seed"]


@dataclass
class Comparison:
    table: pd.DataFrame                       # one row per matched run, with deltas in points
    missing: list[str] = field(default_factory=list)
    regressions: pd.DataFrame = field(default_factory=pd.DataFrame)
    max_asr_increase: float = 1.0
    max_acc_drop: float = 1.0
    flagged: pd.DataFrame = field(default_factory=pd.DataFrame)   # candidate runs the audit flags, with "reason"

    @property
    def ok(self) -> bool:
        return not self.missing and self.regressions.empty and self.flagged.empty and not self.table.empty

    def summary(self) -> str:
        lines = []
        if self.table.empty:
            lines.append("no run of the baseline was found in the candidate")
        else:
            cols = SHOW + ["acc_base", "acc_cand", "d_acc", "asr_base", "asr_cand", "d_asr"]
            view = self.table[[c for c in cols if c in self.table.columns]].copy()
            lines.append(view.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
            lines.append(f"\nmatched runs: {len(self.table)}; mean ΔACC {self.table['d_acc'].mean():+.2f} points, "
                         f"mean ΔASR {self.table['d_asr'].mean():+.2f} points")
        if self.missing:
            lines.append(f"missing in candidate: {len(self.missing)} run(s): {', '.join(self.missing[:10])}"
                         + (" ..." if len(self.missing) > 10 else ""))
        if not self.regressions.empty:
            lines.append(f"REGRESSIONS ({len(self.regressions)}; tolerances: ASR +{self.max_asr_increase} points, "
                         f"ACC -{self.max_acc_drop} points):")
            for _, r in self.regressions.iterrows():
                lines.append(f"  {r['dataset']}/{r['model']}/{r['attack']}@{r['poison_ratio']:g}/{r['defense']}/"
                             f"seed{r['seed']}: ΔASR {r['d_asr']:+.2f}, ΔACC {r['d_acc']:+.2f}")
        if not self.flagged.empty:
            lines.append(f"FLAGGED BY THE AUDIT ({len(self.flagged)} candidate run(s); counted as regressions):")
            for _, r in self.flagged.iterrows():
                lines.append(f"  {r['dataset']}/{r['model']}/{r['attack']}@{r['poison_ratio']:g}/{r['defense']}/"
                             f"seed{r['seed']}: {r['reason']}")
        lines.append("OK: no regression" if self.ok else "FAILED: the candidate falls behind the baseline")
        return "\n".join(lines)


def compare(baseline, candidate, max_asr_increase: float = 1.0, max_acc_drop: float = 1.0,
            audit_acc_margin: float = audit.ACC_MARGIN * 100) -> Comparison:
    """Compare two results folders (or tidy tables / DataFrames); tolerances in points."""
    for name, value in [("max_asr_increase", max_asr_increase), ("max_acc_drop", max_acc_drop),
                        ("audit_acc_margin", audit_acc_margin)]:
        if not value >= 0:
            raise ValueError(f"compare: {name} is a tolerance in points and must be >= 0, got {value!r}")
    base = baseline if isinstance(baseline, pd.DataFrame) else load_runs(baseline)
    cand = candidate if isinstance(candidate, pd.DataFrame) else load_runs(candidate)
    base = base.drop_duplicates(KEY, keep="last")
    cand = cand.drop_duplicates(KEY, keep="last")
    merged = base[[KEY, *SHOW, "acc", "asr"]].merge(cand[[KEY, "acc", "asr"]], on=KEY, suffixes=("_base", "_cand"))
    for m in ("acc", "asr"):
        for side in ("base", "cand"):
            merged[f"{m}_{side}"] = merged[f"{m}_{side}"] * 100
    merged["d_acc"] = merged["acc_cand"] - merged["acc_base"]
    merged["d_asr"] = merged["asr_cand"] - merged["asr_base"]
    missing = sorted(set(base[KEY]) - set(cand[KEY]))
    bad = merged[(merged["d_asr"] > max_asr_increase) | (merged["d_acc"] < -max_acc_drop)]
    reasons = audit.flag_reasons(cand, acc_margin=audit_acc_margin / 100)
    flagged = cand.loc[reasons != "", [KEY, *SHOW]].assign(reason=reasons[reasons != ""])
    return Comparison(merged, missing, bad, max_asr_increase, max_acc_drop, flagged.reset_index(drop=True))


def assert_no_regression(baseline, candidate, max_asr_increase: float = 1.0, max_acc_drop: float = 1.0,
                         audit_acc_margin: float = audit.ACC_MARGIN * 100) -> Comparison:
    """Raise AssertionError (with the per-cell summary) when the candidate regresses."""
    result = compare(baseline, candidate, max_asr_increase, max_acc_drop, audit_acc_margin)
    if not result.ok:
        raise AssertionError(result.summary())
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("baseline", help="baseline results folder, runs.parquet or runs.csv")
    p.add_argument("candidate", help="candidate results folder, runs.parquet or runs.csv")
    p.add_argument("--max-asr-increase", type=float, default=1.0, help="tolerated ASR rise per run, in points")
    p.add_argument("--max-acc-drop", type=float, default=1.0, help="tolerated ACC fall per run, in points")
    p.add_argument("--audit-acc-margin", type=float, default=audit.ACC_MARGIN * 100,
                   help="audit: a candidate run whose ACC is more than this many points above its cell's "
                        "no-defense ACC is flagged (and fails the check)")


def main(args) -> int:
    for path in (args.baseline, args.candidate):
        if not Path(path).exists():
            print(f"compare: {path} does not exist")
            return 2
    try:
        result = compare(args.baseline, args.candidate, args.max_asr_increase, args.max_acc_drop,
                         args.audit_acc_margin)
    except ValueError as exc:
        print(exc)
        return 2
    print(result.summary())
    return 0 if result.ok else 1
