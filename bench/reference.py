"""Published reference results: a results folder's records, shipped without models or diagnostics.

``python run_bench.py publish --results results --suite cifar10-cpu-paper --to reference/cifar10-cpu-paper``
copies the suite's records (``records/<run_id>.json``, ok and failed alike: a failure is a result),
the folder's ``protocol-salt``, the dry run's saved estimate of the suite (``estimates/<suite>.json``,
when there is one) and, for runs with diagnostics, their summaries (``summaries/<run_id>.json``:
the evaluator's checkpoint metrics and per-round detection rates, which the development report
reads; :func:`bench.reports.development.run_summary`) into a folder that can be committed.
Nothing else travels: no trained model, no per-sample diagnostic, no cache. A published folder is itself a results folder
with records only, so ``report --results reference/<suite>`` rebuilds every table and figure from
it.

``run --resume-from reference/<suite>`` seeds a results folder from such a folder before planning:
the salt (so the remaining runs draw from the same secret, the protocol's rule for one results
folder; see :mod:`bench.protocol`) and every record the results folder lacks. The scheduler then
skips those runs and computes only what is missing, so a long suite can be run in chunks across
machines and sessions and published as it grows.

Publishing the salt makes the draws of these reference runs known; that is what reproducing them
requires, and it is why a new results folder draws a salt of its own.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from bench.files import atomic_write_text
from bench.protocol import SALT_ENV, SALT_FILE
from bench.record import REQUIRED_FIELDS

RECORDS = "records"


class ReferenceError(ValueError):
    """A published folder that cannot be used as asked (refused before any compute)."""


def _records(folder: Path) -> dict[str, dict]:
    """``run_id -> record`` of a folder's readable records; an unreadable one is an error, since a
    published folder must be whole."""
    out = {}
    for path in sorted((folder / RECORDS).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ReferenceError(f"{path}: not a readable record ({exc})") from exc
        missing = [k for k in REQUIRED_FIELDS if k not in rec]
        if missing or rec.get("run_id") != path.stem:
            raise ReferenceError(f"{path}: not a run record (missing {missing} or run_id does not match the name)")
        out[path.stem] = rec
    return out


def _salt(folder: Path) -> str | None:
    path = folder / SALT_FILE
    return path.read_text().strip() if path.exists() else None


def _results_salt(results: Path) -> str | None:
    """The salt a results folder's runs use: ``$BENCH_SALT`` when set, else its salt file."""
    return os.environ.get(SALT_ENV, "").strip() or _salt(results)


def suite_run_ids(suite: str) -> set[str]:
    """The run ids a shipped (or named) suite expands to today; empty when it does not load (a
    suite file of another version: its records are still chosen by their ``suite`` field)."""
    from bench.suite import expand, load_suite

    try:
        return {spec.run_id for spec in expand(load_suite(suite))}
    except Exception:  # noqa: BLE001 - publishing never fails on a suite it cannot expand
        return set()


def publish(results: str | Path, dest: str | Path, suite: str | None = None) -> int:
    """Copy the records of ``suite`` (all records without one) and the salt from ``results`` into
    ``dest``; returns how many records were written. A suite's records are those written under its
    name and those of its run ids that another suite computed (a results folder resumed from
    another suite's published records reuses the runs they share). Records already in ``dest``
    are replaced by the results folder's version of the same run id."""
    results, dest = Path(results), Path(dest)
    salt = _results_salt(results)
    if salt is None:
        raise ReferenceError(f"{results} has no {SALT_FILE} (and {SALT_ENV} is not set): not a results "
                             f"folder the suite wrote")
    old_salt = _salt(dest)
    if old_salt is not None and old_salt != salt:
        raise ReferenceError(f"{dest} holds records of another salt: publish into a new folder, or "
                             f"resume {results} from {dest} first so that both share its draws")
    ids = suite_run_ids(suite) if suite else set()
    chosen = {rid: rec for rid, rec in _records(results).items()
              if suite is None or rec.get("suite") == suite or rid in ids}
    if not chosen:
        raise ReferenceError(f"{results} has no records" + (f" of suite '{suite}'" if suite else ""))
    (dest / RECORDS).mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest / SALT_FILE, salt + "\n")
    for rid in chosen:
        shutil.copyfile(results / RECORDS / f"{rid}.json", dest / RECORDS / f"{rid}.json")
    _copy_estimates(results, dest, {rec.get("suite") for rec in chosen.values()})
    _write_summaries(results, dest, chosen)
    atomic_write_text(dest / "STATUS.md", status_markdown(_records(dest)))
    return len(chosen)


