"""The dry run's cost estimate beside the measured times of the same runs.

``run --dry-run`` saves its estimate (:func:`bench.estimate.save`: each job's estimated CPU
seconds, keyed by the run id it will write). Once the runs have finished, this module matches
the estimate's jobs to the records and writes, per suite and job kind, the estimated seconds of
one worker beside the measured seconds of the same jobs (a record's ``finished_at - started_at``:
the whole job, start-up and evaluation included, which the estimate leaves out), and the estimated
wall time beside the measured one (the union of the jobs' busy intervals, so that the pauses
between the chunks of a resumed suite do not count). Jobs that the estimate counted as free (a
model another job trains, a shared clean-cell output) are compared too: what they measure is
their start-up and evaluation.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from bench.estimate import ESTIMATES, format_seconds, read_estimate, wall_time
from bench.plan import JOB_KINDS

COLUMNS = ["suite", "kind", "jobs", "measured_jobs", "estimated_s", "measured_s", "ratio"]


def load_estimates(results) -> list[dict]:
    """The saved estimates of a results folder (``<results>/estimates/*.json``), oldest first."""
    folder = Path(results) / ESTIMATES
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return sorted(filter(None, map(read_estimate, paths)), key=lambda e: e.get("created") or 0)


def busy_seconds(intervals) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, end = 0.0, None
    for a, b in sorted((float(a), float(b)) for a, b in intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def _measured(records: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """``run_id -> (started_at, finished_at)`` of the ok records that carry both."""
    need = {"run_id", "started_at", "finished_at"}
    if records is None or not len(records) or not need <= set(records.columns):
        return {}
    df = records.dropna(subset=["started_at", "finished_at"])
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    return {str(r): (float(a), float(b)) for r, a, b in zip(df["run_id"], df["started_at"], df["finished_at"])}


def compare(estimate: dict, records: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """(rows per job kind and a total row, the wall times) of one saved estimate against the
    records. Only jobs with a record are compared; ``measured_jobs`` says how many."""
    times = _measured(records)
    jobs = [j for j in estimate["jobs"] if j.get("cpu_s") is not None]
    matched = [j for j in jobs if j["run_id"] in times]
    rows = []
    for kind in [*JOB_KINDS, "total"]:
        js = [j for j in jobs if kind == "total" or j["kind"] == kind]
        if not js:
            continue
        mj = [j for j in js if j["run_id"] in times]
        est_s = sum(j["cpu_s"] for j in mj)
        meas_s = sum(times[j["run_id"]][1] - times[j["run_id"]][0] for j in mj)
        rows.append({"suite": estimate["suite"], "kind": kind, "jobs": len(js), "measured_jobs": len(mj),
                     "estimated_s": est_s, "measured_s": meas_s,
                     "ratio": meas_s / est_s if mj and est_s > 0 else float("nan")})
    wall = {"estimated_s": wall_time([(j["kind"], j.get("cell", ""), j["cpu_s"]) for j in matched],
                                     int(estimate.get("workers") or 1)) if matched else None,
            "measured_s": busy_seconds(times[j["run_id"]] for j in matched) if matched else None,
            "complete": len(matched) == len(jobs), "workers": estimate.get("workers"),
            "load": estimate.get("load")}
    return pd.DataFrame(rows, columns=COLUMNS), wall


def markdown(results, records: pd.DataFrame) -> str | None:
    """The comparison of every saved estimate of ``results`` with its records, or None when the
    folder holds no estimate."""
    estimates = load_estimates(results)
    if not estimates:
        return None
    out = ["# The dry run's estimate beside the measured times", "",
           "Estimated: one worker's compute seconds of the job's training passes and evaluation "
           "(`run --dry-run`, calibrated by a few timed steps). Measured: the record's "
           "`finished_at - started_at`, the whole job (process "
           "start-up, data loading, poisoning, evaluation included). Wall: the estimate's wall time for the "
           "compared jobs beside the union of their busy intervals. Ratio = measured / estimated.", ""]
    for est in estimates:
        table, wall = compare(est, records)
        load = est.get("load")
        created = est.get("created")
        when = (f"estimate of {datetime.fromtimestamp(float(created), timezone.utc):%Y-%m-%d %H:%M} UTC, "
                if isinstance(created, (int, float)) else "")
        out.append(f"## {est['suite']} ({when}{len(est['jobs'])} jobs)")
        out.append("")
        out.append(f"Estimated with {est.get('workers')} worker(s) on {est.get('cores')} core(s)"
                   + (f", load average {load:.2f} when it was calibrated" if load is not None else "") + ".")
        out.append("")
        out.append("| job kind | jobs | compared | estimated | measured | ratio |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for r in table.itertuples():
            ratio = "—" if pd.isna(r.ratio) else f"{r.ratio:.2f}"
            out.append(f"| {r.kind} | {r.jobs} | {r.measured_jobs} | {format_seconds(r.estimated_s)} | "
                       f"{format_seconds(r.measured_s)} | {ratio} |")
        if wall["measured_s"] is not None:
            ratio = wall["measured_s"] / wall["estimated_s"] if wall["estimated_s"] else float("nan")
            out.append(f"| wall time | | | {format_seconds(wall['estimated_s'])} | "
                       f"{format_seconds(wall['measured_s'])} | "
                       f"{ratio:.2f} |")
        if not wall["complete"]:
            out.append("")
            out.append("Not every estimated job has a record yet: the rows compare the finished ones.")
        out.append("")
    return "\n".join(out)
