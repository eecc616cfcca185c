"""The scheduler's console: what a run of a suite prints.

One line per finished job (``[i/n] ok   <label>  acc .. asr .. der ..  <seconds>  run <run_id>``),
the plan before dispatch (and the job list of a dry run), the problems of a refused suite, and the
closing summary. Lines go to ``out`` (stdout by default); with ``progress`` a tqdm bar over the jobs
runs on stderr and the lines are written above it.
"""
from __future__ import annotations

import math
import sys

from bench.plan import JOB_KINDS

STATUS_TAGS = {"ok": "ok", "failed": "FAILED", "busy": "busy", "done-elsewhere": "done",
               "artifact": "model", "artifact-failed": "FAILED"}


def _number(v) -> str:
    return "  -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def job_line(i: int, n: int, s: dict) -> str:
    """The line for the i-th of n finished jobs, from its summary (:func:`bench.dispatch.summary`)."""
    tag = STATUS_TAGS.get(s["status"], s["status"])
    head = f"[{i:>{len(str(n))}}/{n}] {tag:6s} {s['label']}"
    if s["status"] == "ok":
        extra = f"acc {_number(s.get('acc'))} asr {_number(s.get('asr'))} der {_number(s.get('der'))}"
        if s.get("auroc") is not None:
            extra += f" auroc {_number(s.get('auroc'))}"
        return f"{head}  {extra}  {s['wall_s']:.1f}s  run {s['run_id']}"
    if s["status"] in ("failed", "artifact-failed"):
        return f"{head}  {s['error']}  run {s['run_id']}"
    if s["status"] == "busy":
        return f"{head}  (running in another scheduler)  run {s['run_id']}"
    if s["status"] == "done-elsewhere":
        return f"{head}  (finished by another scheduler)  run {s['run_id']}"
    return f"{head}  {s['wall_s']:.1f}s"


class Console:
    """Prints to ``out``; :meth:`start_progress` adds a bar over the jobs on stderr."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.bar = None

    def say(self, msg: str = "") -> None:
        print(msg, file=self.out, flush=True)

    def emit(self, line: str) -> None:
        """A line that must not break the progress bar."""
        if self.bar is not None:
            self.bar.write(line, file=self.out)
            self.out.flush()
        else:
            self.say(line)

    # -- before dispatch ---------------------------------------------------------------------------
    def invalid_suite(self, suite, error) -> None:
        self.say(f"suite '{suite}' is invalid; nothing was run:\n{error}")

    def refused(self, name: str, problems: list[str]) -> None:
        self.say(f"suite '{name}': {len(problems)} problem(s) found before any job started; nothing was run:")
        for p in problems:
            self.say(f"  - {p}")

    def planned(self, name: str, counts: dict, jobs: list, seconds: float) -> None:
        n_runs = sum(j.kind != "artifact" for j in jobs)
        by_kind = ", ".join(f"{sum(j.kind == k for j in jobs)} {k}" for k in JOB_KINDS)
        self.say(f"suite '{name}': {counts['runs']} runs ({counts['done']} done, {counts['failed_kept']} failed kept, "
                 f"{n_runs} to run in {len(jobs)} jobs: {by_kind}); validated in {seconds:.1f}s")

    def dry_run(self, jobs: list, results) -> None:
        for j in jobs:
            self.say(f"  {j.kind:8s} {j.status:5s} {j.label:70s} run {j.spec.run_id} cell {j.spec.cell_id}")
        self.say(f"(dry run: nothing was run; results would go to {results})")

    def dispatching(self, backend, device: str, results) -> None:
        self.say(f"backend {backend.name}, {backend.workers} worker(s) x {backend.threads} thread(s), "
                 f"device {device}; results -> {results}")

    # -- during dispatch ---------------------------------------------------------------------------
    def start_progress(self, total: int, name: str, progress: bool | None) -> None:
        """A tqdm bar over ``total`` jobs when ``progress`` (default: when stderr is a terminal)."""
        if progress is None:
            progress = sys.stderr.isatty()
        if progress and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=name, unit="job", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")

    def job_finished(self, i: int, n: int, summ: dict, ok: int, failed: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"ok {ok} failed {failed}", refresh=False)
        self.emit(job_line(i, n, summ))

    def interrupted(self) -> None:
        self.emit("interrupted: finished runs are kept; run the same command again to resume")

    def stop_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # -- after dispatch ----------------------------------------------------------------------------
    def finished(self, name: str, outcome, seconds: float) -> None:
        o = outcome
        self.say(f"suite '{name}' finished in {seconds:.1f}s: {o.ok} ok, {o.failed} failed"
                 + (f", {o.busy} running in another scheduler" if o.busy else "")
                 + (f", {o.skipped} finished elsewhere" if o.skipped else "")
                 + (f", {o.done_before} already done" if o.done_before else "")
                 + (f", {o.failed_kept} earlier failures kept (--retry-failed reruns them)" if o.failed_kept else ""))
        self.say(f"results: {o.results}  (records in {o.results / 'records'}, "
                 f"diagnostics in {o.results / 'diagnostics'})")
        if o.table:
            self.say(f"table:   {o.table[0]}  and  {o.table[1]}")
