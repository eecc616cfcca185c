"""``perf``: one epoch of training through the engine against the usual DataLoader pipeline.

Both sides train the same network (same initial weights), with the same optimizer (SGD, momentum
0.9, Nesterov, weight decay 5e-4, constant learning rate), batch size, augmentation (random crop
with zero padding + horizontal flip) and data subset, one after the other in one process:

* **engine**: :func:`bench.engine.fit` on the in-memory uint8 tensors, batches gathered by index
  and augmented on the device in one batched operation;
* **naive**: what most backdoor code bases do -- a ``torch.utils.data.Dataset`` that holds the
  images as numpy arrays and returns a PIL image per sample (like ``torchvision.datasets.CIFAR10``),
  ``transforms.Compose([RandomCrop(size, padding), RandomHorizontalFlip(), ToTensor(),
  Normalize(mean, std)])``, ``DataLoader(shuffle=True, num_workers=W)`` and a plain loop. The
  network's own normalisation is switched off (mean 0, std 1) there, since ``Normalize`` does it.

Both use bf16 autocast and channels-last on CUDA, so only the data path differs. Printed: images/s
of each (median over ``--repeats`` alternated epochs), their ratio, and peak memory (this process's
peak RSS per side, reset between sides through /proc/self/clear_refs where Linux allows it; the
largest DataLoader worker's ``ru_maxrss``; ``torch.cuda.max_memory_allocated`` on CUDA). Two
diagnostic lines explain the ratio: ``model`` (training steps on a ready batch: the ceiling of both
sides) and ``data`` (producing the augmented batches alone, no model). The end-to-end gain is
bounded by the data path's share of an epoch: where the network's forward/backward dominates (a
CNN on a 2-core CPU) both sides approach the ``model`` line and the ratio approaches 1.

The timed region of each side is the epoch itself (the DataLoader's worker start-up included, as it
is paid every epoch with non-persistent workers); dataset loading, model creation and a warm-up of
the kernels (so the side that runs first is not penalised) are not timed. Tests never assert
timings.
"""
from __future__ import annotations

import argparse
import copy
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bench import engine
from bench.data import subset_bundle
from bench.engine import TrainConfig

LR = 0.05


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", help="registered dataset (default digits; cifar10 "
                   "needs --data-root)")
    p.add_argument("--data-root", default=None, help="data root (default BENCH_DATA_ROOT or ./data)")
    p.add_argument("--cache-dir", default=None, help="decoded-dataset cache (default BENCH_CACHE_DIR)")
    p.add_argument("--model", default="cnn_small", help="registered model (default cnn_small)")
    p.add_argument("--n-train", type=int, default=None, help="train on a class-balanced subset of N images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the naive pipeline")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the main process "
                   "(default: torch's default)")
    p.add_argument("--repeats", type=int, default=1, help="epochs per side, alternated; the median "
                   "is reported (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layouts", action="store_true", help="instead of engine vs naive: the model's "
                   "training and scoring steps in NCHW against channels-last, with bf16 autocast on a CPU "
                   "that has it natively (run --cpu-bf16), scoring under no_grad against inference_mode, "
                   "and (with --compile) torch.compile, as ratios")
    p.add_argument("--compile", action="store_true", help="with --layouts: also time torch.compile "
                   "(slow to warm up on a CPU)")


