"""``tradeoff``: what a CPU regime costs and buys -- training images x epochs x model -> clean ACC,
BadNet ASR and minutes, measured on this machine.

Each point is one BadNet victim (5 %, target 1, the suite's reserve carved out first, seed 0)
trained with the CPU suites' recipe (one-cycle SGD, lr 0.05, batch 128) and evaluated on the full
test set. The points run as ordinary one-run suites written under ``<results>/tradeoff/``, so they
are cached, resumable and recorded like any run, and a point equal to a suite's victim (e.g. 50,000
images x 12 epochs of ``cnn_small``, the victim of ``cifar10-cpu-paper``) reuses that suite's
trained model when it shares the results folder. The table gives wall minutes (what a person
waits, inflated by anything else running) and CPU minutes / threads (the cost on idle cores);
models too slow to train here get their throughput measured and their time extrapolated, marked
as such and without accuracy. With ``--cpu-bf16`` the points train under bfloat16 autocast (as
``run --cpu-bf16``; refused on a CPU without native bf16) and the extrapolations time bf16 steps;
the ``dtype`` column says which, from each record's ``compute_dtype``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

DEFAULT_POINTS = ("cnn_small:10000:12", "cnn_small:25000:12", "cnn_small:50000:6", "cnn_small:50000:12",
                  "cnn_tiny:50000:12", "cnn_small:50000:20")
DEFAULT_EXTRAPOLATE = ("resnet18:50000:12", "mobilenetv2:50000:12")

SUITE = """# written by `run_bench.py tradeoff`: one point of the CPU trade-off probe
description = "trade-off probe: {model}, {n_train} images, {epochs} epochs, BadNet 5 %"
datasets = ["{dataset}"]
models = ["{model}"]
attacks = ["badnet"]
ratios = [0.05]
seeds = [0]
defenses = ["none"]
target = 1
reserve_fraction = 0.05

[budget]
epochs = {epochs}
scale = 0.25
min_steps = 300
{n_train_line}

