"""The device check: what this suite does on a GPU, measured in one command (a few minutes).

    python -m bench.device_check --data-root /data --out results/device-check.json
    python run_bench.py device-check --data-root /data --out results/device-check.json

It needs a CUDA GPU and CIFAR-10 under ``--data-root`` (``cifar-10-batches-py/``), and refuses to
run without either (exit code 2, nothing written): a check that skipped would look like a pass.
Four parts (``--parts``, all by default), each timed, each written into the JSON as soon as it is
done (a later failure or a kill keeps the earlier parts):

* ``throughput``: images/s of one training epoch through the engine, on CIFAR-10 held in GPU
  memory, against the usual DataLoader pipeline (PIL images, torchvision transforms, workers), for
  ``cnn_small`` and ``resnet18`` (:func:`bench.perf.compare_pipelines`, the ``perf`` command's
  measurement);
* ``parity``: the same model trained a few hundred steps from the same weights and data order in
  float32 (NCHW, TF32 off) and under the engine's CUDA settings (bf16 autocast, channels-last),
  then both test accuracies; their gap must stay within ``--parity-tolerance``;
* ``jobs_per_gpu``: a tiny suite's backdoor job run alone, then three such jobs side by side on
  the GPU through the scheduler (``--jobs-per-gpu 3``): the wall times and the throughput gain
  (3 x one job's wall / the three jobs' wall);
* ``table2_cell``: one CIFAR-10 cell of ``meca-table2`` end to end through the scheduler (BadNet,
  ResNet-18, the suite's 100-epoch recipe, no defense and ``--table2-defense``), with its wall
  time and metrics; it is not started when the ResNet-18 throughput measured first says it would
  pass ``--time-budget`` (480 s; the error says so, and ``--parts table2_cell`` runs it alone).

The JSON (``schema`` ``bench.device_check/1``) also holds the GPU's name, the torch, CUDA and
cuDNN versions, and the errors of parts that failed (the exit code is then 1, as it is when the
parity gap is too large). ``run --dry-run`` reads it (``<results>/device-check.json`` or
``--device-check``) for its GPU time estimate (:mod:`bench.estimate`). docs/running.md says how to
run it on a lent GPU machine.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import platform
import socket
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = "bench.device_check/1"
PARTS = ("throughput", "parity", "jobs_per_gpu", "table2_cell")
THROUGHPUT_MODELS = ("cnn_small", "resnet18")
TABLE2_SUITE = "meca-table2"
EXIT_NO_DEVICE = 2
EXIT_FAILED = 1


class DeviceCheckError(RuntimeError):
    """The check cannot run here (no GPU, no data): said before anything is measured."""


# -- refusing early -----------------------------------------------------------------------------
def require_gpu() -> str:
    """The CUDA device's name; :class:`DeviceCheckError` when there is none."""
    import torch

    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only build)"
        raise DeviceCheckError(
            "device-check needs a CUDA GPU and found none: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built with CUDA {built}). This check measures the GPU; it does "
            "not skip. Run it on a GPU machine (docs/running.md). Nothing was measured, no JSON was written.")
    return torch.cuda.get_device_name(0)


def require_cifar10(data_root) -> None:
    from bench.datasets import check_dataset

    if data_root is None:
        raise DeviceCheckError("device-check needs --data-root: the folder holding cifar-10-batches-py/")
    try:
        check_dataset("cifar10", data_root)
    except Exception as exc:  # noqa: BLE001 - DataNotFoundError and friends, said plainly
        raise DeviceCheckError(f"device-check needs CIFAR-10 under --data-root: {exc}") from exc


# -- the report ---------------------------------------------------------------------------------
def environment(gpu: str | None = None) -> dict:
    """What the numbers were measured on."""
    import torch

    env = {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "host": socket.gethostname(), "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cudnn": None, "gpu": gpu, "gpu_count": 0, "gpu_memory_gb": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=gpu or torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                   gpu_memory_gb=round(props.total_memory / 2 ** 30, 1),
                   cudnn=torch.backends.cudnn.version())
    return env


def new_report(env: dict, parts, options: dict) -> dict:
    return {**env, "parts": list(parts), "options": dict(options), "throughput": {}, "parity": None,
            "jobs_per_gpu": None, "table2_cell": None, "part_seconds": {}, "errors": {}, "wall_s": 0.0,
            "ok": None}


