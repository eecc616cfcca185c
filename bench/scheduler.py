"""The scheduler: run a suite's grid of run specs as jobs, resumably, on CPUs, GPUs or a cluster.

``python run_bench.py run --suite smoke`` (the ``run`` command; :func:`add_arguments`, :func:`main`).

**Jobs.** The expanded (and filtered, and validated) suite is grouped into cells (dataset, model,
attack + params, poison ratio, seed, recipe). Each cell gets one ``backdoor`` job (its ``none``
run, or an artifact-only job when the suite has no ``none`` run for it) that trains the backdoored
model once into the content-addressed artifact cache (``<cache>/models/<cell_id>.pt``);
``repair`` jobs (post-training defenses) of the cell load that model, so a grid of A cells and D
repair defenses trains A models; their records name the artifact (``backdoor_artifact``,
``backdoor_cache_hit``). ``train`` jobs (training-time defenses such as MeCa and ABL) do not depend
on the backdoored model: they run first and fetch the cell's no-defense numbers afterwards. Jobs
are dispatched longest-first: backdoor jobs, then train jobs, then repair jobs grouped by cell. A
defense's output on a clean cell (ratio 0) does not depend on the attack, so it is computed once
per clean model and reused by every attack's clean cell (:func:`bench.runner.run_defense`); the
jobs that only reuse it go last. A
repair job that starts while its cell's model is still being trained waits on the artifact's file
lock; when the cell's backdoor training failed in this session, it fails at once with that error.

**Dispatch** goes through joblib:

* ``--backend local`` (default): ``--workers N`` processes (joblib's ``loky``; one worker runs in
  the scheduler's own process). On CUDA the default is one worker per visible GPU, or
  ``--jobs-per-gpu K`` workers sharing each GPU; a worker claims a GPU slot with a lock file held
  for its lifetime. On CPU the default is one worker per core; the cores are split between the
  workers (``torch.set_num_threads(cores // workers)``).
* ``--backend dask``: joblib's Dask backend on a ``dask.distributed`` cluster, ``--dask-address
  tcp://host:8786`` (without an address a ``LocalCluster`` on 127.0.0.1 with ``--workers``
  processes is started). Workers must see the results folder, the artifact cache and the data root
  at the same paths (a shared file system) and have this package installed; plug-in modules named
  with ``--import`` are imported on every worker. On Slurm/PBS, start the cluster with
  `dask-jobqueue <https://jobqueue.dask.org>`_ and hand the scheduler its address, e.g.::

      from dask_jobqueue import SLURMCluster
      cluster = SLURMCluster(cores=8, processes=1, memory="48GB", walltime="12:00:00",
                             job_extra_directives=["--gres=gpu:1"])
      cluster.scale(jobs=8)                 # eight GPU jobs, one dask worker each
      print(cluster.scheduler_address)      # -> tcp://10.0.0.5:8786
      # python run_bench.py run --suite meca-table2 --backend dask --dask-address tcp://10.0.0.5:8786

  (``pip install dask-jobqueue``; ``PBSCluster``/``SGECluster`` work the same way.)

**Records and resume.** Workers write each finished run's record and diagnostics atomically into the
results folder (:mod:`bench.store`) under a per-run claim (an ``flock``), so two schedulers on the
same folder never run a run twice, and a killed scheduler loses only the runs in flight. A rerun
skips runs that have a record; ``--retry-failed`` also redoes runs whose record says failed;
``--force`` redoes everything. A failing run becomes a failed record with its error and the grid
goes on; the exit code is the number of failed runs (at most 100), 101 when the suite is invalid
(every problem is listed before any job starts), 130 when interrupted. At the end the records are
consolidated into ``runs.parquet`` and ``runs.csv``.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from bench.spec import RunSpec
from bench.store import Store
from bench.suite import SuiteError, apply_filters, expand, load_suite, validate

EXIT_INVALID = 101
EXIT_INTERRUPTED = 130
MAX_FAILED_EXIT = 100


# -- jobs -----------------------------------------------------------------------------------------
@dataclass
class Job:
    kind: str                # backdoor | artifact | train | repair
    spec: RunSpec
    status: str = "todo"     # todo | rerun (for the dry run)

    @property
    def label(self) -> str:
        if self.kind == "artifact":
            s = self.spec
            return f"{s.dataset}/{s.model}/{s.attack}@{s.poison_ratio:g}/seed{s.seed} (backdoored model only)"
        return self.spec.label()


def defense_stage(name: str) -> str:
    from bench.registry import DEFENSES

    return getattr(DEFENSES.get(name).obj, "stage", "repair")


def model_id(spec: RunSpec) -> str:
    """The artifact-cache key of a spec's backdoored model (clean cells share one model)."""
    return getattr(spec, "model_id", spec.cell_id)