[train]
batch_size = 128
lr = 0.05
schedule = "onecycle"
"""


def parse_point(text: str) -> tuple[str, int, int]:
    try:
        model, n_train, epochs = text.split(":")
        return model, int(n_train), int(epochs)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a point is MODEL:N_TRAIN:EPOCHS (e.g. cnn_small:50000:12), got '{text}'")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="results", help="results folder (share it with the suite whose "
                   "victims should be reused; default results/)")
    p.add_argument("--data-root", default=None, help="where CIFAR-10 lives (default BENCH_DATA_ROOT or data/)")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--point", dest="points", type=parse_point, action="append", default=None,
                   metavar="MODEL:N:EPOCHS", help=f"a point to train (repeatable; default {' '.join(DEFAULT_POINTS)})")
    p.add_argument("--extrapolate", dest="extrapolate", type=parse_point, action="append", default=None,
                   metavar="MODEL:N:EPOCHS", help="a point whose time is extrapolated from measured steps, "
                   f"not trained (default {' '.join(DEFAULT_EXTRAPOLATE)})")
    p.add_argument("--cpu-bf16", action="store_true", help="train (and time the extrapolated points) under "
                   "bfloat16 autocast, as `run --cpu-bf16`; refused on a CPU without native bf16")
    p.add_argument("--table-only", action="store_true", help="print the table of what is recorded, train nothing")


def _suite_path(results: Path, dataset: str, model: str, n_train: int, epochs: int, full_size: int) -> Path:
    """The point's one-run suite. A point of the whole training set (``n_train >= full_size``)
    leaves ``n_train`` out, as the suites that train on all of it do, so that its cell (and its
    victim) is theirs: a subset of every image is drawn, and named, differently from no subset."""
    path = results / "tradeoff" / f"tradeoff-{dataset}-{model}-{n_train}x{epochs}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = "" if n_train >= full_size else f"n_train = {n_train}"
    path.write_text(SUITE.format(dataset=dataset, model=model, n_train=n_train, epochs=epochs, n_train_line=line))
    return path


def measured_rows(results: Path) -> pd.DataFrame:
    """One row per recorded trade-off point (the probe's suites and any suite's matching victim)."""
    from bench.store import Store

    rows = []
    for rec in Store(results).iter_records():
        if rec.get("status") != "ok" or rec.get("defense") != "none" or rec.get("attack") != "badnet" \
                or not rec.get("poison_ratio") or rec.get("backdoor_cache_hit"):
            continue   # a cache hit re-used a victim trained (and timed) by another record
        spec = rec.get("spec", {})
        threads = rec.get("threads") or 1   # torch threads of the worker (records before it: 1 per worker)
        rows.append({"model": rec["model"], "train images": rec.get("n_train"),
                     "epochs": (spec.get("train") or {}).get("epochs"), "dtype": rec.get("compute_dtype") or "fp32",
                     "clean ACC %": 100 * rec["acc"], "BadNet ASR %": 100 * rec["asr"],
                     "wall min": rec["wall_s"] / 60, "CPU min / thread": (rec.get("cpu_s") or 0) / 60 / threads,
                     "how": "trained", "suite": rec.get("suite")})
    return pd.DataFrame(rows)


def extrapolated_row(dataset: str, data_root, model: str, n_train: int, epochs: int, *,
                     cpu_bf16: bool = False) -> dict:
    """Minutes for ``epochs`` passes over ``n_train`` images from a few timed training steps
    (under bfloat16 autocast with ``cpu_bf16``)."""
    import torch

    from bench import engine
    from bench.datasets import load_dataset
    from bench.models import create_model
    from bench.perf import model_only_seconds

    bundle = load_dataset(dataset, data_root)
    net = create_model(model, bundle.num_classes, bundle.train.x.shape[-1])
    cpu = torch.device("cpu")
    engine.configure(device=cpu, progress=False, cpu_amp=cpu_bf16)
    per_image = model_only_seconds(net, bundle.train, 128, cpu, steps=3) / len(bundle.train)
    return {"model": model, "train images": n_train, "epochs": epochs, "dtype": engine.compute_dtype(cpu),
            "clean ACC %": None,
            "BadNet ASR %": None, "wall min": per_image * n_train * epochs / 60, "CPU min / thread": None,
            "how": f"extrapolated ({1 / per_image:.0f} img/s measured)", "suite": None}


def main(args) -> int:
    from bench.reports.tables import markdown_table
    from bench.scheduler import run_suite

    results = Path(args.results)
    points = args.points or [parse_point(p) for p in DEFAULT_POINTS]
    if not args.table_only:
        from bench.datasets import load_dataset
        from bench.scheduler import EXIT_INVALID

        try:   # the training set's size; a missing or unknown dataset is said before any compute
            full_size = len(load_dataset(args.dataset, args.data_root).train)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            print(f"tradeoff: {exc}", file=sys.stderr)
            return EXIT_INVALID
        for model, n_train, epochs in points:
            t0 = time.time()
            out = run_suite(_suite_path(results, args.dataset, model, n_train, epochs, full_size), results=results,
                            data_root=args.data_root, workers=1, progress=False, cpu_bf16=args.cpu_bf16)
            if out.problems:   # refused before any compute (bad input): so would every other point be,
                # with the same exit status as `run`
                return out.exit_code
            print(f"tradeoff: {model} {n_train} x {epochs}: exit {out.exit_code} in {time.time() - t0:.0f}s",
                  flush=True)
    table = measured_rows(results)
    extra = [extrapolated_row(args.dataset, args.data_root, *p, cpu_bf16=args.cpu_bf16)
             for p in (args.extrapolate or [parse_point(p) for p in DEFAULT_EXTRAPOLATE])] if not args.table_only else []
    table = pd.concat([table, pd.DataFrame(extra)], ignore_index=True) if extra else table
    if table.empty:
        print("tradeoff: nothing recorded yet", file=sys.stderr)
        return 1
    table = table.sort_values(["how", "model", "train images", "epochs", "dtype"])
    out_path = results / "tradeoff" / "tradeoff.md"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    text = markdown_table(table)
    out_path.write_text(text)
    print(text, end="")
    print(f"table: {out_path}")
    return 0