def finish(report: dict) -> dict:
    """Set ``ok``: every requested part measured without error, and the parity within tolerance."""
    parity = report.get("parity") or {}
    missing = [p for p in report.get("parts", []) if not report.get(p)]
    report["ok"] = not report.get("errors") and not missing and parity.get("ok", True) is not False
    return report


def write_report(path, report: dict) -> Path:
    """The report as JSON, atomically (a reader never sees half a file)."""
    from bench.files import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True, default=_plain) + "\n")
    return path


def _plain(v):
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "item"):
        return v.item()
    return str(v)


def summary_lines(report: dict) -> list[str]:
    """The report in a few lines (printed at the end of the check)."""
    out = [f"device check on {report.get('gpu') or '?'} (torch {report.get('torch')}, CUDA {report.get('cuda')}, "
           f"cuDNN {report.get('cudnn')}): {'OK' if report.get('ok') else 'NOT OK'} in {report.get('wall_s', 0):.0f}s"]
    d = report.get("data")
    if d:
        out.append(f"  data: {d['dataset']}, {d['n_train']:,d} training and {d['n_test']:,d} test images")
    for model, t in sorted((report.get("throughput") or {}).items()):
        out.append(f"  throughput {model:10s}: engine {t['engine_img_s']:,.0f} img/s, naive DataLoader "
                   f"{t['naive_img_s']:,.0f} img/s: {t['engine_img_s'] / t['naive_img_s']:.2f}x "
                   f"({t['n_train']:,d} images {t['image_size']}x{t['image_size']}, batch {t['batch_size']})")
    p = report.get("parity")
    if p:
        out.append(f"  parity {p['model']}, {p['steps']} steps: float32 acc {p['float32']['acc']:.4f}, bf16 + "
                   f"channels-last acc {p['bf16_channels_last']['acc']:.4f}, gap {p['acc_gap']:+.4f} "
                   f"(tolerance {p['tolerance']}): {'ok' if p['ok'] else 'TOO LARGE'}")
    j = report.get("jobs_per_gpu")
    if j:
        out.append(f"  jobs per GPU ({j['model']}, {j['n_train']:,d} images x {j['epochs']} epochs): one job "
                   f"{j['one_job_wall_s']:.1f}s, {j['jobs_per_gpu']} side by side {j['side_by_side_wall_s']:.1f}s: "
                   f"{j['speedup']:.2f}x the throughput")
    c = report.get("table2_cell")
    if c:
        runs = "; ".join(f"{r['defense']} {r['status']} acc {_num(r.get('acc'))} asr {_num(r.get('asr'))} "
                         f"{r.get('wall_s', 0):.0f}s" for r in c["runs"])
        out.append(f"  Table II cell {c['dataset']}/{c['model']}/{c['attack']}: {c['wall_s']:.0f}s wall ({runs})")
    for part, err in (report.get("errors") or {}).items():
        out.append(f"  FAILED {part}: {err}")
    return out


