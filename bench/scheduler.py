"""The scheduler: run a suite's grid of run specs as jobs, resumably, on CPUs, GPUs or a cluster.

``python run_bench.py run --suite smoke`` (the ``run`` command; :func:`add_arguments`, :func:`main`).
:func:`run_suite` loads, filters and validates the suite (every problem is listed before any job
starts), plans the jobs (:mod:`bench.plan`), dispatches them (:mod:`bench.dispatch`) and reports
as they finish (:mod:`bench.console`).

**Jobs.** Each cell (dataset, model, attack + params, poison ratio, seed, recipe) gets one
``backdoor`` job that trains the backdoored model once into the content-addressed artifact cache
(``<cache>/models/<model_id>.pt``); ``repair`` jobs (post-training defenses) of the cell load that
model, so a grid of A cells and D repair defenses trains A models; ``train`` jobs (training-time
defenses such as MeCa and ABL) do not depend on it. A defense's output on a clean cell does not
depend on the attack, so it is computed once per clean model (:func:`bench.runner.run_defense`);
the jobs that only reuse it go last. A repair job that starts while its cell's model is still
being trained waits on the artifact's file lock; when the cell's backdoor training failed in this
session, it fails at once with that error.

**Dispatch** goes through joblib: ``--backend local`` (default) runs ``--workers N`` loky processes
(one worker runs in the scheduler's own process; on CUDA the default is one worker per visible
GPU, or ``--jobs-per-gpu K`` workers sharing each; on CPU one per core, the cores split between
them); ``--backend dask`` uses a ``dask.distributed`` cluster at ``--dask-address`` (or a local one).
Workers must see the results folder, the artifact cache and the data root at the same paths, and
plug-in modules named with ``--import`` are imported on every worker. docs/running.md shows each
setting, Slurm and PBS (dask-jobqueue) included. Workers started for a session exit when the
scheduler process ends, killed or not.

**Records and resume.** Workers write each finished run's record and diagnostics atomically into the
results folder (:mod:`bench.store`) under a per-run claim (an ``flock``), so two schedulers on the
same folder never run a run twice, and a killed scheduler loses only the runs in flight. A rerun
skips runs that have a record; ``--retry-failed`` also redoes runs whose record says failed;
``--force`` redoes everything. Every run of a results folder draws its seeds with the folder's secret
salt (:mod:`bench.protocol`), which the scheduler reads once and hands to its workers (never to a
defense). A failing run becomes a failed record with its error and the grid goes on; the exit code
is the number of failed runs (at most 100), 101 when the suite is invalid or the results or cache
folder cannot be written (every problem is listed before any job starts), 130 when interrupted.
At the end the records are consolidated into ``runs.parquet`` and ``runs.csv``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from bench.console import Console
from bench.dispatch import Backend, WorkerOptions, default_workers, run_job, run_jobs, setup_worker
from bench.plan import Job, plan, reuse_last
from bench.protocol import folder_salt
from bench.store import Store
from bench.suite import SuiteError, apply_filters, expand, load_suite, validate

__all__ = ["EXIT_INTERRUPTED", "EXIT_INVALID", "MAX_FAILED_EXIT", "Job", "Outcome", "add_arguments",
           "default_workers", "main", "plan", "reuse_last", "run_job", "run_suite", "setup_worker"]

EXIT_INVALID = 101
EXIT_INTERRUPTED = 130
MAX_FAILED_EXIT = 100


@dataclass
class Outcome:
    """What a call of :func:`run_suite` did; ``exit_code`` is the command's exit status."""

    results: Path
    jobs: int = 0
    ok: int = 0
    failed: int = 0
    busy: int = 0
    skipped: int = 0
    done_before: int = 0
    failed_kept: int = 0
    summaries: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    table: tuple | None = None
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.problems:
            return EXIT_INVALID
        if self.interrupted:
            return EXIT_INTERRUPTED
        return min(self.failed, MAX_FAILED_EXIT)

    def count(self, summ: dict) -> None:
        """Tally one finished job's summary (a failed artifact job is not a failed run)."""
        self.summaries.append(summ)
        status = summ["status"]
        if status == "ok":
            self.ok += 1
        elif status == "failed":
            self.failed += 1
        elif status == "busy":
            self.busy += 1
        elif status == "done-elsewhere":
            self.skipped += 1


