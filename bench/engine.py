"""The one training and evaluation engine every run, attack and defense goes through.

Data are uint8 tensors held in memory (on the GPU when there is one); a batch becomes float
[0, 1] pixels and is augmented on the device (random crop with zero padding, horizontal flip), in
the style of airbench. :func:`fit` trains one model (or several together) with SGD or Adam and a
cosine, step, one-cycle or constant schedule, under bf16 autocast and channels-last on CUDA (bf16
on the CPU too with ``cpu_amp``, ``run --cpu-bf16``), with an optional ``torch.compile``. A custom
``loss_fn(model, batch)`` lets defenses change the objective (unlearning, distillation, mutual
learning) without writing a loop of their own; labels are optional, so unlabeled data trains too.

Cost accounting: inside :func:`measure_cost` every sample that goes through a training step (and
every sample of :func:`map_batches` with ``grad=True``) counts as one forward/backward pass;
``epochs_equiv`` is that count over the cell's training-set size, so a plain training of E epochs
costs exactly E and costs compare across machines.

A loss that becomes NaN or infinite stops the run with :class:`DivergenceError` instead of
producing a table of silent NaNs.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import sys
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.budget import Budget
from bench.data import Split


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


# -- runtime settings -----------------------------------------------------------------------------
@dataclass
class Runtime:
    """Where and how the engine computes. Set once per worker with :func:`configure`."""

    device: str = "auto"           # auto | cpu | cuda | cuda:N
    amp: bool = True               # bf16 autocast on CUDA (ignored on CPU unless cpu_amp)
    cpu_amp: bool = False          # with amp: bf16 autocast on the CPU too (``run --cpu-bf16``)
    channels_last: bool = True     # channels-last memory format (CUDA, and oneDNN convolutions on CPU)
    compile: bool = False          # torch.compile the model inside fit()
    progress: bool = False         # tqdm bars over epochs
    eval_batch_size: int = 512

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


_RUNTIME = Runtime()


def configure(**kwargs) -> Runtime:
    """Change the process-wide runtime (device, amp, channels_last, compile, progress)."""
    global _RUNTIME
    _RUNTIME = replace(_RUNTIME, **kwargs)
    return _RUNTIME


def runtime() -> Runtime:
    return _RUNTIME


def device() -> torch.device:
    return _RUNTIME.torch_device()


def compute_dtype(dev: torch.device | None = None) -> str:
    """``"bf16"`` where the engine computes under bfloat16 autocast on ``dev`` (CUDA with ``amp``;
    the CPU with ``amp`` and ``cpu_amp``), else ``"fp32"``. Records carry it (``compute_dtype``)."""
    dev = dev or device()
    if _RUNTIME.amp and (dev.type == "cuda" or (dev.type == "cpu" and _RUNTIME.cpu_amp)):
        return "bf16"
    return "fp32"


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX-512 BF16 or AMX, through oneDNN): elsewhere
    bf16 autocast on the CPU is emulated and slower than float32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _autocast(dev: torch.device):
    if compute_dtype(dev) == "bf16":
        return torch.autocast(dev.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: nn.Module, dev: torch.device | None = None) -> nn.Module:
    """Move a model to the device, in channels-last memory format unless the runtime says no.

    Channels-last pays on CUDA (tensor cores) and on the CPU too, where oneDNN's convolutions run
    on NHWC tensors without reordering: ``python run_bench.py perf --layouts`` measured +14 % training
    and +55 % inference images/s for ``cnn_small`` on the 2-core development machine."""
    dev = dev or device()
    model.to(dev)
    if _RUNTIME.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def to_model_layout(x: torch.Tensor) -> torch.Tensor:
    """An image batch in the memory format :func:`prepare_model` gave the models."""
    if _RUNTIME.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


# -- cost accounting ------------------------------------------------------------------------------
@dataclass
class CostMeter:
    """Training passes counted in a block, and each training phase (:func:`fit` call) it ran:
    ``{"phase": desc, "steps": optimiser steps, "epochs": passes over that phase's data}``."""

    reference_size: int
    samples: int = 0
    phases: list = field(default_factory=list)

    @property
    def epochs_equiv(self) -> float:
        return self.samples / max(1, self.reference_size)


_METER: contextvars.ContextVar[CostMeter | None] = contextvars.ContextVar("bench_cost_meter", default=None)


@contextlib.contextmanager
def measure_cost(reference_size: int):
    """Count training passes in the block; yields the :class:`CostMeter`."""
    meter = CostMeter(reference_size)
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


_STEP_FLOOR: contextvars.ContextVar[Budget] = contextvars.ContextVar("bench_step_floor", default=Budget())


@contextlib.contextmanager
def step_floor(budget: Budget):
    """Inside the block every :func:`fit` phase takes the steps :meth:`Budget.phase_steps` gives:
    no fewer than the budget's ``min_steps`` unless the phase's paper budget is smaller still (the
    floor, applied alike to every defense; the schedule stretches over the extra steps)."""
    token = _STEP_FLOOR.set(budget)
    try:
        yield
    finally:
        _STEP_FLOOR.reset(token)


def count_passes(n: int) -> None:
    """Add ``n`` forward/backward sample passes to the active cost meter (if any)."""
    meter = _METER.get()
    if meter is not None:
        meter.samples += int(n)


# -- augmentation ---------------------------------------------------------------------------------
def default_padding(size: int) -> int:
    """Crop padding: 4 px at 32 px, scaled with the image side (8 at 64, 28 at 224)."""
    return max(1, round(size / 8))


def augment(x: torch.Tensor, generator: torch.Generator, padding: int | None = None,
            flip: bool = True, crop: bool = True) -> torch.Tensor:
    """Batched random crop (zero padding) and horizontal flip of float images (B, C, H, W)."""
    b, c, h, w = x.shape
    if crop:
        p = default_padding(h) if padding is None else padding
        if p > 0:
            oy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
            xp = F.pad(x, (p, p, p, p))
            rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            bi = torch.arange(b, device=x.device)[:, None, None, None]
            ci = torch.arange(c, device=x.device)[None, :, None, None]
            x = xp[bi, ci, rows, cols]
    if flip:
        m = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(m[:, None, None, None], x.flip(3), x)
    return x


# -- training -------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """A training recipe. ``epochs`` may be fractional (e.g. 0.5 of a pass over the data)."""

    epochs: float = 100
    batch_size: int = 128
    optimizer: str = "sgd"                      # sgd | adam | radam
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"                    # cosine | step | onecycle | constant
    milestones: tuple[float, ...] = (0.5, 0.75)  # for step: fractions of the run
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    augment: bool = True
    crop_padding: int | None = None
    flip: bool = True
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    drop_last: bool = False

    def validate(self):
        if self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in ("sgd", "adam", "radam"):
            raise ValueError(f"optimizer must be 'sgd', 'adam' or 'radam', got '{self.optimizer}'")
        if self.schedule not in ("cosine", "step", "onecycle", "constant"):
            raise ValueError(f"schedule must be cosine|step|onecycle|constant, got '{self.schedule}'")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass
class Batch:
    """What a loss function sees: augmented float pixels on the device, labels (or None), the
    batch's indices into the training split, and the step's progress through the run."""

    x: torch.Tensor
    y: torch.Tensor | None
    idx: torch.Tensor
    epoch: int
    step: int
    progress: float


@dataclass
class FitResult:
    epochs: float
    steps: int
    losses: list[float] = field(default_factory=list)  # mean loss per epoch


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "radam":  # Narcissus' warm-up and trigger synthesis
        return torch.optim.RAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, progress: float, total_epochs: float) -> float:
    """The learning-rate multiplier at ``progress`` in [0, 1) of the run."""
    warm = cfg.warmup_epochs / total_epochs if total_epochs else 0.0
    if warm > 0 and progress < warm:
        return (progress + 1e-8) / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** sum(progress >= m for m in cfg.milestones)
    if cfg.schedule == "onecycle":
        peak = 0.25
        return progress / peak if progress < peak else max(0.0, (1 - progress) / (1 - peak))
    t = (progress - warm) / max(1e-8, 1 - warm)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def cross_entropy_loss(label_smoothing: float = 0.0):
    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        if batch.y is None:
            raise ValueError("the default loss needs labels; pass a loss_fn to train without labels")
        return F.cross_entropy(model(batch.x), batch.y, label_smoothing=label_smoothing)

    return loss


LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def fit(model: nn.Module | Sequence[nn.Module], data: Split, cfg: TrainConfig, *,
        loss_fn: LossFn | None = None, generator: torch.Generator | None = None,
        params: Iterable[torch.nn.Parameter] | None = None,
        indices: torch.Tensor | None = None,
        on_epoch_end: Callable[[int], bool | None] | None = None, desc: str = "train",
        transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None) -> FitResult:
    """Train ``model`` on ``data`` (optionally only on ``indices``) with the recipe ``cfg``.

    ``model`` may be a list of modules trained together (mutual learning); ``loss_fn`` then
    receives the list. ``params`` overrides which parameters the optimizer updates.
    ``on_epoch_end(epoch)`` runs after every epoch; returning ``True`` stops the run there (early
    stopping, e.g. Neural Cleanse's patience), and ``FitResult.epochs`` then holds the epochs run.
    ``transform(x, generator)``, if given, runs on every float batch after the standard
    augmentation (an attack's training-time transform, e.g. PhysicalBA's physical transforms).
    """
    cfg.validate()
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    dev = device()
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    for m in models:
        prepare_model(m, dev)
        m.train()
    run_models = models
    if _RUNTIME.compile and dev.type == "cuda":
        run_models = [torch.compile(m) for m in models]
    target_model = run_models if len(run_models) > 1 else run_models[0]
    loss_fn = loss_fn or cross_entropy_loss(cfg.label_smoothing)
    opt_params = list(params) if params is not None else [p for m in models for p in m.parameters()]
    opt = make_optimizer(opt_params, cfg)
    base_lrs = [group["lr"] for group in opt.param_groups]

    pool = torch.arange(len(data)) if indices is None else indices.detach().cpu().long()
    n = len(pool)
    if n == 0:
        raise ValueError(f"{desc}: nothing to train on (empty index set)")
    bs = min(cfg.batch_size, n)
    x_all = data.x.to(dev, non_blocking=True)
    y_all = None if data.y is None else data.y.to(dev, non_blocking=True)
    steps_per_epoch = n // bs if cfg.drop_last else math.ceil(n / bs)
    total_steps = _STEP_FLOOR.get().phase_steps(cfg.epochs, steps_per_epoch)
    result = FitResult(epochs=cfg.epochs, steps=total_steps)
    bar = _progress(total_steps, desc)
    meter = _METER.get()
    passes_before = meter.samples if meter is not None else 0
    step, epoch = 0, 0
    while step < total_steps:
        order = pool[torch.randperm(n, generator=g)]
        epoch_loss, epoch_steps = 0.0, 0
        for s in range(steps_per_epoch):
            if step >= total_steps:
                break
            idx = order[s * bs:(s + 1) * bs]
            progress = step / total_steps
            for group, base in zip(opt.param_groups, base_lrs):
                group["lr"] = base * lr_factor(cfg, progress, cfg.epochs)
            idx_dev = idx.to(dev, non_blocking=True)
            x = x_all[idx_dev].float().div_(255.0)
            if cfg.augment:
                x = augment(x, g, cfg.crop_padding, cfg.flip)
            if transform is not None:
                x = transform(x, g)
            x = to_model_layout(x)
            batch = Batch(x, None if y_all is None else y_all[idx_dev], idx, epoch, step, progress)
            with _autocast(dev):
                loss = loss_fn(target_model, batch)
            if not torch.isfinite(loss):
                raise DivergenceError(
                    f"{desc}: loss became {loss.item()} at epoch {epoch}, step {step} (lr "
                    f"{opt.param_groups[0]['lr']:.3g}); lower the learning rate or check the data")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(opt_params, cfg.grad_clip)
            opt.step()
            count_passes(len(idx))
            epoch_loss += float(loss.detach())
            epoch_steps += 1
            step += 1
            bar.update(1)
        result.losses.append(epoch_loss / max(1, epoch_steps))
        epoch += 1
        if on_epoch_end is not None and on_epoch_end(epoch - 1) is True:
            result.epochs = epoch  # the callback asked for an early stop
            break
    bar.close()
    for m in models:
        m.eval()
    result.steps = step
    if meter is not None:
        meter.phases.append({"phase": desc, "steps": step,
                             "epochs": round((meter.samples - passes_before) / n, 4)})
    return result


