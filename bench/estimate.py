"""What a suite will cost, before anything runs: trainings, images to process and wall time.

``python run_bench.py run --suite NAME --dry-run`` prints, after the job list, one row per job
kind (``backdoor``, ``artifact``, ``train``, ``repair``; :data:`bench.plan.JOB_KINDS`) with

* **trainings**: the jobs' training passes in units of their cell's standard training (its
  epochs over the images the victim trains on), as the records' ``trainings`` column counts them;
* **images**: the images those passes process (epochs x images, the engine's steps counted exactly:
  :func:`bench.cost.fit_passes`);
* **CPU** wall time on this machine and **GPU** wall time from the device check's JSON
  (:mod:`bench.device_check`), or "unknown (no device check)".

Where the numbers come from: a backdoor (or artifact) job is one standard training of its cell
(the suite's ``[budget] epochs`` and ``[train]`` recipe over the cell's training images minus the
clean reserve); a defense job is the sum of the training phases its card declares
(:attr:`bench.card.DefenseCard.cost_phases`: paper epochs from its parameters, scaled by the
suite's budget, with the budget's step floor), so this module names no plug-in. Work that the
scheduler shares is counted once: a backdoored model already in the artifact cache or trained by
another job of the run (clean cells of all attacks share one), and a defense's output on a clean
cell (computed once per clean model, :func:`bench.runner.clean_defense_id`). Every job, shared or
not, also evaluates its model once (the clean and the triggered test images,
:func:`evaluation_images`). Not counted: a defense's own forward-only passes (feature extraction,
scoring, pruning searches, its checkpoints' evaluations), each job's start-up, an attack's
surrogate or generator training (named when the suite has such attacks), and defenses that
declare no phases (named, counted as 0).

Wall time is an estimate. On the CPU: a few training steps and inference batches of each of the
suite's (model, image size, batch) are timed here through the engine with the torch threads a
worker will get (:func:`calibrate`); training images are divided by the training rate times the
workers, evaluation images by the inference rate; the machine's load average at that moment is
printed, since other processes slow the steps down. On a GPU: the engine's images/s for the
model that the device check measured on CIFAR-10
(scaled by the pixel count for other image sizes), training passes only. ``report`` sets a saved
estimate beside the measured times (:mod:`bench.reports.estimate_check`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.cost import CellSizes, PhaseCost, fit_passes, phase_costs
from bench.plan import JOB_KINDS

DEVICE_CHECK_FILE = "device-check.json"


# -- one job ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellFacts:
    """A cell's sizes, read once per (dataset, its params, subset size)."""

    n_total: int            # the training subset before the reserve is carved out
    num_classes: int
    image_shape: tuple
    n_test: int = 0         # the test subset the evaluator scores


@dataclass
class JobCost:
    kind: str
    label: str
    defense: str
    model: str
    image_shape: tuple
    num_classes: int
    batch_size: int
    images: int = 0          # counted training passes
    eval_images: int = 0     # forward passes of the evaluator (clean and triggered test images)
    work: float = 0.0        # images x the phases' weights (what time is computed from)
    standard: int = 1        # images of one standard training of the job's cell
    phases: list = field(default_factory=list)
    note: str = ""           # shared / cached / no cost hint
    cell: str = ""           # the cell's model id (groups a backdoor job with its repairs)
    run_id: str = ""         # the run the job writes (matches the estimate to its measured record)
    seconds_cpu: float | None = None
    seconds_gpu: float | None = None

    @property
    def trainings(self) -> float:
        return self.images / max(1, self.standard)

    @property
    def calibration_key(self) -> tuple:
        return (self.model, self.num_classes, tuple(self.image_shape), self.batch_size)


_FACTS: dict = {}


def cell_facts(spec, data_root, cache_dir) -> CellFacts:
    """The sizes of a spec's dataset at its subset size (the decoded cache is read, never written)."""
    from bench.data import subset_bundle
    from bench.datasets import load_dataset

    key = (spec.dataset, json.dumps(spec.dataset_params, sort_keys=True, default=str), spec.n_train,
           spec.n_test, str(data_root), str(cache_dir))
    if key not in _FACTS:
        bundle = load_dataset(spec.dataset, data_root, cache_dir, write_cache=False, **spec.dataset_params)
        bundle = subset_bundle(bundle, spec.n_train, spec.n_test, seed=0)
        _FACTS[key] = CellFacts(len(bundle.train), bundle.num_classes, tuple(bundle.image_shape), len(bundle.test))
    return _FACTS[key]