def _num(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


# -- the parts ----------------------------------------------------------------------------------
def _cifar10(data_root, cache_dir):
    from bench.datasets import load_dataset

    return load_dataset("cifar10", data_root, cache_dir)


def _stats(x) -> tuple[list, list]:
    xf = x.float().div(255)
    return xf.mean((0, 2, 3)).tolist(), xf.std((0, 2, 3)).clamp_min(1e-3).tolist()


def measure_throughput(bundle, models=THROUGHPUT_MODELS, *, batch_size: int = 128, workers: int = 8,
                       repeats: int = 1) -> dict:
    """Engine vs naive pipeline, one epoch each, per model (:func:`bench.perf.compare_pipelines`);
    the engine's images are already on the GPU."""
    import torch

    from bench import engine
    from bench.data import Split
    from bench.perf import compare_pipelines, make_models

    dev = engine.device()
    train = bundle.train
    mean, std = _stats(train.x)
    resident = Split(train.x.to(dev), train.y.to(dev))
    out = {}
    for name in models:
        model, naive = make_models(name, bundle.num_classes, train.x.shape[-1], mean, std, seed=0)
        m = compare_pipelines(model, naive, train, mean, std, batch_size=batch_size, workers=workers,
                              repeats=repeats, seed=0, dev=dev, engine_data=resident)
        out[name] = {"engine_img_s": m["engine_img_s"], "naive_img_s": m["naive_img_s"],
                     "speedup": m["engine_img_s"] / m["naive_img_s"], "model_img_s": m["model_img_s"],
                     "engine_s": m["engine_s"], "naive_s": m["naive_s"], "n_train": m["n"],
                     "image_size": int(train.x.shape[-1]), "batch_size": batch_size, "workers": workers,
                     "cuda_peak_mb_engine": m["cuda_engine_mb"], "cuda_peak_mb_naive": m["cuda_naive_mb"],
                     "data_on_gpu": True, "amp_bf16": engine.runtime().amp,
                     "channels_last": engine.runtime().channels_last}
        del model, naive
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


def measure_parity(bundle, model: str = "resnet18", *, steps: int = 400, batch_size: int = 128,
                   lr: float = 0.1, tolerance: float = 0.03, seed: int = 0) -> dict:
    """Train ``model`` ``steps`` steps in float32 (NCHW, TF32 off) and in bf16 autocast +
    channels-last, from the same weights and the same data order; both test accuracies and the gap.

    The tolerance (3 points of accuracy by default) is what separates a broken reduced-precision
    path (accuracy at chance, or far behind) from the run-to-run spread of two numerically
    different but healthy trainings of a few hundred steps (about a point)."""
    import torch

    from bench import engine
    from bench.data import Split
    from bench.engine import TrainConfig
    from bench.models import create_model

    dev = engine.device()
    train = Split(bundle.train.x.to(dev), bundle.train.y.to(dev))
    test = bundle.test
    mean, std = _stats(bundle.train.x)
    per_epoch = math.ceil(len(train) / batch_size)
    cfg = TrainConfig(epochs=steps / per_epoch, batch_size=batch_size, lr=lr, schedule="onecycle")
    previous = engine.runtime()
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    out = {"model": model, "steps": steps, "batch_size": batch_size, "lr": lr, "n_train": len(train),
           "n_test": len(test), "tolerance": tolerance}
    try:
        for label, amp, cl in (("float32", False, False), ("bf16_channels_last", True, True)):
            engine.configure(amp=amp, channels_last=cl)
            # float32 means float32: TF32 off; the bf16 leg keeps torch's settings, as the engine does
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32 if amp else (False, False)
            torch.manual_seed(seed)
            net = create_model(model, bundle.num_classes, train.x.shape[-1], mean, std)
            t0 = time.perf_counter()
            result = engine.fit(net, train, cfg, generator=torch.Generator().manual_seed(seed), desc=f"parity {label}")
            if dev.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            acc = float((engine.predict(net, test.x) == test.y.cpu()).float().mean())
            out[label] = {"acc": acc, "final_loss": result.losses[-1], "steps": result.steps, "seconds": seconds,
                          "amp_bf16": amp, "channels_last": cl,
                          "tf32": bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)}
            del net
    finally:
        engine.configure(**vars(previous))
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    out["acc_gap"] = out["bf16_channels_last"]["acc"] - out["float32"]["acc"]
    out["ok"] = abs(out["acc_gap"]) <= tolerance
    return out


JOBS_SUITE = """\
# written by bench.device_check: the jobs_per_gpu part (one backdoor job per seed)
description = "device check: backdoor jobs of {model} side by side on one GPU"
datasets = ["cifar10"]
models = ["{model}"]
attacks = ["badnet"]
ratios = [0.05]
seeds = [{seeds}]
defenses = ["none"]
target = 1

[budget]
epochs = {epochs}
n_train = {n_train}
n_test = 2000

[train]
batch_size = 128
lr = 0.05
schedule = "onecycle"
"""


def _run(suite, results, *, data_root, cache_dir, device: str = "cuda", **kw) -> tuple[float, object, str]:
    from bench.scheduler import run_suite

    buf = io.StringIO()
    t0 = time.perf_counter()
    outcome = run_suite(suite, results=results, data_root=data_root, cache_dir=cache_dir, device=device,
                        progress=False, out=buf, **kw)
    wall = time.perf_counter() - t0
    if outcome.exit_code != 0:
        raise RuntimeError(f"the scheduler exited with {outcome.exit_code}: "
                           + " | ".join(ln for ln in buf.getvalue().splitlines()[-6:]))
    return wall, outcome, buf.getvalue()


