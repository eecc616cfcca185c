"""Dispatch: run planned jobs in worker processes and hand back one summary per finished job.

**Backends** go through joblib: ``local`` runs ``workers`` loky processes (one worker runs in the
scheduler's own process instead); ``dask`` uses joblib's Dask backend on a ``dask.distributed``
cluster at an address, or on a ``LocalCluster`` on 127.0.0.1 started for the session.

**Workers** are set up once per process (:func:`setup_worker`): plug-in modules named with
``--import`` are imported, a device is chosen (on CUDA a worker claims a GPU slot, a lock file held
for its lifetime, ``jobs_per_gpu`` slots per GPU), the CPU cores are split between local workers,
and a worker started for this session exits when the scheduler process ends
(:func:`bench.watchdog.exit_with`), so a killed scheduler leaves no worker behind.

**A job** (:func:`run_job`) never raises for a failing run: it claims the run in the store (another
scheduler on the same folder may hold it: ``busy``), skips it when a record appeared meanwhile,
waits for its cell's backdoored model when a repair job needs it, executes it
(:func:`bench.runner.execute`) and writes the record, or a failed record with the error. A worker
that dies (segfault, out of memory) fails the dispatch; :func:`run_jobs` retries the jobs left
once, then records them as failed.
"""
from __future__ import annotations

import importlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from bench.plan import Job
from bench.spec import RunSpec
from bench.store import Store

MAX_DISPATCH_ATTEMPTS = 2