def model_artifact(cache_dir: Path, spec: RunSpec) -> Path:
    return Path(cache_dir) / "models" / f"{model_id(spec)}.pt"


def plan(specs: list[RunSpec], store: Store, cache_dir: Path, *, force: bool = False,
         retry_failed: bool = False) -> tuple[list[Job], dict]:
    """The jobs to run for ``specs`` given what the store holds, longest-first; and counts."""
    statuses = store.statuses()
    counts = {"runs": len(specs), "done": 0, "failed_kept": 0, "todo": 0}
    cells: OrderedDict[str, list[RunSpec]] = OrderedDict()
    for s in specs:
        cells.setdefault(s.cell_id, []).append(s)
    backdoor, train, repair = [], [], []
    models_planned: set[str] = set()
    for cell_id, cell_specs in cells.items():
        todo = []
        for s in cell_specs:
            st = statuses.get(s.run_id)
            if force or st is None or (st == "failed" and retry_failed):
                todo.append(s)
            elif st == "ok":
                counts["done"] += 1
            else:
                counts["failed_kept"] += 1
        if not todo:
            continue
        counts["todo"] += len(todo)
        none = [s for s in todo if s.defense == "none"]
        for s in none:
            backdoor.append(Job("backdoor", s, "rerun" if s.run_id in statuses else "todo"))
            models_planned.add(model_id(s))
        others = [s for s in todo if s.defense != "none"]
        if others and not none and model_id(others[0]) not in models_planned \
                and not model_artifact(cache_dir, others[0]).exists():
            models_planned.add(model_id(others[0]))
            backdoor.append(Job("artifact", others[0].__class__(**{**others[0].to_dict(), "defense": "none",
                                                                  "defense_params": {}})))
        for s in others:
            st = "rerun" if s.run_id in statuses else "todo"
            (train if defense_stage(s.defense) == "train" else repair).append(
                Job("train" if defense_stage(s.defense) == "train" else "repair", s, st))
    return reuse_last(backdoor + train + repair), counts


def reuse_last(jobs: list[Job]) -> list[Job]:
    """Move the clean-cell defense jobs whose output another job computes (same
    :func:`bench.runner.clean_defense_id`) to the end of the queue: they only evaluate the cached
    output, and started early they would wait on its lock while a worker idles."""
    from bench.runner import clean_defense_id

    first, later, seen = [], [], set()
    for job in jobs:
        s = job.spec
        if job.kind in ("train", "repair") and s.poison_ratio == 0:
            key = clean_defense_id(s)
            if key in seen:
                later.append(job)
                continue
            seen.add(key)
        first.append(job)
    return first + later


# -- the worker side --------------------------------------------------------------------------------
_WORKER: dict = {}