def measure_jobs_per_gpu(data_root, workdir: Path, cache_dir, *, model: str = "cnn_small", jobs: int = 3,
                         n_train: int = 20000, epochs: float = 10, device: str = "cuda") -> dict:
    """One backdoor job alone, then ``jobs`` of them side by side (``--jobs-per-gpu jobs``), each
    in a fresh results folder (a fresh salt: no model comes from the cache)."""
    seeds = ", ".join(str(s) for s in range(jobs))
    suite = workdir / "jobs-per-gpu.toml"
    suite.write_text(JOBS_SUITE.format(model=model, seeds=seeds, epochs=epochs, n_train=n_train))
    one, o1, _ = _run(suite, workdir / "one-job", data_root=data_root, cache_dir=cache_dir, seeds="0",
                      workers=1, jobs_per_gpu=1, device=device)
    many, o3, _ = _run(suite, workdir / "side-by-side", data_root=data_root, cache_dir=cache_dir,
                       workers=jobs, jobs_per_gpu=jobs, device=device)
    return {"model": model, "jobs_per_gpu": jobs, "n_train": n_train, "epochs": epochs,
            "one_job_wall_s": one, "side_by_side_wall_s": many, "speedup": jobs * one / many,
            "one_job_run_s": [s["wall_s"] for s in o1.summaries],
            "side_by_side_run_s": [s["wall_s"] for s in o3.summaries],
            "note": "wall times include the scheduler's start-up; the single job runs in the scheduler's "
                    "process, the side-by-side jobs in worker processes that start CUDA each"}


def measure_table2_cell(data_root, workdir: Path, cache_dir, *, defense: str = "fine_tuning",
                        suite=TABLE2_SUITE, device: str = "cuda") -> dict:
    """One CIFAR-10 cell of ``meca-table2`` (``suite``) end to end: BadNet on ResNet-18 with the
    suite's recipe, its no-defense run and ``defense``."""
    wall, outcome, text = _run(suite, workdir / "table2", data_root=data_root, cache_dir=cache_dir,
                               datasets="cifar10", attacks="badnet", defenses=f"none,{defense}", workers=1,
                               device=device)
    runs = []
    for s in outcome.summaries:
        label = s.get("label", "")
        runs.append({"label": label, "defense": label.split("/")[3] if label.count("/") >= 4 else s.get("kind"),
                     "kind": s.get("kind"), "status": s.get("status"), "acc": s.get("acc"), "asr": s.get("asr"),
                     "der": s.get("der"), "wall_s": s.get("wall_s"), "epochs_equiv": s.get("epochs_equiv"),
                     "error": s.get("error")})
    return {"suite": TABLE2_SUITE, "dataset": "cifar10", "model": "resnet18", "attack": "badnet",
            "defenses": ["none", defense], "wall_s": wall, "runs": runs}


def table2_images(data_root, cache_dir, suite=TABLE2_SUITE) -> int:
    """Images of the Table II cell's standard training (most of its wall time), counted as the
    dry run's estimate counts them (:mod:`bench.estimate`)."""
    from bench.estimate import cell_facts, job_cost
    from bench.plan import Job
    from bench.suite import apply_filters, expand, load_suite

    spec = apply_filters(expand(load_suite(suite)), datasets="cifar10", attacks="badnet", defenses="none")[0]
    return job_cost(Job("backdoor", spec), cell_facts(spec, data_root, cache_dir)).images


def over_budget(report: dict, images: int, elapsed: float, budget: float) -> str | None:
    """Why the Table II cell is not started (its training predicted from the measured ResNet-18
    throughput would pass ``budget`` seconds), or None."""
    t = (report.get("throughput") or {}).get("resnet18")
    if not budget or not t or not t.get("engine_img_s"):
        return None
    predicted = images / t["engine_img_s"]
    if elapsed + 1.1 * predicted + 30 <= budget:
        return None
    return (f"not run: its {images:,d} training images at the measured {t['engine_img_s']:,.0f} img/s of resnet18 "
            f"take about {predicted:.0f}s, past the --time-budget of {budget:.0f}s ({elapsed:.0f}s used); rerun "
            f"with --parts table2_cell")