def _rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``5`` into /proc/self/clear_refs); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """Peak RSS since the last reset (VmHWM), else since the process started (ru_maxrss)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return _rss_mb(resource.RUSAGE_SELF)


def _cuda_peak_mb(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    torch.cuda.synchronize(dev)
    return torch.cuda.max_memory_allocated(dev) / 2 ** 20


def _reset_cuda_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


class PILDataset(torch.utils.data.Dataset):
    """Images kept as HWC numpy arrays, returned as PIL images through ``transform`` (the
    ``torchvision.datasets.CIFAR10`` way)."""

    def __init__(self, x_u8: torch.Tensor, y: torch.Tensor, transform):
        self.data = x_u8.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def naive_epoch(model: torch.nn.Module, x_u8: torch.Tensor, y: torch.Tensor, mean, std, *,
                batch_size: int, workers: int, padding: int, dev: torch.device, seed: int) -> int:
    """One epoch of the usual torchvision pipeline and training loop; returns the images seen."""
    from torchvision import transforms as T

    size = x_u8.shape[-1]
    tf = T.Compose([T.RandomCrop(size, padding=padding), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(
        PILDataset(x_u8, y, tf), batch_size=batch_size, shuffle=True, num_workers=workers,
        pin_memory=dev.type == "cuda", generator=torch.Generator().manual_seed(seed))
    model = engine.prepare_model(model, dev)  # on the device and in the layout the engine uses
    opt = engine.make_optimizer(model.parameters(), _train_config(batch_size))
    model.train()
    seen = 0
    for xb, yb in loader:
        xb = xb.to(dev, non_blocking=True)
        yb = yb.to(dev, non_blocking=True)
        xb = engine.to_model_layout(xb)
        with engine._autocast(dev):
            loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(yb)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return seen


def _train_config(batch_size: int) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=batch_size, optimizer="sgd", lr=LR, momentum=0.9,
                       nesterov=True, weight_decay=5e-4, schedule="constant", augment=True)


def main(args) -> int:
    from bench.datasets import load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    engine.configure(device=args.device)
    dev = engine.device()
    bundle = load_dataset(args.dataset, args.data_root, args.cache_dir)
    bundle = subset_bundle(bundle, args.n_train, None, seed=args.seed)
    train = bundle.train
    n, size = len(train), train.x.shape[-1]
    mean = train.x.float().div(255).mean((0, 2, 3)).tolist()
    std = train.x.float().div(255).std((0, 2, 3)).clamp_min(1e-3).tolist()
    padding = engine.default_padding(size)
    model, naive_model = make_models(args.model, bundle.num_classes, size, mean, std, args.seed)
    if args.repeats < 1 or args.batch_size < 1 or args.workers < 0:
        print("perf: --repeats and --batch-size must be >= 1, --workers >= 0", file=sys.stderr)
        return 2
    if args.layouts:
        return layouts(model, train, args)
    print(f"perf: dataset={args.dataset} model={args.model} n_train={n} image={tuple(train.x.shape[1:])} "
          f"batch_size={args.batch_size} device={dev} torch_threads={torch.get_num_threads()} "
          f"workers={args.workers} repeats={args.repeats}", flush=True)
    try:
        m = compare_pipelines(model, naive_model, train, mean, std, batch_size=args.batch_size,
                              workers=args.workers, repeats=args.repeats, seed=args.seed, dev=dev)
    except PipelineMismatch as exc:
        print(f"perf: {exc}", file=sys.stderr)
        return 1
    t_model, t_engine, t_naive = m["model_s"], m["engine_s"], m["naive_s"]
    rss_engine, rss_naive, rss_workers = m["rss_engine_mb"], m["rss_naive_mb"], m["rss_workers_mb"]
    cuda_engine, cuda_naive, resettable = m["cuda_engine_mb"], m["cuda_naive_mb"], m["rss_resettable"]
    te, tn = m["engine_median_s"], m["naive_median_s"]
    ips_engine, ips_naive = m["engine_img_s"], m["naive_img_s"]

    def cuda(v):
        return f", cuda peak {v:.0f} MB" if v is not None else ""

    def times(ts):
        return "" if len(ts) == 1 else f" (median of {', '.join(f'{t:.2f}' for t in ts)})"

    since = "" if resettable else " (since start)"
    print(f"engine: {n} images in {te:.2f} s = {ips_engine:.1f} img/s{times(t_engine)}; "
          f"peak RSS {rss_engine:.0f} MB{since}{cuda(cuda_engine)}")
    print(f"naive : {n} images in {tn:.2f} s = {ips_naive:.1f} img/s{times(t_naive)}; "
          f"peak RSS {rss_naive:.0f} MB{since} + {args.workers} workers of up to {rss_workers:.0f} MB each"
          f"{cuda(cuda_naive)}")
    print(f"model : {n / t_model:.1f} img/s for the training steps alone (ready batches, no data "
          f"pipeline): the ceiling of both")
    d_engine, d_naive = data_only_seconds(train, mean, std, args, padding, dev)
    print(f"data  : engine {n / d_engine:.1f} img/s, naive {n / d_naive:.1f} img/s for producing the "
          f"augmented batches alone (no training): {d_naive / d_engine:.1f}x")
    print(f"speedup: {ips_engine / ips_naive:.2f}x (engine img/s / naive img/s)")
    return 0


class PipelineMismatch(RuntimeError):
    """The naive pipeline did not see every image once (the comparison would be meaningless)."""


def make_models(name: str, num_classes: int, size: int, mean, std, seed: int = 0):
    """The engine's model and the naive pipeline's twin (same initial weights; its normalisation
    switched off, since the pipeline's ``Normalize`` does it)."""
    from bench.models import create_model

    torch.manual_seed(seed)
    model = create_model(name, num_classes, size, mean, std)
    naive_model = create_model(name, num_classes, size, (0.0,) * 3, (1.0,) * 3)
    naive_model.net.load_state_dict(copy.deepcopy(model.net.state_dict()))
    return model, naive_model


def compare_pipelines(model, naive_model, train, mean, std, *, batch_size: int, workers: int, repeats: int,
                      seed: int, dev: torch.device, engine_data=None) -> dict:
    """One epoch of training through the engine against one through the naive DataLoader
    pipeline, ``repeats`` times alternated, after the warm-up of :func:`model_only_seconds`.
    ``engine_data``: the split the engine trains on (default ``train``; e.g. the same images
    already on the GPU); the naive side always reads ``train`` from host memory as numpy arrays.
    Returns the timings (seconds per epoch, their medians, images/s) and peak memories."""
    n = len(train)
    padding = engine.default_padding(train.x.shape[-1])
    cfg = _train_config(batch_size)
    engine_data = train if engine_data is None else engine_data
    # one-time costs (kernel selection, allocator growth, autograd set-up) are paid before timing,
    # so that whichever side runs first is not penalised for them
    t_model = model_only_seconds(model, train, batch_size, dev)

    t_engine, t_naive = [], []
    rss_engine = rss_naive = 0.0
    cuda_engine = cuda_naive = None
    resettable = True
    for r in range(repeats):  # alternate the two sides so that load drifts hit both alike
        # (a) engine
        resettable &= _reset_peak_rss()
        _reset_cuda_peak(dev)
        t0 = time.perf_counter()
        engine.fit(model, engine_data, cfg, generator=torch.Generator().manual_seed(seed + r), desc="perf")
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t_engine.append(time.perf_counter() - t0)
        rss_engine = max(rss_engine, _peak_rss_mb())
        cuda_engine = _cuda_peak_mb(dev)

        # (b) naive DataLoader pipeline
        resettable &= _reset_peak_rss()
        _reset_cuda_peak(dev)
        t0 = time.perf_counter()
        seen = naive_epoch(naive_model, train.x, train.y, mean, std, batch_size=batch_size,
                           workers=workers, padding=padding, dev=dev, seed=seed + r)
        t_naive.append(time.perf_counter() - t0)
        rss_naive = max(rss_naive, _peak_rss_mb())
        cuda_naive = _cuda_peak_mb(dev)
        if seen != n:
            raise PipelineMismatch(f"naive pipeline saw {seen} images, expected {n}")
    te, tn = statistics.median(t_engine), statistics.median(t_naive)
    return {"n": n, "model_s": t_model, "engine_s": t_engine, "naive_s": t_naive,
            "engine_median_s": te, "naive_median_s": tn, "engine_img_s": n / te, "naive_img_s": n / tn,
            "model_img_s": n / t_model, "rss_engine_mb": rss_engine, "rss_naive_mb": rss_naive,
            "rss_workers_mb": _rss_mb(resource.RUSAGE_CHILDREN) if workers > 0 else 0.0,
            "rss_resettable": resettable, "cuda_engine_mb": cuda_engine, "cuda_naive_mb": cuda_naive}


def data_only_seconds(train, mean, std, args, padding: int, dev: torch.device) -> tuple[float, float]:
    """One pass of each data path without a model: index-gather + batched augmentation of the
    engine, against iterating the naive DataLoader (batches moved to the device on both sides).
    Explains the end-to-end ratio: the data path's share of an epoch bounds what it can gain."""
    n, bs = len(train), args.batch_size
    g = torch.Generator().manual_seed(args.seed)
    x_all, y_all = train.x.to(dev), train.y.to(dev)
    t0 = time.perf_counter()
    order = torch.randperm(n, generator=g)
    for s in range(0, n, bs):
        idx = order[s:s + bs].to(dev)
        xb = engine.augment(x_all[idx].float().div_(255.0), g, padding)
        yb = y_all[idx]
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t_engine = time.perf_counter() - t0
    from torchvision import transforms as T

    size = train.x.shape[-1]
    tf = T.Compose([T.RandomCrop(size, padding=padding), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(PILDataset(train.x, train.y, tf), batch_size=bs, shuffle=True,
                                         num_workers=args.workers, pin_memory=dev.type == "cuda")
    t0 = time.perf_counter()
    for xb, yb in loader:
        xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return t_engine, time.perf_counter() - t0


def model_only_seconds(model: torch.nn.Module, train, batch_size: int, dev: torch.device,
                       steps: int = 6) -> float:
    """Seconds per epoch of forward/backward/SGD steps on a ready float batch, measured on a copy
    of the model after two warm-up steps (which also warm up both timed sides)."""
    m = copy.deepcopy(model)
    engine.prepare_model(m, dev)
    m.train()
    bs = min(batch_size, len(train))
    x = train.x[:bs].to(dev).float().div_(255.0)
    x = engine.to_model_layout(x)
    y = train.y[:bs].to(dev)
    opt = engine.make_optimizer(m.parameters(), _train_config(bs))
    tail = len(train) % bs
    xt, yt = (x[:tail], y[:tail]) if tail else (None, None)

    def step(xb, yb):
        with engine._autocast(dev):
            loss = F.cross_entropy(m(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step(x, y)
        if xt is not None:
            step(xt, yt)  # the last, smaller batch of an epoch has kernels of its own
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) / (steps * bs) * len(train)


def scoring_seconds(model: torch.nn.Module, train, batch_size: int, dev: torch.device,
                    grad_mode=torch.no_grad, steps: int = 6) -> float:
    """Seconds per epoch of eval-mode forward passes on a ready batch under ``grad_mode``."""
    m = engine.prepare_model(copy.deepcopy(model), dev).eval()
    x = engine.to_model_layout(train.x[:min(batch_size, len(train))].to(dev).float().div_(255.0))
    with grad_mode(), engine._autocast(dev):
        m(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            m(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) / (steps * len(x)) * len(train)


def layouts(model: torch.nn.Module, train, args) -> int:
    """Training and scoring steps of one model under each memory layout (and compile), as images/s
    and as ratios against the NCHW / no_grad baseline measured in the same process."""
    dev, n = engine.device(), len(train)
    print(f"perf --layouts: model={args.model} batch_size={args.batch_size} device={dev} "
          f"torch_threads={torch.get_num_threads()}", flush=True)
    rows = []
    # bf16 autocast on the CPU (run --cpu-bf16) where the CPU has it natively; on CUDA it is the default
    bf16 = [("channels-last + bf16", dict(channels_last=True, amp=True, cpu_amp=True))] \
        if dev.type == "cpu" and engine.cpu_bf16_supported() else []
    for label, changes in [("NCHW", dict(channels_last=False)), ("channels-last", dict(channels_last=True))] + bf16 + (
            [("channels-last + compile", dict(channels_last=True, compile=True))] if args.compile else []):
        previous = engine.runtime()
        engine.configure(**changes)
        try:
            m = torch.compile(copy.deepcopy(model)) if changes.get("compile") else model
            train_s = model_only_seconds(m, train, args.batch_size, dev)
            score_s = scoring_seconds(m, train, args.batch_size, dev)
            infer_s = scoring_seconds(m, train, args.batch_size, dev, torch.inference_mode)
        finally:
            engine.configure(**vars(previous))
        rows.append((label, n / train_s, n / score_s, n / infer_s))
    base_train, base_score = rows[0][1], rows[0][2]
    for label, tr, sc, inf in rows:
        print(f"{label:24s} train {tr:8.1f} img/s ({tr / base_train:.2f}x)   score no_grad {sc:8.1f} img/s "
              f"({sc / base_score:.2f}x)   inference_mode {inf:8.1f} img/s ({inf / base_score:.2f}x)")
    return 0