def _claim_gpu_slot(n_gpus: int, per_gpu: int):
    """Hold a lock file for one of n_gpus * per_gpu slots for the life of this process."""
    import fcntl
    import tempfile

    d = Path(tempfile.gettempdir()) / f"bench-gpu-slots-{os.getuid()}"
    d.mkdir(parents=True, exist_ok=True)
    for k in range(per_gpu):
        for g in range(n_gpus):
            fh = open(d / f"gpu{g}-slot{k}.lock", "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            _WORKER["slot_fh"] = fh
            return g
    return os.getpid() % n_gpus


def setup_worker(opts: dict) -> None:
    """Configure this process once: plug-in imports, device (GPU slot), CPU threads."""
    key = (opts["device"], opts["threads"], opts["jobs_per_gpu"], tuple(opts["imports"]), opts["in_process"])
    if _WORKER.get("key") == key:
        return
    import torch

    from bench import engine

    for mod in opts["imports"]:
        importlib.import_module(mod)
    dev = opts["device"]
    if dev in ("auto", "cuda") and torch.cuda.is_available():
        n = torch.cuda.device_count()
        idx = 0 if (opts["in_process"] or n == 1) else _claim_gpu_slot(n, max(1, opts["jobs_per_gpu"]))
        dev = f"cuda:{idx}"
        torch.cuda.set_device(idx)
    elif dev == "auto":
        dev = "cpu"
    engine.configure(device=dev, progress=False)
    if opts["threads"]:
        torch.set_num_threads(int(opts["threads"]))
    _WORKER["key"] = key
    _WORKER["device"] = dev


def _summary(kind: str, spec: RunSpec, status: str, rec: dict | None = None, error: str | None = None,
             wall: float = 0.0) -> dict:
    out = {"kind": kind, "run_id": spec.run_id, "cell_id": spec.cell_id, "label": spec.label(),
           "status": status, "error": error, "wall_s": wall, "pid": os.getpid()}
    if rec is not None and "cpu_s" in rec:
        out["cpu_s"] = rec["cpu_s"]
    if rec is not None:
        for k in ("acc", "asr", "ra", "der", "auroc", "backdoor_cache_hit", "epochs_equiv"):
            out[k] = rec.get(k)
    return out


def run_job(kind: str, spec_dict: dict, opts: dict) -> dict:
    """Execute one job in a worker; never raises for a failing run (it becomes a failed record)."""
    from bench import runner

    setup_worker(opts)
    spec = RunSpec.from_dict(spec_dict)
    store = Store(opts["results"])
    cache_dir = opts["cache_dir"]
    t0, c0 = time.time(), time.process_time()
    if kind == "artifact":
        try:
            cell = runner.build_cell(spec, opts["data_root"], cache_dir)
            _, meta = runner.backdoored_model(cell, cache_dir)
            store.log_event("artifact", cell_id=spec.cell_id, cache_hit=meta["cache_hit"])
            return _summary(kind, spec, "artifact", wall=time.time() - t0)
        except Exception as exc:  # noqa: BLE001
            err = f"{type(exc).__name__}: {exc}"
            store.mark_cell_failed(spec.cell_id, err)
            return _summary(kind, spec, "artifact-failed", error=err, wall=time.time() - t0)

    claim = store.try_claim(spec.run_id)
    if claim is None:
        store.log_event("busy", run_id=spec.run_id)
        return _summary(kind, spec, "busy")
    with claim:
        rec = store.read(spec.run_id)
        if rec is not None:
            fresh = (rec.get("finished_at") or 0) >= opts["session_start"]
            redo = opts["force"] or (opts["retry_failed"] and rec["status"] == "failed")
            if fresh or not redo:
                return _summary(kind, spec, "done-elsewhere", rec)
        store.log_event("started", run_id=spec.run_id, kind=kind, label=spec.label(), device=_WORKER.get("device"))
        try:
            if kind in ("repair", "train"):
                _await_cell(spec, store, cache_dir, opts["session_start"], wait=kind == "repair")
            record, diagnostics = runner.execute(spec, opts["data_root"], cache_dir)
            record.update(job=kind, started_at=t0, pid=os.getpid(), worker_device=_WORKER.get("device"),
                          cpu_s=time.process_time() - c0)
            store.write(record, diagnostics)
            if kind == "backdoor":
                store.clear_cell_failure(spec.cell_id)
            store.log_event("finished", run_id=spec.run_id, kind=kind, wall_s=time.time() - t0)
            return _summary(kind, spec, "ok", record, wall=time.time() - t0)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a record
            record = runner.failed_record(spec, exc, time.time() - t0)
            record.update(job=kind, started_at=t0, pid=os.getpid())
            store.write(record)
            if kind == "backdoor":
                store.mark_cell_failed(spec.cell_id, record["error"])
            store.log_event("failed", run_id=spec.run_id, kind=kind, error=record["error"])
            return _summary(kind, spec, "failed", record, error=record["error"], wall=time.time() - t0)


class CellFailedError(RuntimeError):
    """The backdoor training of this run's cell failed earlier in this session."""


def _await_cell(spec: RunSpec, store: Store, cache_dir, since: float, wait: bool) -> None:
    from bench.store import exclusive_lock

    if wait:  # a backdoor training in progress holds this lock: wait for it to finish
        with exclusive_lock(Path(cache_dir) / "models" / f"{model_id(spec)}.lock"):
            pass
    err = store.cell_failure(spec.cell_id, since)
    if err:
        raise CellFailedError(f"the backdoor training of this cell failed in this session: {err}")


# -- dispatch -------------------------------------------------------------------------------------
def _dispatch(jobs: list[Job], opts: dict, backend: str, workers: int, dask_address: str | None):
    """Yield each job's summary as it finishes."""
    from joblib import Parallel, delayed

    calls = [delayed(run_job)(j.kind, j.spec.to_dict(), opts) for j in jobs]
    if backend == "local" and workers <= 1:
        for j in jobs:
            yield run_job(j.kind, j.spec.to_dict(), opts)
        return
    if backend == "local":
        yield from Parallel(n_jobs=workers, backend="loky", return_as="generator_unordered", batch_size=1,
                            pre_dispatch="n_jobs")(calls)
        return
    from dask.distributed import Client, LocalCluster
    from joblib import parallel_config

    cluster = None
    if dask_address:
        client = Client(dask_address)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, host="127.0.0.1",
                               dashboard_address=None, processes=True)
        client = Client(cluster)
    try:
        n = max(1, len(client.scheduler_info(n_workers=-1)["workers"])) if dask_address else workers
        with parallel_config(backend="dask"):
            yield from Parallel(n_jobs=n, return_as="generator_unordered", batch_size=1,
                                pre_dispatch="n_jobs")(calls)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@dataclass