# -- before any job -----------------------------------------------------------------------------------
def _resolve_folders(results, cache_dir, data_root) -> tuple[Path, Path, str]:
    results = Path(results).resolve()
    if cache_dir is None:
        cache_dir = os.environ.get("BENCH_CACHE_DIR") or results / "cache"
    if data_root is None:
        from bench.datasets import default_data_root

        data_root = default_data_root()
    return results, Path(cache_dir).resolve(), str(Path(data_root).resolve())


def write_problem(folder: Path) -> str | None:
    """Why files cannot be written into ``folder`` (which need not exist yet), or None. Nothing is
    created: a temporary file is written and removed in the nearest folder that exists."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        tempfile.TemporaryFile(dir=existing, prefix=".write-probe-").close()
    except OSError as exc:
        return f"cannot write in {existing}: {exc.strerror or exc}"
    return None


def _folder_problems(results: Path, cache_dir: Path) -> list[str]:
    problems = []
    for what, folder, option in (("results folder", results, "--results"),
                                 ("artifact cache", cache_dir, "--cache-dir or $BENCH_CACHE_DIR")):
        why = write_problem(folder)
        if why:
            problems.append(f"the {what} {folder} cannot be written ({why}); choose another with {option}")
    return problems


def _runtime_problems(device: str, cpu_bf16: bool) -> list[str]:
    """``--cpu-bf16`` where the runs would compute on a CPU without native bfloat16."""
    if not cpu_bf16:
        return []
    import torch

    from bench import engine

    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if on_cpu and not engine.cpu_bf16_supported():
        return ["--cpu-bf16: this CPU has no native bfloat16 (AVX-512 BF16 or AMX through oneDNN), so bf16 "
                "autocast would be emulated and slower than float32; run without --cpu-bf16"]
    return []


def _specs_and_problems(s, filters: dict, data_root: str, cache_dir: Path, check_data: bool,
                        miniature: dict | None = None) -> tuple[list, list[str]]:
    """The suite's filtered specs and every problem found in them. ``miniature`` (``mode``, the
    ``real`` data root, the ``results`` folder) shrinks the specs (``mode`` "cover": to a covering
    subset) and fills the miniature data root (bench.miniature)."""
    problems: list[str] = []
    try:
        specs = expand(s)
    except SuiteError as exc:  # keep going: every problem is listed at once
        problems += exc.problems
        specs = expand(s, strict=False)
    try:
        specs = apply_filters(specs, **filters)
    except SuiteError as exc:
        problems += exc.problems
    if miniature is not None:
        from bench import miniature as mini

        specs = mini.shrink(specs)
        if check_data:
            try:
                mini.prepare_data(specs, miniature["real"], cache_dir)
            except OSError as exc:
                problems.append(f"--miniature: cannot prepare its data in {data_root}: {exc}")
    problems += validate(specs, data_root, cache_dir, check_data=check_data)
    if miniature is not None and miniature["mode"] == "cover":   # the whole grid validated, a subset run
        specs = mini.cover(specs, mini.done_specs(miniature["results"]))
    return specs, problems


# -- the run ----------------------------------------------------------------------------------------
def _dispatch(jobs: list[Job], opts: WorkerOptions, backend: Backend, console: Console, outcome: Outcome) -> None:
    """Run the jobs, tallying and printing each as it finishes; Ctrl-C stops with what is done."""
    try:
        for summ in run_jobs(jobs, opts, backend, on_crash=console.emit):
            outcome.count(summ)
            console.job_finished(len(outcome.summaries), len(jobs), summ, outcome.ok, outcome.failed)
    except KeyboardInterrupt:
        outcome.interrupted = True
        console.interrupted()
    finally:
        console.stop_progress()
    outcome.jobs = len(jobs)


def _consolidate(store: Store, outcome: Outcome, console: Console) -> None:
    try:
        outcome.table = store.consolidate()
    except Exception as exc:  # noqa: BLE001 - the records are the truth; the table can be rebuilt
        console.say(f"warning: could not consolidate the records: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)


def run_suite(suite: str | Path, *, results: str | Path = "results", data_root=None, cache_dir=None,
              workers: int | None = None, jobs_per_gpu: int = 1, backend: str = "local",
              dask_address: str | None = None, force: bool = False, retry_failed: bool = False,
              attacks=None, defenses=None, datasets=None, models=None, ratios=None, seeds=None,
              dry_run: bool = False, device: str = "auto", progress: bool | None = None,
              imports=(), check_data: bool = True, out=None, isolation: str = "process",
              miniature: bool | str = False,
              estimate: bool = True, device_check=None, cpu_bf16: bool = False) -> Outcome:
    """Expand, filter, validate, plan and run a suite; returns an :class:`Outcome`. A dry run also
    prints the cost estimate (:mod:`bench.estimate`; ``device_check``: the device check's JSON).
    ``cpu_bf16``: bfloat16 autocast on the CPU too, as on CUDA (records say ``compute_dtype``)."""
    console = Console(out)
    session_start = time.time()
    imports = tuple(imports or ())
    for mod in imports:
        importlib.import_module(mod)
    results, cache_dir, data_root = _resolve_folders(results, cache_dir, data_root)
    outcome = Outcome(results)
    try:
        s = load_suite(suite)
    except SuiteError as exc:
        outcome.problems = exc.problems
        console.invalid_suite(suite, exc)
        return outcome

    t_val = time.time()
    folder_problems = _folder_problems(results, cache_dir) + _runtime_problems(device, cpu_bf16)
    filters = dict(attacks=attacks, defenses=defenses, datasets=datasets, models=models, ratios=ratios, seeds=seeds)
    mini = None
    if miniature:   # shrunken runs on a data root of links and stand-ins (bench.miniature)
        from bench.miniature import data_root as miniature_root

        mini = {"mode": "cover" if miniature == "cover" else "all", "real": data_root, "results": results}
        data_root = str(miniature_root(cache_dir))
    specs, problems = _specs_and_problems(s, filters, data_root, cache_dir, check_data, mini)
    if folder_problems or problems:
        outcome.problems = folder_problems + problems
        console.refused(s.name, outcome.problems)
        return outcome
    store = Store(results).ensure()
    salt = folder_salt(results)
    jobs, counts = plan(specs, store, cache_dir, salt, force=force, retry_failed=retry_failed)
    outcome.done_before, outcome.failed_kept = counts["done"], counts["failed_kept"]
    console.planned(s.name, counts, jobs, time.time() - t_val)
    if dry_run:
        console.dry_run(jobs, results)
        if estimate:
            from bench.estimate import dry_run_lines

            for line in dry_run_lines(s.name, jobs, results=results, data_root=data_root, cache_dir=cache_dir,
                                      salt=salt, workers=workers, device_check=device_check, cpu_bf16=cpu_bf16):
                console.say(line)
        return outcome

    if workers is None:
        workers = default_workers(device, jobs_per_gpu)
    pool = Backend(backend, max(1, int(workers)), dask_address)
    console.dispatching(pool, device, results)
    opts = WorkerOptions(
        results=str(results), data_root=data_root, cache_dir=str(cache_dir), salt=salt, device=device,
        threads=pool.threads, jobs_per_gpu=jobs_per_gpu, imports=imports, force=force, retry_failed=retry_failed,
        session_start=session_start, in_process=pool.in_process,
        scheduler_pid=os.getpid() if pool.owns_workers else None, isolation=isolation, cpu_bf16=cpu_bf16)
    console.start_progress(len(jobs), s.name, progress)
    _dispatch(jobs, opts, pool, console, outcome)
    _consolidate(store, outcome, console)
    console.finished(s.name, outcome, time.time() - session_start)
    return outcome


# -- command line -----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default="smoke", help="a shipped suite name (see `list suites`) or a .toml path")
    parser.add_argument("--results", default="results", help="results folder (default: results/)")
    parser.add_argument("--data-root", default=None, help="where datasets live (default: $BENCH_DATA_ROOT or data/)")
    parser.add_argument("--cache-dir", default=None,
                        help="artifact cache (default: $BENCH_CACHE_DIR or <results>/cache)")
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel workers (default: one per GPU x --jobs-per-gpu on CUDA, one per core on CPU)")
    parser.add_argument("--jobs-per-gpu", type=int, default=1, help="workers sharing one GPU (default 1)")
    parser.add_argument("--backend", choices=["local", "dask"], default="local",
                        help="local processes (joblib/loky) or a dask.distributed cluster")
    parser.add_argument("--dask-address", default=None, help="dask scheduler address, e.g. tcp://10.0.0.5:8786")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="on the CPU, train and evaluate under bfloat16 autocast, as on CUDA (CPUs with "
                             "AVX-512 BF16 or AMX: 2-3x the float32 images/s for cnn_small; refused on others); "
                             "records say compute_dtype")
    parser.add_argument("--isolation", choices=["process", "namespace"], default="process",
                        help="defense processes: 'process' (default) or 'namespace' (Linux PID and mount "
                             "namespaces hiding the evaluator and the results/cache/data folders; needs unshare)")
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--force", action="store_true", help="rerun runs that already have a record")
    g.add_argument("--retry-failed", action="store_true", help="also rerun runs whose record says failed")
    for axis, what in (("attacks", "names/wildcards"), ("defenses", "names/wildcards (one variant of a defense: its label as the job list "
                                    "shows it, e.g. 'meca(iterations=8,warmup=full)')"),
                       ("datasets", "names/wildcards"), ("models", "names/wildcards"),
                       ("ratios", "poison ratios"), ("seeds", "seeds")):
        parser.add_argument(f"--{axis}", default=None, help=f"only these {what}, comma-separated")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the jobs, run nothing")
    parser.add_argument("--miniature", nargs="?", const="all", choices=["all", "cover"], default=None,
                        help="the suite's grid at miniature sizes (a few hundred images, one epoch, a tiny defense "
                             "budget; generated stand-ins for absent data) to check that it runs, on a CPU; records "
                             "say miniature and never count as real runs. 'cover': only a subset in which every "
                             "dataset, model, attack, defense, ratio and seed appears (and what the results folder's "
                             "miniature runs have not exercised yet) (bench.miniature)")
    parser.add_argument("--device-check", default=None, metavar="JSON",
                        help="with --dry-run: the device check's JSON for the GPU time estimate "
                             "(default <results>/device-check.json; `device-check` writes it)")
    parser.add_argument("--no-estimate", dest="estimate", action="store_false",
                        help="with --dry-run: skip the cost estimate (and its few calibration steps)")
    parser.add_argument("--resume-from", default=None, metavar="PUBLISHED",
                        help="first give the results folder the salt and records of a published folder "
                             "(e.g. reference/cifar10-cpu-paper), so only the missing runs are computed")
    parser.add_argument("--progress", dest="progress", action="store_true", default=None,
                        help="show a progress bar over jobs (default: when stderr is a terminal)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a module that registers plug-ins (here and in every worker); repeatable")


def main(args: argparse.Namespace) -> int:
    if args.resume_from:
        from bench.reference import ReferenceError, seed_results

        try:
            added = seed_results(args.resume_from, args.results)
        except ReferenceError as exc:
            print(f"run: {exc}", file=sys.stderr)
            return 2
        print(f"resumed {args.results} from {args.resume_from}: {added} record(s) added")
    outcome = run_suite(
        args.suite, results=args.results, data_root=args.data_root, cache_dir=args.cache_dir,
        workers=args.workers, jobs_per_gpu=args.jobs_per_gpu, backend=args.backend,
        dask_address=args.dask_address, force=args.force, retry_failed=args.retry_failed,
        attacks=args.attacks, defenses=args.defenses, datasets=args.datasets, models=args.models,
        ratios=args.ratios, seeds=args.seeds, dry_run=args.dry_run, device=args.device,
        progress=args.progress, imports=args.imports, isolation=args.isolation, miniature=args.miniature,
        estimate=args.estimate, device_check=args.device_check, cpu_bf16=args.cpu_bf16)
    return outcome.exit_code