def job_cost(job, facts: CellFacts) -> JobCost:
    """The training passes one job runs (whether another job shares them is decided by
    :func:`job_costs`)."""
    from bench.cell import train_config_for
    from bench.data import reserve_size
    from bench.defense import CellInfo
    from bench.registry import DEFENSES

    spec = job.spec
    cfg = train_config_for(spec)
    n_victim = facts.n_total - reserve_size(facts.n_total, spec.reserve_fraction)
    _, standard = fit_passes(n_victim, cfg.batch_size, cfg.epochs)
    jc = JobCost(job.kind, job.label, spec.defense, spec.model, facts.image_shape, facts.num_classes,
                 cfg.batch_size, standard=standard, cell=spec.model_id, run_id=spec.run_id,
                 eval_images=evaluation_images(facts))
    if job.kind in ("backdoor", "artifact"):
        jc.phases = [PhaseCost("standard training", math.ceil(standard / max(1, min(cfg.batch_size, n_victim))),
                               standard)]
    else:
        entry = DEFENSES.get(spec.defense)
        declared = getattr(entry.card, "cost_phases", None)
        if declared is None:
            jc.note = "no cost hint"
            return jc
        defense = DEFENSES.create(spec.defense, **spec.defense_params)
        info = CellInfo(facts.num_classes, facts.image_shape, n_victim, spec.model, spec.reserve_fraction,
                        facts.n_total - n_victim)
        declaration = defense.declaration()
        reserve = (info.reserve_images(defense.reserve_fraction(spec.reserve_fraction))
                   if declaration["needs_reserve"] else 0)
        sizes = CellSizes(n_victim, reserve, facts.num_classes, cfg.epochs, cfg.batch_size, spec.budget)
        jc.phases = phase_costs(declared, defense.params, sizes)
        if declaration["starts_from_victim"] and jc.phases:
            # its first phase is the cell's standard training, which the backdoored model stands
            # for: charged (counted in its trainings), not computed (no time)
            first = jc.phases[0]
            jc.phases[0] = dataclasses.replace(first, what=f"{first.what} (charged: the cell's model)", weight=0.0)
    jc.images = sum(p.images for p in jc.phases)
    jc.work = sum(p.work for p in jc.phases)
    return jc


def evaluation_images(facts: CellFacts) -> int:
    """The images every job's evaluation scores once: the clean test set and its triggered copy
    (the test images outside the target class; a clean cell is scored with its attack's trigger)."""
    return facts.n_test + facts.n_test - facts.n_test // max(1, facts.num_classes)


def job_costs(jobs, data_root, cache_dir, salt: str | None = None) -> list[JobCost]:
    """Every job's cost, work shared between jobs counted once (see the module docstring)."""
    from bench.plan import model_cached
    from bench.protocol import salt_id
    from bench.runner import clean_defense_id

    out, models, clean_outputs = [], set(), set()
    sid = salt_id(salt) if salt else ""
    for job in jobs:
        jc = job_cost(job, cell_facts(job.spec, data_root, cache_dir))
        if job.kind in ("backdoor", "artifact"):
            if jc.cell in models:
                jc.note = "model trained by another job"
            elif salt and model_cached(Path(cache_dir), job.spec, salt):
                jc.note = "model already cached"
            models.add(jc.cell)
        elif job.spec.is_clean:
            key = clean_defense_id(job.spec, sid)
            if key in clean_outputs:
                jc.note = "clean-cell output computed by another job"
            clean_outputs.add(key)
        if jc.note and jc.note != "no cost hint":
            jc.images, jc.work, jc.phases = 0, 0.0, []
        out.append(jc)
    return out