class Outcome:
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


def _line(i: int, n: int, s: dict) -> str:
    tag = {"ok": "ok", "failed": "FAILED", "busy": "busy", "done-elsewhere": "done",
           "artifact": "model", "artifact-failed": "FAILED"}.get(s["status"], s["status"])
    width = len(str(n))
    head = f"[{i:>{width}}/{n}] {tag:6s} {s['label']}"
    if s["status"] == "ok":
        def f(k):
            v = s.get(k)
            return "  -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
        extra = f"acc {f('acc')} asr {f('asr')} der {f('der')}"
        if s.get("auroc") is not None:
            extra += f" auroc {f('auroc')}"
        return f"{head}  {extra}  {s['wall_s']:.1f}s  run {s['run_id']}"
    if s["status"] in ("failed", "artifact-failed"):
        return f"{head}  {s['error']}  run {s['run_id']}"
    if s["status"] == "busy":
        return f"{head}  (running in another scheduler)  run {s['run_id']}"
    if s["status"] == "done-elsewhere":
        return f"{head}  (finished by another scheduler)  run {s['run_id']}"
    return f"{head}  {s['wall_s']:.1f}s"


def default_workers(device: str, jobs_per_gpu: int) -> int:
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count() * max(1, jobs_per_gpu)
    # on CPU one single-threaded worker per core: the small models of CPU suites scale far better
    # over independent jobs than over intra-op threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_suite(suite: str | Path, *, results: str | Path = "results", data_root=None, cache_dir=None,
              workers: int | None = None, jobs_per_gpu: int = 1, backend: str = "local",
              dask_address: str | None = None, force: bool = False, retry_failed: bool = False,
              attacks=None, defenses=None, datasets=None, models=None, ratios=None, seeds=None,
              dry_run: bool = False, device: str = "auto", progress: bool | None = None,
              imports=(), check_data: bool = True, out=None) -> Outcome:
    """Expand, filter, validate, plan and run a suite; returns an :class:`Outcome`."""
    out = out or sys.stdout
    session_start = time.time()

    def say(msg=""):
        print(msg, file=out, flush=True)

    imports = list(imports or ())
    for mod in imports:
        importlib.import_module(mod)
    results = Path(results).resolve()
    outcome = Outcome(results)
    if cache_dir is None:
        cache_dir = os.environ.get("BENCH_CACHE_DIR") or results / "cache"
    cache_dir = Path(cache_dir).resolve()
    if data_root is None:
        from bench.datasets import default_data_root

        data_root = default_data_root()
    data_root = str(Path(data_root).resolve())

    try:
        s = load_suite(suite)
    except SuiteError as exc:
        outcome.problems = exc.problems
        say(f"suite '{suite}' is invalid; nothing was run:\n{exc}")
        return outcome
    t_val = time.time()
    problems: list[str] = []
    try:
        specs = expand(s)
    except SuiteError as exc:  # keep going: every problem is listed at once
        problems += exc.problems
        specs = expand(s, strict=False)
    try:
        specs = apply_filters(specs, attacks=attacks, defenses=defenses, datasets=datasets, models=models,
                              ratios=ratios, seeds=seeds)
    except SuiteError as exc:
        problems += exc.problems
    problems += validate(specs, data_root, cache_dir, check_data=check_data)
    if problems:
        outcome.problems = problems
        say(f"suite '{s.name}': {len(problems)} problem(s) found before any job started; nothing was run:")
        for p in problems:
            say(f"  - {p}")
        return outcome
    store = Store(results).ensure()
    jobs, counts = plan(specs, store, cache_dir, force=force, retry_failed=retry_failed)
    outcome.done_before, outcome.failed_kept = counts["done"], counts["failed_kept"]
    n_runs = sum(j.kind != "artifact" for j in jobs)
    if workers is None:
        workers = default_workers(device, jobs_per_gpu)
    workers = max(1, int(workers))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    in_process = backend == "local" and workers <= 1
    threads = max(1, cores // workers) if backend == "local" else None
    say(f"suite '{s.name}': {counts['runs']} runs ({counts['done']} done, {counts['failed_kept']} failed kept, "
        f"{n_runs} to run in {len(jobs)} jobs: "
        + ", ".join(f"{sum(j.kind == k for j in jobs)} {k}" for k in ("backdoor", "artifact", "train", "repair"))
        + f"); validated in {time.time() - t_val:.1f}s")
    if dry_run:
        for j in jobs:
            say(f"  {j.kind:8s} {j.status:5s} {j.label:70s} run {j.spec.run_id} cell {j.spec.cell_id}")
        say(f"(dry run: nothing was run; results would go to {results})")
        return outcome
    say(f"backend {backend}, {workers} worker(s) x {threads} thread(s), device {device}; results -> {results}")

    opts = {"results": str(results), "data_root": data_root, "cache_dir": str(cache_dir), "device": device,
            "threads": threads, "jobs_per_gpu": jobs_per_gpu, "imports": imports, "force": force,
            "retry_failed": retry_failed, "session_start": session_start, "in_process": in_process}
    if progress is None:
        progress = sys.stderr.isatty()
    bar = None
    if progress and jobs:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"{s.name}", unit="job", file=sys.stderr, dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")

    def emit(line: str):
        if bar is not None:
            bar.write(line, file=out)
            out.flush()
        else:
            say(line)

    remaining = list(jobs)
    done_ids: set = set()
    attempts = 0
    try:
        while remaining:
            attempts += 1
            try:
                for summ in _dispatch(remaining, opts, backend, workers, dask_address):
                    done_ids.add((summ["kind"], summ["run_id"]))
                    outcome.summaries.append(summ)
                    st = summ["status"]
                    if st == "ok":
                        outcome.ok += 1
                    elif st in ("failed", "artifact-failed"):
                        outcome.failed += st == "failed"
                    elif st == "busy":
                        outcome.busy += 1
                    elif st == "done-elsewhere":
                        outcome.skipped += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(f"ok {outcome.ok} failed {outcome.failed}", refresh=False)
                    emit(_line(len(outcome.summaries), len(jobs), summ))
                remaining = []
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # a worker process died (segfault, out of memory, ...)
                remaining = [j for j in remaining if (j.kind, j.spec.run_id) not in done_ids]
                emit(f"worker crash ({type(exc).__name__}: {exc}); {len(remaining)} job(s) left")
                if attempts >= 2:
                    for j in remaining:
                        summ = _summary(j.kind, j.spec, "failed", error=f"worker crashed: {type(exc).__name__}: {exc}")
                        outcome.summaries.append(summ)
                        outcome.failed += j.kind != "artifact"
                        emit(_line(len(outcome.summaries), len(jobs), summ))
                    remaining = []
    except KeyboardInterrupt:
        outcome.interrupted = True
        emit("interrupted: finished runs are kept; run the same command again to resume")
    finally:
        if bar is not None:
            bar.close()
    outcome.jobs = len(jobs)
    try:
        outcome.table = store.consolidate()
    except Exception as exc:  # noqa: BLE001 - the records are the truth; the table can be rebuilt
        say(f"warning: could not consolidate the records: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
    elapsed = time.time() - session_start
    say(f"suite '{s.name}' finished in {elapsed:.1f}s: {outcome.ok} ok, {outcome.failed} failed"
        + (f", {outcome.busy} running in another scheduler" if outcome.busy else "")
        + (f", {outcome.skipped} finished elsewhere" if outcome.skipped else "")
        + (f", {outcome.done_before} already done" if outcome.done_before else "")
        + (f", {outcome.failed_kept} earlier failures kept (--retry-failed reruns them)" if outcome.failed_kept else ""))
    say(f"results: {results}  (records in {results / 'records'}, diagnostics in {results / 'diagnostics'})")
    if outcome.table:
        say(f"table:   {outcome.table[0]}  and  {outcome.table[1]}")
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
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--force", action="store_true", help="rerun runs that already have a record")
    g.add_argument("--retry-failed", action="store_true", help="also rerun runs whose record says failed")
    for axis, what in (("attacks", "names/wildcards"), ("defenses", "names/wildcards"),
                       ("datasets", "names/wildcards"), ("models", "names/wildcards"),
                       ("ratios", "poison ratios"), ("seeds", "seeds")):
        parser.add_argument(f"--{axis}", default=None, help=f"only these {what}, comma-separated")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the jobs, run nothing")
    parser.add_argument("--progress", dest="progress", action="store_true", default=None,
                        help="show a progress bar over jobs (default: when stderr is a terminal)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a module that registers plug-ins (here and in every worker); repeatable")


def main(args: argparse.Namespace) -> int:
    outcome = run_suite(
        args.suite, results=args.results, data_root=args.data_root, cache_dir=args.cache_dir,
        workers=args.workers, jobs_per_gpu=args.jobs_per_gpu, backend=args.backend,
        dask_address=args.dask_address, force=args.force, retry_failed=args.retry_failed,
        attacks=args.attacks, defenses=args.defenses, datasets=args.datasets, models=args.models,
        ratios=args.ratios, seeds=args.seeds, dry_run=args.dry_run, device=args.device,
        progress=args.progress, imports=args.imports)
    return outcome.exit_code