def _progress(total: int, desc: str):
    if _RUNTIME.progress:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)

    class _Null:
        def update(self, n):
            pass

        def close(self):
            pass

    return _Null()


# -- evaluation -----------------------------------------------------------------------------------
def map_batches(fn: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor],
                data: Split, *, batch_size: int | None = None, grad: bool = False,
                indices: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``fn(x_float, y, idx)`` to the split in order, batch by batch, on the device, and
    concatenate the results on the CPU. With ``grad=True`` gradients are enabled and every sample
    counts as a training pass (use it for input-gradient scoring)."""
    dev = device()
    bs = batch_size or _RUNTIME.eval_batch_size
    pool = torch.arange(len(data)) if indices is None else indices.cpu().long()
    outs = []
    ctx = contextlib.nullcontext() if grad else torch.no_grad()
    with ctx:
        for start in range(0, len(pool), bs):
            idx = pool[start:start + bs]
            x = to_model_layout(data.x[idx].to(dev, non_blocking=True).float().div_(255.0))
            y = None if data.y is None else data.y[idx].to(dev, non_blocking=True)
            with _autocast(dev):
                out = fn(x, y, idx)
            outs.append(out.detach().float().cpu())
            if grad:
                count_passes(len(idx))
    return torch.cat(outs) if outs else torch.empty(0)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Model on the engine's device, in eval mode for the block; the previous mode comes back."""
    prepare_model(model)
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def predict_logits(model: nn.Module, data: Split | torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Logits of ``model`` (eval mode) for a split or a uint8 image tensor."""
    split = data if isinstance(data, Split) else Split(data, None)
    with eval_mode(model):
        return map_batches(lambda x, y, i: model(x), split, batch_size=batch_size)


def predict(model: nn.Module, data: Split | torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Predicted classes (int64, CPU)."""
    return predict_logits(model, data, batch_size).argmax(1)