# -- calibration --------------------------------------------------------------------------------
@dataclass
class Calibration:
    """A measured rate: ``images_per_s`` of training and ``forward_images_per_s`` of inference of one
    worker on (model, classes, image, batch)."""

    model: str
    image_shape: tuple
    batch_size: int
    steps: int
    seconds: float
    threads: int
    device: str
    forward_images_per_s: float | None = None   # inference; None: not measured
    dtype: str = "fp32"                          # the engine's compute dtype while timed (bf16: --cpu-bf16)

    @property
    def images_per_s(self) -> float:
        return self.steps * self.batch_size / max(1e-9, self.seconds)


def calibrate(model: str, num_classes: int, image_shape, batch_size: int, *, threads: int | None = None,
              device: str = "cpu", min_steps: int = 3, min_seconds: float = 1.0,
              max_seconds: float = 5.0, cpu_bf16: bool = False) -> Calibration:
    """Time a few training steps of ``model`` through the engine (:func:`bench.engine.fit`, one
    step per call: augmentation, channels-last, optimiser) on random images of ``image_shape``,
    after one warm-up step: at least ``min_steps`` steps and ``min_seconds``, fewer than
    ``min_steps`` only when they pass ``max_seconds``; then the engine's inference
    (:func:`bench.engine.predict`) on the same images for about half a second; one worker, with
    ``threads`` torch threads. The batch is the recipe's, capped at 128 x (32 / side)^2 images so
    that large images stay quick (the per-image rate barely depends on it).

    Measured on this two-core machine (cnn_small, one thread): four calibrations in a row gave
    180-268 training images/s, the victims of cifar10-cpu-quick then trained at 237 with two
    workers side by side; timing the workers side by side (processes started together) gave
    143-196, no steadier. The calibration's noise is larger than the side-by-side effect, so one
    worker is timed, and the estimate is read as +-25 %. ``cpu_bf16``: timed under bfloat16
    autocast, as ``run --cpu-bf16`` computes."""
    import torch

    from bench import engine
    from bench.data import Split
    from bench.engine import TrainConfig
    from bench.models import create_model

    c, h, w = image_shape
    bs = max(1, min(int(batch_size), max(4, int(128 * (32 * 32) / (h * w)))))
    previous, previous_threads = engine.runtime(), torch.get_num_threads()
    engine.configure(device=device, progress=False, cpu_amp=cpu_bf16)
    if threads:
        torch.set_num_threads(int(threads))
    try:
        g = torch.Generator().manual_seed(0)
        data = Split(torch.randint(0, 256, (bs, c, h, w), generator=g, dtype=torch.uint8),
                     torch.randint(0, num_classes, (bs,), generator=g))
        torch.manual_seed(0)
        net = create_model(model, num_classes, h, (0.5,) * c, (0.25,) * c)
        cfg = TrainConfig(epochs=1, batch_size=bs, lr=0.01, schedule="constant")

        def sync():
            if engine.device().type == "cuda":
                torch.cuda.synchronize()

        def step():
            engine.fit(net, data, cfg, generator=g, desc="calibration")
            sync()

        step()  # warm-up: kernel selection, allocator
        steps, t0 = 0, time.perf_counter()
        while True:
            step()
            steps += 1
            elapsed = time.perf_counter() - t0
            if (steps >= min_steps and elapsed >= min_seconds) or elapsed >= max_seconds:
                break
        forward, t1 = 0, time.perf_counter()
        while True:
            engine.predict(net, data)
            sync()
            forward += bs
            if time.perf_counter() - t1 >= min(0.5, max_seconds):
                break
        return Calibration(model, (c, h, w), bs, steps, elapsed, torch.get_num_threads(), device,
                           forward_images_per_s=forward / (time.perf_counter() - t1),
                           dtype=engine.compute_dtype())
    finally:
        engine.configure(**vars(previous))
        torch.set_num_threads(previous_threads)