def _copy_estimates(results: Path, dest: Path, suites: set) -> None:
    """The dry run's saved estimates of the published suites (JSON, :func:`bench.estimate.save`), so
    that ``report`` on the published folder sets them beside the measured times too; kept beside
    those already published by :func:`bench.estimate.store`'s rule (a later chunk's estimate of new
    jobs does not replace the first chunks')."""
    from bench.estimate import ESTIMATES, read_estimate, store, suite_estimates

    for suite in sorted(s for s in suites if s):
        for data in filter(None, map(read_estimate, suite_estimates(results / ESTIMATES, suite))):
            store(dest / ESTIMATES, data)


def _write_summaries(results: Path, dest: Path, chosen: dict) -> None:
    """Each published run's diagnostics summary (checkpoint metrics, per-round rates; no
    per-sample data), where the results folder has its diagnostics."""
    from bench.reports.development import SUMMARIES, run_summary
    from bench.reports.figures import load_diagnostics

    for rid in chosen:
        summary = run_summary(load_diagnostics(results, rid))
        if summary.get("checkpoints") or summary.get("rounds"):
            (dest / SUMMARIES).mkdir(parents=True, exist_ok=True)
            atomic_write_text(dest / SUMMARIES / f"{rid}.json", json.dumps(summary, indent=1) + "\n")


def status_markdown(records: dict[str, dict]) -> str:
    """What a published folder holds, cell by cell: which defenses finished (ok / failed)."""
    cells: dict[tuple, dict[str, str]] = {}
    for rec in records.values():
        key = (rec.get("suite"), rec["dataset"], rec["model"], rec["attack"], rec.get("poison_ratio"), rec["seed"])
        cells.setdefault(key, {})[rec["defense"]] = rec["status"]
    lines = ["# Status", "", f"{len(records)} record(s), written by `python run_bench.py publish`.", "",
             "| suite | dataset | model | attack | ratio | seed | ok | failed |", "|---|---|---|---|---|---|---|---|"]
    for key in sorted(cells, key=lambda k: tuple(str(v) for v in k)):
        done = cells[key]
        ok = ", ".join(sorted(d for d, st in done.items() if st == "ok")) or "—"
        failed = ", ".join(sorted(d for d, st in done.items() if st != "ok")) or "—"
        lines.append("| " + " | ".join(str(v) for v in key) + f" | {ok} | {failed} |")
    return "\n".join(lines) + "\n"


def seed_results(source: str | Path, results: str | Path) -> int:
    """Give ``results`` the salt and the records of the published folder ``source`` (records it
    already has are kept); returns how many records were added. Refuses a results folder whose
    salt differs: its runs would not be of the same draws."""
    source, results = Path(source), Path(results)
    salt = _salt(source)
    if salt is None:
        raise ReferenceError(f"--resume-from {source}: no {SALT_FILE} there (publish a results folder "
                             f"with `python run_bench.py publish`)")
    records = _records(source)
    own = _results_salt(results)
    if own is not None and own != salt:
        where = f"{SALT_ENV} is set" if os.environ.get(SALT_ENV, "").strip() else f"{results} already has a salt"
        raise ReferenceError(f"--resume-from {source}: {where} of its own, so its runs are of other "
                             f"draws; resume into a new results folder (without {SALT_ENV})")
    results.mkdir(parents=True, exist_ok=True)
    if _salt(results) is None:
        atomic_write_text(results / SALT_FILE, salt + "\n")
    (results / RECORDS).mkdir(parents=True, exist_ok=True)
    added = 0
    for rid in records:
        target = results / RECORDS / f"{rid}.json"
        if not target.exists():
            shutil.copyfile(source / RECORDS / f"{rid}.json", target)
            added += 1
    return added


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", help="results folder to publish from (default: results/)")
    parser.add_argument("--to", required=True, help="the published folder, e.g. reference/cifar10-cpu-paper")
    parser.add_argument("--suite", default=None, help="only this suite's records (default: every record)")


def main(args: argparse.Namespace) -> int:
    try:
        n = publish(args.results, args.to, args.suite)
    except ReferenceError as exc:
        print(f"publish: {exc}", file=sys.stderr)
        return 2
    print(f"published {n} record(s) and the salt to {args.to}; rebuild its report with "
          f"`python run_bench.py report --results {args.to}`")
    return 0
