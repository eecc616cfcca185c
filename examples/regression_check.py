#!/usr/bin/env python
"""Regression check for a defense: run its suite, compare with a stored baseline, exit 1 if worse.

    python examples/regression_check.py --update-baseline   # once: store the baseline
    python examples/regression_check.py                      # later: fails when ASR rises or ACC falls

It runs ``examples/my_defense/suite.toml`` into a results folder (resuming what is there), then
compares the tidy table with the baseline's using :func:`bench.compare.compare` (runs matched by
spec, tolerances in percentage points). Commit the baseline's ``runs.csv`` beside your defense.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from bench.compare import compare

HERE = Path(__file__).resolve().parent
SUITE = HERE / "my_defense" / "suite.toml"


def run_suite(results: Path) -> None:
    cmd = [sys.executable, str(HERE.parent / "run_bench.py"), "run", "--suite", str(SUITE), "--results", str(results),
           "--no-progress", "--workers", "1"]
    subprocess.run(cmd, check=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="results/my_defense", help="where this run's results go")
    p.add_argument("--baseline", default=str(HERE / "my_defense" / "baseline_runs.csv"),
                   help="the stored baseline tidy table (CSV)")
    p.add_argument("--update-baseline", action="store_true", help="store this run as the new baseline")
    p.add_argument("--max-asr-increase", type=float, default=2.0, help="tolerated ASR rise (points)")
    p.add_argument("--max-acc-drop", type=float, default=2.0, help="tolerated ACC fall (points)")
    args = p.parse_args(argv)
    results = Path(args.results)
    run_suite(results)
    if args.update_baseline:
        shutil.copy(results / "runs.csv", args.baseline)
        print(f"baseline stored in {args.baseline}")
        return 0
    if not Path(args.baseline).exists():
        print(f"no baseline at {args.baseline}: run once with --update-baseline")
        return 2
    result = compare(args.baseline, results, args.max_asr_increase, args.max_acc_drop)
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