def cpu_cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(device: str, jobs_per_gpu: int) -> int:
    """One worker per visible GPU (times ``jobs_per_gpu``) on CUDA, else one per CPU core."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count() * max(1, jobs_per_gpu)
    # on CPU one single-threaded worker per core: the small models of CPU suites scale far better
    # over independent jobs than over intra-op threads
    return cpu_cores()


@dataclass(frozen=True)
class Backend:
    """Where jobs run: ``local`` (loky processes, or this process for one worker) or ``dask``."""

    name: str = "local"
    workers: int = 1
    dask_address: str | None = None

    @property
    def in_process(self) -> bool:
        return self.name == "local" and self.workers <= 1

    @property
    def threads(self) -> int | None:
        """Torch threads per local worker (the cores split between them); dask workers keep theirs."""
        return max(1, cpu_cores() // self.workers) if self.name == "local" else None

    @property
    def owns_workers(self) -> bool:
        """Whether the workers are started for this session on this machine (and must end with it)."""
        return not self.in_process and (self.name == "local" or not self.dask_address)


@dataclass(frozen=True)
class WorkerOptions:
    """What every job needs besides its spec (sent to each worker with each job)."""

    results: str
    data_root: str
    cache_dir: str
    salt: str                   # the results folder's secret (bench.protocol): evaluator-side only
    device: str
    threads: int | None
    jobs_per_gpu: int
    imports: tuple
    force: bool
    retry_failed: bool
    session_start: float        # records finished after this were written by this session
    in_process: bool
    scheduler_pid: int | None   # workers exit when this process ends (None: they never do)
    isolation: str = "process"  # how defense processes are isolated (bench.isolation)
    cpu_bf16: bool = False      # bfloat16 autocast on the CPU too (engine.Runtime.cpu_amp)

    def setup_key(self) -> tuple:
        return (self.device, self.threads, self.jobs_per_gpu, tuple(self.imports), self.in_process, self.cpu_bf16)


# -- the worker side --------------------------------------------------------------------------------
_WORKER: dict = {}


def _claim_gpu_slot(n_gpus: int, per_gpu: int) -> int:
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


def setup_worker(opts: WorkerOptions) -> None:
    """Configure this process once: exit with the scheduler, plug-in imports, device (GPU slot),
    CPU threads."""
    if opts.scheduler_pid is not None:
        from bench.watchdog import exit_with

        exit_with(opts.scheduler_pid)
    key = opts.setup_key()
    if _WORKER.get("key") == key:
        return
    import torch

    from bench import engine

    for mod in opts.imports:
        importlib.import_module(mod)
    dev = opts.device
    if dev in ("auto", "cuda") and torch.cuda.is_available():
        n = torch.cuda.device_count()
        idx = 0 if (opts.in_process or n == 1) else _claim_gpu_slot(n, max(1, opts.jobs_per_gpu))
        dev = f"cuda:{idx}"
        torch.cuda.set_device(idx)
    elif dev == "auto":
        dev = "cpu"
    engine.configure(device=dev, progress=False, cpu_amp=opts.cpu_bf16)
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    _WORKER["key"] = key
    _WORKER["device"] = dev


def summary(kind: str, spec: RunSpec, status: str, rec: dict | None = None, error: str | None = None,
            wall: float = 0.0) -> dict:
    """What a job hands back to the scheduler (status: ok, failed, busy, done-elsewhere, artifact,
    artifact-failed)."""
    out = {"kind": kind, "run_id": spec.run_id, "cell_id": spec.cell_id, "label": spec.label(),
           "status": status, "error": error, "wall_s": wall, "pid": os.getpid()}
    if rec is not None and "cpu_s" in rec:
        out["cpu_s"] = rec["cpu_s"]
    if rec is not None:
        for k in ("acc", "asr", "ra", "der", "auroc", "backdoor_cache_hit", "epochs_equiv"):
            out[k] = rec.get(k)
    return out


def crashed(job: Job, exc: BaseException) -> dict:
    """The summary of a job lost with a worker that died."""
    status = "artifact-failed" if job.kind == "artifact" else "failed"
    return summary(job.kind, job.spec, status, error=f"worker crashed: {type(exc).__name__}: {exc}")


def run_job(kind: str, spec_dict: dict, opts: WorkerOptions) -> dict:
    """Execute one job in a worker; never raises for a failing run (it becomes a failed record)."""
    setup_worker(opts)
    spec = RunSpec.from_dict(spec_dict)
    store = Store(opts.results)
    if kind == "artifact":
        return _train_artifact(spec, store, opts)
    claim = store.try_claim(spec.run_id)
    if claim is None:
        store.log_event("busy", run_id=spec.run_id)
        return summary(kind, spec, "busy")
    with claim:
        rec = store.read(spec.run_id)
        if rec is not None:
            fresh = (rec.get("finished_at") or 0) >= opts.session_start
            redo = opts.force or (opts.retry_failed and rec["status"] == "failed")
            if fresh or not redo:
                return summary(kind, spec, "done-elsewhere", rec)
        return _execute_claimed(kind, spec, store, opts)


def _train_artifact(spec: RunSpec, store: Store, opts: WorkerOptions) -> dict:
    """Only train (or find) the cell's backdoored model, for the repair jobs of a cell without a
    ``none`` run; its failure marks the cell failed for this session."""
    from bench import runner

    t0 = time.time()
    try:
        cell = runner.build_cell(spec, opts.data_root, opts.cache_dir, opts.salt)
        _, meta = runner.backdoored_model(cell, opts.cache_dir)
        store.log_event("artifact", cell_id=spec.cell_id, cache_hit=meta["cache_hit"])
        return summary("artifact", spec, "artifact", wall=time.time() - t0)
    except Exception as exc:  # noqa: BLE001
        err = f"{type(exc).__name__}: {exc}"
        store.mark_cell_failed(spec.cell_id, err)
        return summary("artifact", spec, "artifact-failed", error=err, wall=time.time() - t0)


def _execute_claimed(kind: str, spec: RunSpec, store: Store, opts: WorkerOptions) -> dict:
    """Run a claimed spec and write its record (a failed record when it raises)."""
    from bench import runner

    t0, c0 = time.time(), time.process_time()
    store.log_event("started", run_id=spec.run_id, kind=kind, label=spec.label(), device=_WORKER.get("device"))
    try:
        if kind in ("repair", "train"):
            _await_cell(spec, store, opts, wait=kind == "repair")
        # the results folder is hidden from the defense's process too (isolation "namespace")
        record, diagnostics = runner.execute(spec, opts.data_root, opts.cache_dir, salt=opts.salt,
                                             hide=(opts.results,), isolation=opts.isolation)
        record.update(job=kind, started_at=t0, pid=os.getpid(), worker_device=_WORKER.get("device"),
                      cpu_s=time.process_time() - c0 + (record.get("defense_cpu_s") or 0))
        store.write(record, diagnostics)
        if kind == "backdoor":
            store.clear_cell_failure(spec.cell_id)
        store.log_event("finished", run_id=spec.run_id, kind=kind, wall_s=time.time() - t0)
        return summary(kind, spec, "ok", record, wall=time.time() - t0)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a record
        record = runner.failed_record(spec, exc, time.time() - t0)
        record.update(job=kind, started_at=t0, pid=os.getpid())
        store.write(record)
        if kind == "backdoor":
            store.mark_cell_failed(spec.cell_id, record["error"])
        store.log_event("failed", run_id=spec.run_id, kind=kind, error=record["error"])
        return summary(kind, spec, "failed", record, error=record["error"], wall=time.time() - t0)


class CellFailedError(RuntimeError):
    """The backdoor training of this run's cell failed earlier in this session."""


