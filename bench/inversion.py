"""Neural-Cleanse-style trigger inversion through the shared engine (reusable by any defense).

For a candidate class t, a mask M (H x W, shared by the channels) and a pattern P (C x H x W) are
optimised so that blended inputs ``(1 - M) * x + M * P`` are classified as t by a frozen model,
with an L1 penalty on the mask (Wang et al., S&P 2019, "Neural Cleanse"; the variant of MCLDef's
official code, WeCanShow/MCL ``main.py::inversion``):

* M and P are initialised uniform in [0, 1) (from the caller's generator) and optimised directly
  (no tanh reparametrisation), clipped to [0, 1] after every step;
* loss = CE(f(x~), t) (batch mean) + lambda * sum|M|; Adam with default betas, no weight decay,
  constant learning rate;
* the model stays frozen in eval mode (no BatchNorm update, no gradient into its weights);
* after every epoch ||M||_1 is read; once it has not set a new minimum for more than ``patience``
  epochs in a row the run stops. The final M and P are returned, not the best ones (as the code).

Blending happens in [0, 1] pixel space (models normalise inside), as Neural Cleanse does.

The optimisation is an ordinary :func:`bench.engine.fit` run: a small module holds M and P as its
parameters in front of the frozen classifier, and the clip is applied before every forward pass
(equivalent to clipping after each step) and once more at the end. Early stopping uses the
engine's ``on_epoch_end`` hook. Scoring (flip rates) goes through :func:`bench.engine.map_batches`.

:func:`scan_classes` inverts several classes; :func:`anomaly_index` is NC's MAD-based outlier
score of the mask norms (an index above 2 for the smallest norm means "backdoor detected").
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import engine
from bench.data import Split
from bench.engine import Batch, TrainConfig


@dataclass
class InversionConfig:
    """Settings of one inversion (defaults: MCLDef's official code for 32 px inputs)."""

    epochs: float = 100
    patience: float = 30          # stop after more than this many epochs without a new minimum
    lr: float = 0.005
    lam: float = 0.01             # weight of sum|M|
    batch_size: int = 64
    augment: bool = True
    crop_padding: int | None = None
    flip: bool = True

    def validate(self):
        if self.epochs <= 0:
            raise ValueError(f"inversion epochs must be positive, got {self.epochs}")
        if self.patience < 0:
            raise ValueError(f"inversion patience must be >= 0, got {self.patience}")
        if self.lr <= 0:
            raise ValueError(f"inversion lr must be positive, got {self.lr}")
        if self.lam < 0:
            raise ValueError(f"inversion lambda must be >= 0, got {self.lam}")
        if self.batch_size < 1:
            raise ValueError(f"inversion batch_size must be >= 1, got {self.batch_size}")


@dataclass
class InvertedTrigger:
    """The result of one inversion: mask (H, W) and pattern (C, H, W) in [0, 1], on the CPU."""

    target: int
    mask: torch.Tensor
    pattern: torch.Tensor
    norm: float                                  # ||M||_1 of the final mask
    norm_history: list[float] = field(default_factory=list)   # ||M||_1 after every epoch
    epochs_run: int = 0

    @property
    def image(self) -> torch.Tensor:
        """What the trigger stamps: M * P (C, H, W), for figures."""
        return self.mask.unsqueeze(0) * self.pattern


def apply_trigger(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Blend float images (B, C, H, W) with a mask (H, W) and a pattern (C, H, W)."""
    m = mask.to(x.device, x.dtype).view(1, 1, *mask.shape[-2:])
    p = pattern.to(x.device, x.dtype).unsqueeze(0)
    return (1 - m) * x + m * p


class _TriggerModule(nn.Module):
    """Mask and pattern as parameters in front of a classifier that stays in eval mode."""

    def __init__(self, classifier: nn.Module, mask: torch.Tensor, pattern: torch.Tensor):
        super().__init__()
        self.classifier = classifier
        self.mask = nn.Parameter(mask)
        self.pattern = nn.Parameter(pattern)

    def train(self, mode: bool = True):  # the engine calls train(); the classifier stays frozen
        self.training = mode
        self.classifier.eval()
        return self

    @torch.no_grad()
    def clip_(self) -> None:
        self.mask.clamp_(0, 1)
        self.pattern.clamp_(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(apply_trigger(x, self.mask, self.pattern))


@contextlib.contextmanager
def _frozen(model: nn.Module):
    """No gradients into ``model`` and eval mode inside the block; both restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    try:
        yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


def invert_trigger(model: nn.Module, data: Split, target: int, cfg: InversionConfig,
                   generator: torch.Generator, desc: str | None = None) -> InvertedTrigger:
    """Invert a trigger for class ``target`` on ``data`` (labels, if any, are not used)."""
    cfg.validate()
    c, h, w = data.image_shape
    mask = torch.rand((h, w), generator=generator)
    pattern = torch.rand((c, h, w), generator=generator)
    history: list[float] = []
    state = {"best": float("inf"), "since": 0}
    with _frozen(model):
        trig = _TriggerModule(model, mask, pattern)

        def loss_fn(m: nn.Module, batch: Batch) -> torch.Tensor:
            trig.clip_()  # the clip after the previous step
            logits = m(batch.x)
            y = torch.full((len(batch.x),), int(target), dtype=torch.long, device=logits.device)
            return F.cross_entropy(logits.float(), y) + cfg.lam * trig.mask.abs().sum()

        def on_epoch_end(epoch: int) -> bool:
            trig.clip_()
            norm = float(trig.mask.detach().abs().sum())
            history.append(norm)
            if norm < state["best"]:
                state["best"], state["since"] = norm, 0
            else:
                state["since"] += 1
            return state["since"] > cfg.patience

        tc = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer="adam", lr=cfg.lr,
                         weight_decay=0.0, schedule="constant", augment=cfg.augment,
                         crop_padding=cfg.crop_padding, flip=cfg.flip)
        engine.fit(trig, data, tc, loss_fn=loss_fn, generator=generator, params=[trig.mask, trig.pattern],
                   on_epoch_end=on_epoch_end, desc=desc or f"invert class {target}")
        trig.clip_()
        m_out, p_out = trig.mask.detach().float().cpu().clone(), trig.pattern.detach().float().cpu().clone()
    return InvertedTrigger(int(target), m_out, p_out, float(m_out.abs().sum()), history, len(history))


def scan_classes(model: nn.Module, data: Split, classes, cfg: InversionConfig,
                 generator: torch.Generator) -> dict[int, InvertedTrigger]:
    """Invert every class in ``classes`` (in order, one generator stream)."""
    return {int(t): invert_trigger(model, data, int(t), cfg, generator) for t in classes}


def anomaly_index(norms: torch.Tensor) -> torch.Tensor:
    """Neural Cleanse's anomaly index of each class: (median - norm) / (1.4826 * MAD), where MAD
    is the median absolute deviation of the norms. Large for unusually small masks."""
    norms = torch.as_tensor(norms, dtype=torch.float64)
    med = norms.quantile(0.5)  # the usual median (mean of the middle two), as numpy's
    mad = (norms - med).abs().quantile(0.5) * 1.4826
    dev = med - norms
    if float(mad) == 0.0:
        return torch.where(dev == 0, torch.zeros_like(dev), dev.sign() * float("inf"))
    return dev / mad


def flip_rate(model: nn.Module, data: Split, trigger: InvertedTrigger,
              indices: torch.Tensor | None = None) -> float:
    """Fraction of ``data`` (optionally only ``indices``) that the model classifies as the
    trigger's target once the trigger is blended in."""
    with engine.eval_mode(model):
        pred = engine.map_batches(lambda x, y, i: model(apply_trigger(x, trigger.mask, trigger.pattern)).argmax(1),
                                  data, indices=indices)
    return float((pred == trigger.target).float().mean()) if len(pred) else float("nan")