# -- the device check's figures -----------------------------------------------------------------
def load_device_check(path) -> dict | None:
    """The device check's JSON (:mod:`bench.device_check`), or None when there is none."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def gpu_rate(check: dict | None, model: str, image_shape) -> tuple[float | None, str]:
    """The engine's images/s for ``model`` on the checked GPU (scaled by the pixel count from the
    measured image size), and a note; ``(None, why)`` when the check has no figure for it."""
    if not check:
        return None, "no device check"
    measured = (check.get("throughput") or {}).get(model) or {}
    ips = measured.get("engine_img_s")
    if not ips:
        have = ", ".join(sorted((check.get("throughput") or {}))) or "no model"
        return None, f"the device check measured {have}, not {model}"
    side = int(measured.get("image_size") or 32)
    h, w = image_shape[-2:]
    scale = side * side / (h * w)
    note = "" if scale == 1 else f"scaled from {side}x{side} by pixel count"
    return float(ips) * scale, note


# -- the estimate -------------------------------------------------------------------------------
@dataclass
class Estimate:
    suite: str
    jobs: list                       # JobCost
    workers: int
    calibrations: dict               # calibration key -> Calibration
    load: float | None
    cores: int
    check: dict | None
    check_path: str | None
    gpu_notes: set = field(default_factory=set)
    surrogate_attacks: list = field(default_factory=list)

    # -- totals
    def rows(self) -> list[dict]:
        rows = []
        for kind in JOB_KINDS:
            js = [j for j in self.jobs if j.kind == kind]
            rows.append(self._row(kind, js))
        rows.append(self._row("total", self.jobs))
        return rows

    def _row(self, name, js) -> dict:
        def total(attr):
            vals = [getattr(j, attr) for j in js]
            return None if any(v is None for v in vals) else sum(vals)

        return {"kind": name, "jobs": len(js), "trainings": sum(j.trainings for j in js),
                "images": sum(j.images for j in js), "cpu_s": total("seconds_cpu"),
                "gpu_s": total("seconds_gpu")}

    def wall(self, attr: str) -> float | None:
        """Wall seconds of the jobs (:func:`wall_time`) from ``attr`` (``seconds_cpu`` with the CPU
        workers, ``seconds_gpu`` one job at a time); None when a job has no figure."""
        secs = [getattr(j, attr) for j in self.jobs]
        if any(s is None for s in secs):
            return None
        workers = self.workers if attr == "seconds_cpu" else 1
        return wall_time([(j.kind, j.cell, s) for j, s in zip(self.jobs, secs)], workers)

    def to_dict(self) -> dict:
        """What :func:`save` writes: the totals and each job's estimate, keyed by run id, so that the
        report can set them beside the measured times (:mod:`bench.reports.estimate_check`)."""
        return {"suite": self.suite, "created": time.time(), "workers": self.workers, "cores": self.cores,
                "load": self.load, "wall_cpu_s": self.wall("seconds_cpu"), "wall_gpu_s": self.wall("seconds_gpu"),
                "calibrations": [{"model": c.model, "image_shape": list(c.image_shape), "batch_size": c.batch_size,
                                  "threads": c.threads, "images_per_s": c.images_per_s}
                                 for c in self.calibrations.values()],
                "jobs": [{"run_id": j.run_id, "kind": j.kind, "label": j.label, "cell": j.cell,
                          "images": j.images, "cpu_s": j.seconds_cpu, "gpu_s": j.seconds_gpu, "note": j.note}
                         for j in self.jobs]}

    def lines(self) -> list[str]:
        out = [f"cost estimate for suite '{self.suite}' (an estimate, computed before anything runs: "
               f"the suite's budget, the cells' sizes and each defense's declared training phases; "
               f"not a measurement):"]
        gpu = "GPU time" if not self.check else f"{self.check.get('gpu') or 'GPU'} time"
        out.append(f"| {'job kind':11s} | {'jobs':>5s} | {'trainings':>9s} | {'images':>15s} | "
                   f"{'CPU time here':>13s} | {gpu:>26s} |")
        for r in self.rows():
            empty = not r["jobs"]
            out.append(f"| {r['kind']:11s} | {r['jobs']:5d} | {r['trainings']:9.2f} | {r['images']:15,d} | "
                       f"{'-' if empty else format_seconds(r['cpu_s']):>13s} | "
                       f"{'-' if empty else format_seconds(r['gpu_s']):>26s} |")
        cpu_wall, gpu_wall = self.wall("seconds_cpu"), self.wall("seconds_gpu")
        out.append(f"| {'wall time':11s} | {'':5s} | {'':9s} | {'':15s} | {format_seconds(cpu_wall):>13s} | "
                   f"{format_seconds(gpu_wall) if gpu_wall is not None else self._gpu_unknown():>26s} |")
        out.append(f"(time columns: one worker's compute time summed over the jobs; wall time: the CPU's "
                   f"{self.workers} worker(s) in parallel, the GPU one job at a time; never below the longest "
                   f"chain of a model and its longest repair)")
        out += self._standard_lines()
        out += self._defense_lines()
        out += self._calibration_lines()
        out += self._gpu_lines(gpu_wall)
        out += self._not_counted_lines()
        return out

    def _gpu_unknown(self) -> str:
        return "unknown (no device check)" if not self.check else "unknown (see below)"

    def _standard_lines(self) -> list[str]:
        seen, out = set(), []
        for j in self.jobs:
            if j.kind in ("backdoor", "artifact"):
                key = (j.model, j.image_shape, j.standard)
                if key not in seen:
                    seen.add(key)
                    out.append(f"one standard training: {j.model} at {j.image_shape[-2]}x{j.image_shape[-1]}, "
                               f"{j.standard:,d} images (the suite's epochs over the cell's training images "
                               f"less the reserve)")
        return out

    def _defense_lines(self) -> list[str]:
        by_def: dict[str, list] = {}
        for j in self.jobs:
            if j.kind in ("train", "repair"):
                by_def.setdefault(j.defense, []).append(j)
        if not by_def:
            return []
        out = ["per defense (trainings per run where it computes, its declared phases):"]
        for name, js in sorted(by_def.items()):
            computing = [j for j in js if j.images]
            shared = sum(1 for j in js if j.note and j.note != "no cost hint")
            if any(j.note == "no cost hint" for j in js):
                out.append(f"- {name}: {len(js)} job(s), no cost phases declared on its card: counted as 0")
                continue
            if not computing:
                out.append(f"- {name}: {len(js)} job(s), nothing to train" +
                           (f" ({shared} reuse another job's output)" if shared else ""))
                continue
            j = computing[0]
            phases = ", ".join(f"{p.what} {p.images:,d} img" + (f"/{p.steps} steps" if p.steps else "")
                               for p in j.phases)
            per = sum(x.trainings for x in computing) / len(computing)
            out.append(f"- {name}: {len(js)} job(s), {per:.2f} trainings per run"
                       + (f", {shared} reuse another job's output" if shared else "") + f" [{phases}]")
        return out

    def _calibration_lines(self) -> list[str]:
        if not self.calibrations:
            return ["CPU: nothing to calibrate (no job computes)"]
        load = "" if self.load is None else (
            f"; load average {self.load:.2f} on {self.cores} core(s) when it started"
            + (" (other processes were running: the CPU figures are pessimistic)"
               if self.load > 0.5 else ""))
        out = [f"CPU estimate calibrated here: a few training steps and inference batches of each model timed "
               f"through the engine on random images of the suite's size, with the torch threads one of "
               f"{self.workers} worker(s) gets (read it as +-25 %: calibrations in a row vary that much here); "
               f"time = images x phase weight / (training rate x workers), plus each job's evaluation "
               f"(clean and triggered test images) at the inference rate{load}:"]
        for cal in self.calibrations.values():
            fwd = (f", inference {cal.forward_images_per_s:,.0f} images/s" if cal.forward_images_per_s else "")
            out.append(f"- {cal.model} {cal.image_shape[-2]}x{cal.image_shape[-1]}: {cal.steps} steps of "
                       f"{cal.batch_size} with {cal.threads} thread(s) in {cal.dtype} = training "
                       f"{cal.images_per_s:,.0f} images/s per worker{fwd}")
        return out

    def _gpu_lines(self, gpu_wall) -> list[str]:
        if not self.check:
            where = f" at {self.check_path}" if self.check_path else ""
            return [f"GPU: unknown (no device check{where}; `python run_bench.py device-check --data-root DIR "
                    f"--out {DEVICE_CHECK_FILE}` on a GPU machine writes one, docs/running.md)"]
        c = self.check
        out = [f"GPU estimate from the device check {self.check_path} ({c.get('gpu', '?')}, torch "
               f"{c.get('torch', '?')}, {c.get('created', '?')}): the engine's measured images/s"
               + (f"; {', '.join(sorted(n for n in self.gpu_notes if n))}" if any(self.gpu_notes) else "")]
        jpg = c.get("jobs_per_gpu") or {}
        if gpu_wall is not None and jpg.get("speedup"):
            out.append(f"- with --jobs-per-gpu {jpg.get('jobs_per_gpu', 3)}: about "
                       f"{format_seconds(gpu_wall / jpg['speedup'])} "
                       f"(the check measured {jpg['speedup']:.2f}x the throughput of one job at a time on "
                       f"{jpg.get('model', '?')})")
        return out

    def _not_counted_lines(self) -> list[str]:
        out = ["not counted: a defense's own forward-only passes (scoring, feature extraction, the evaluations "
               "of its checkpoints), each job's start-up (loading the data and the model, poisoning: seconds per "
               "job, which dominate a tiny suite), and on the GPU the evaluation"]
        if self.surrogate_attacks:
            out.append(f"not counted: the surrogate/generator training of {', '.join(self.surrogate_attacks)}")
        return out


def wall_time(jobs, workers: int) -> float:
    """Wall seconds of ``jobs`` (``(kind, cell, seconds)`` triples) with ``workers`` busy in parallel,
    but never below the longest chain of dependent jobs (a cell's model, then its longest repair)."""
    chains: dict[str, float] = {}
    longest_repair: dict[str, float] = {}
    chain, total = 0.0, 0.0
    for kind, cell, s in jobs:
        total += s
        if kind in ("backdoor", "artifact"):
            chains[cell] = chains.get(cell, 0.0) + s
        elif kind == "repair":
            longest_repair[cell] = max(longest_repair.get(cell, 0.0), s)
        else:
            chain = max(chain, s)
    for cell, s in chains.items():
        chain = max(chain, s + longest_repair.get(cell, 0.0))
    return max(total / max(1, workers), chain)


def format_seconds(seconds: float | None) -> str:
    """``45s``, ``12m 03s``, ``3h 20m``; ``unknown`` for None."""
    if seconds is None:
        return "unknown"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def estimate(suite: str, jobs, *, data_root, cache_dir, salt: str | None = None, workers: int | None = None,
             threads: int | None = None, device_check: str | Path | None = None,
             calibrate_fn=calibrate, cpu_bf16: bool = False) -> Estimate:
    """The cost of ``jobs`` (see the module docstring). ``workers``/``threads``: the CPU workers
    and the torch threads each gets (default: the scheduler's defaults on the CPU); ``cpu_bf16``:
    the CPU computes under bfloat16 autocast (``run --cpu-bf16``)."""
    import functools

    from bench.dispatch import cpu_cores
    from bench.registry import ATTACKS

    cores = cpu_cores()
    workers = max(1, int(workers or cores))
    threads = threads or max(1, cores // workers)
    costs = job_costs(jobs, data_root, cache_dir, salt)
    check = load_device_check(device_check)
    load = _load()
    cals: dict = {}
    est = Estimate(suite, costs, workers, cals, load, cores, check,
                   str(device_check) if device_check is not None else None)
    for jc in costs:
        if jc.work <= 0 and not jc.eval_images:
            jc.seconds_cpu = 0.0
            jc.seconds_gpu = 0.0 if check else None
            continue
        key = jc.calibration_key
        if key not in cals:
            timed = functools.partial(calibrate_fn, cpu_bf16=True) if cpu_bf16 else calibrate_fn
            cals[key] = timed(jc.model, jc.num_classes, jc.image_shape, jc.batch_size, threads=threads)
        cal = cals[key]
        forward = cal.forward_images_per_s
        jc.seconds_cpu = jc.work / cal.images_per_s + (jc.eval_images / forward if forward else 0.0)
        if jc.work <= 0:
            jc.seconds_gpu = 0.0 if check else None
            continue
        rate, note = gpu_rate(check, jc.model, jc.image_shape)
        est.gpu_notes.add(note)
        jc.seconds_gpu = None if rate is None else jc.work / rate
    est.surrogate_attacks = [a for a in sorted({j.spec.attack for j in jobs}) if _needs_model(ATTACKS, a)]
    return est


def _needs_model(attacks, name: str) -> bool:
    try:
        return bool(getattr(attacks.get(name).card, "needs_model", False))
    except Exception:  # noqa: BLE001 - an unknown name was refused by the validation already
        return False


def dry_run_lines(suite: str, jobs, *, results, data_root, cache_dir, salt: str | None = None,
                  workers: int | None = None, device_check=None, cpu_bf16: bool = False) -> list[str]:
    """The estimate's lines for the dry run; a failure is one line saying why (the dry run goes on).
    ``device_check``: the JSON's path (default ``<results>/device-check.json``)."""
    import traceback

    path = Path(device_check) if device_check else default_device_check(results)
    try:
        est = estimate(suite, jobs, data_root=data_root, cache_dir=cache_dir, salt=salt, workers=workers,
                       device_check=path, cpu_bf16=cpu_bf16)
    except Exception as exc:  # noqa: BLE001 - an estimate must never stop a dry run
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return [f"cost estimate unavailable: {type(exc).__name__}: {exc} ({Path(last.filename).name}:{last.lineno})"]
    lines = est.lines()
    if est.jobs:
        try:
            saved = save(est, results)
            lines.append(f"estimate saved to {saved}: once these runs finish, `report` sets it beside their "
                         f"measured times (report/{ESTIMATE_REPORT})" if saved else
                         f"estimate not saved: an earlier one in {Path(results) / ESTIMATES} already covers "
                         f"these jobs, and `report` compares them with it")
        except OSError as exc:
            lines.append(f"estimate not saved ({exc})")
    return lines


ESTIMATES = "estimates"
ESTIMATE_REPORT = "estimate_vs_measured.md"


def save(est: Estimate, results) -> Path | None:
    """Keep ``est`` in ``<results>/estimates/`` by :func:`store`'s rule (the report matches each
    saved estimate's jobs to the records by run id, so a filtered dry run is compared on the runs
    it covered); the path written, or None when an estimate there already covers these jobs."""
    return store(Path(results) / ESTIMATES, est.to_dict())


def suite_estimates(folder, suite: str) -> list[Path]:
    """A suite's saved estimates in ``folder``: ``<suite>.json`` and ``<suite>.<k>.json``."""
    folder, stem = Path(folder), Path(str(suite)).stem
    first = [folder / f"{stem}.json"] if (folder / f"{stem}.json").is_file() else []
    return first + sorted(folder.glob(f"{stem}.*.json"), key=lambda p: p.name)


def read_estimate(path) -> dict | None:
    """A saved estimate (:meth:`Estimate.to_dict`), or None when the file is unreadable or is not
    one (no ``suite``, no list of ``jobs``)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("jobs"), list) and data.get("suite")
    return data if ok else None


def store(folder, data: dict) -> Path | None:
    """Write a suite's estimate (:meth:`Estimate.to_dict`) beside those already in ``folder``, so
    that a suite run in chunks keeps an estimate of every chunk: an estimate whose jobs this one
    covers is replaced (a dry run of the same jobs again, or of more); when one already covers
    these jobs (a resumed suite's dry run of its remaining jobs), nothing is written (None);
    otherwise (new jobs, e.g. attacks added to the suite) it goes beside as ``<suite>.<k>.json``."""
    from bench.files import atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = {j["run_id"] for j in data.get("jobs") or []}
    covered = []
    for path in suite_estimates(folder, data["suite"]):
        saved = read_estimate(path)
        if saved is None:
            continue
        old = {j.get("run_id") for j in saved["jobs"]}
        if old <= ids:
            covered.append(path)
        elif ids <= old:
            return None
    stem = Path(str(data["suite"])).stem
    if covered:
        target = covered[0]
        for path in covered[1:]:
            path.unlink()
    elif not (folder / f"{stem}.json").exists():
        target = folder / f"{stem}.json"
    else:
        k = 2
        while (folder / f"{stem}.{k}.json").exists():
            k += 1
        target = folder / f"{stem}.{k}.json"
    atomic_write_text(target, json.dumps(data, indent=1))
    return target


def default_device_check(results) -> Path:
    """Where the dry run looks for the device check's JSON: ``<results>/device-check.json``."""
    return Path(results) / DEVICE_CHECK_FILE