def _await_cell(spec: RunSpec, store: Store, opts: WorkerOptions, wait: bool) -> None:
    if wait:  # a backdoor training in progress holds the model's lock: wait for it to finish
        from bench.cell import wait_for_model

        wait_for_model(spec, opts.cache_dir, opts.salt)
    err = store.cell_failure(spec.cell_id, opts.session_start)
    if err:
        raise CellFailedError(f"the backdoor training of this cell failed in this session: {err}")


# -- the scheduler side -----------------------------------------------------------------------------
def _parallel(jobs: list[Job], opts: WorkerOptions, backend: Backend) -> Iterator[dict]:
    """Yield each job's summary as it finishes (in the order they finish)."""
    from joblib import Parallel, delayed

    if backend.in_process:
        for j in jobs:
            yield run_job(j.kind, j.spec.to_dict(), opts)
        return
    calls = [delayed(run_job)(j.kind, j.spec.to_dict(), opts) for j in jobs]
    if backend.name == "local":
        yield from Parallel(n_jobs=backend.workers, backend="loky", return_as="generator_unordered",
                            batch_size=1, pre_dispatch="n_jobs")(calls)
        return
    from dask.distributed import Client, LocalCluster
    from joblib import parallel_config

    cluster = None
    if backend.dask_address:
        client = Client(backend.dask_address)
    else:
        cluster = LocalCluster(n_workers=backend.workers, threads_per_worker=1, host="127.0.0.1",
                               dashboard_address=None, processes=True)
        client = Client(cluster)
    try:
        n = max(1, len(client.scheduler_info(n_workers=-1)["workers"])) if backend.dask_address else backend.workers
        with parallel_config(backend="dask"):
            yield from Parallel(n_jobs=n, return_as="generator_unordered", batch_size=1,
                                pre_dispatch="n_jobs")(calls)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_jobs(jobs: list[Job], opts: WorkerOptions, backend: Backend,
             on_crash: Callable[[str], None] = lambda message: None) -> Iterator[dict]:
    """Yield one summary per job. When a worker dies, ``on_crash`` hears of it and the jobs left
    are dispatched again; after a second crash they are handed back as failed."""
    remaining = list(jobs)
    done: set = set()
    for attempt in range(1, MAX_DISPATCH_ATTEMPTS + 1):
        try:
            for summ in _parallel(remaining, opts, backend):
                done.add((summ["kind"], summ["run_id"]))
                yield summ
            return
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - a worker process died (segfault, out of memory, ...)
            remaining = [j for j in remaining if (j.kind, j.spec.run_id) not in done]
            on_crash(f"worker crash ({type(exc).__name__}: {exc}); {len(remaining)} job(s) left")
            if attempt == MAX_DISPATCH_ATTEMPTS:
                for j in remaining:
                    yield crashed(j, exc)