# -- the command --------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="the folder holding cifar-10-batches-py/ (required)")
    p.add_argument("--out", default="results/device-check.json", help="the JSON written (default %(default)s)")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated parts to run (default all: {','.join(PARTS)})")
    p.add_argument("--workdir", default=None, help="scratch folder for the scheduler parts (default: a "
                   "temporary folder, removed afterwards)")
    p.add_argument("--cache-dir", default=None, help="decoded-dataset cache (default: inside the workdir)")
    p.add_argument("--loader-workers", type=int, default=8, help="DataLoader workers of the naive pipeline")
    p.add_argument("--parity-model", default="resnet18")
    p.add_argument("--parity-steps", type=int, default=400)
    p.add_argument("--parity-tolerance", type=float, default=0.03,
                   help="largest accuracy gap between float32 and bf16 + channels-last (default 0.03)")
    p.add_argument("--jobs-model", default="cnn_small")
    p.add_argument("--jobs-per-gpu", type=int, default=3)
    p.add_argument("--jobs-n-train", type=int, default=20000,
                   help="training images of each jobs_per_gpu job (default %(default)s; at most the "
                        "training set's size)")
    p.add_argument("--table2-defense", default="fine_tuning", help="the defense run on the Table II cell")
    p.add_argument("--time-budget", type=float, default=480,
                   help="seconds the whole check may take (default 480): the Table II cell is not started "
                        "when the measured throughput says it would pass them (0: no limit)")


def main(args: argparse.Namespace) -> int:
    parts = [p.strip() for p in str(args.parts).split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"device-check: unknown part(s) {unknown}; known: {', '.join(PARTS)}", file=sys.stderr)
        return EXIT_NO_DEVICE
    try:
        gpu = require_gpu()
        require_cifar10(args.data_root)
    except DeviceCheckError as exc:
        print(f"device-check: FAILED: {exc}", file=sys.stderr)
        return EXIT_NO_DEVICE
    from bench import engine

    engine.configure(device="cuda")
    out = Path(args.out)
    options = {k: v for k, v in vars(args).items() if k != "func"}
    report = new_report(environment(gpu), parts, options)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="device-check-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        cache_dir = Path(args.cache_dir) if args.cache_dir else workdir / "cache"
        bundle = _cifar10(args.data_root, cache_dir)
        # the data measured on (a subset of CIFAR-10 shows here: the timings scale with it)
        report["data"] = {"dataset": "cifar10", "n_train": len(bundle.train), "n_test": len(bundle.test)}
        for part in parts:
            t0 = time.perf_counter()
            print(f"device-check: {part} ...", flush=True)
            try:
                if part == "throughput":
                    report["throughput"] = measure_throughput(bundle, workers=args.loader_workers)
                elif part == "parity":
                    report["parity"] = measure_parity(bundle, args.parity_model, steps=args.parity_steps,
                                                      tolerance=args.parity_tolerance)
                elif part == "jobs_per_gpu":
                    report["jobs_per_gpu"] = measure_jobs_per_gpu(args.data_root, workdir, cache_dir,
                                                                  model=args.jobs_model, jobs=args.jobs_per_gpu,
                                                                  n_train=min(args.jobs_n_train, len(bundle.train)))
                elif part == "table2_cell":
                    why = over_budget(report, table2_images(args.data_root, cache_dir),
                                      time.perf_counter() - t_start, args.time_budget)
                    if why:
                        raise TimeoutError(why)
                    report["table2_cell"] = measure_table2_cell(args.data_root, workdir, cache_dir,
                                                                defense=args.table2_defense)
            except Exception as exc:  # noqa: BLE001 - one failed part must not hide the others
                report["errors"][part] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            report["part_seconds"][part] = time.perf_counter() - t0
            report["wall_s"] = time.perf_counter() - t_start
            write_report(out, finish(report))
            print(f"device-check: {part} done in {report['part_seconds'][part]:.0f}s -> {out}", flush=True)
    for line in summary_lines(report):
        print(line)
    return 0 if report["ok"] else EXIT_FAILED


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.device_check", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
