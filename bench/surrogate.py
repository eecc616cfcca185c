"""What attacks that need a trained model share: cache keys, an artifact cache, surrogates, generators.

Some attacks train something before they can poison: Narcissus a surrogate classifier and a trigger,
the label-consistent attack a surrogate for its PGD step, IAD a trigger generator and a mask network.
This module gives them one way to do it:

* :func:`data_digest` hashes the training tensors (images and labels), so every artifact is keyed
  by the exact data it was computed from; :func:`model_signature` names the architecture (class,
  parameter shapes, the normalisation inside the wrapper) that ``ctx.model_factory`` builds;
  :func:`artifact_key` hashes those with the parameters, the seed and the budget.
* :func:`cached` loads an artifact from ``<ctx.cache_dir>/<kind>/<key>.pt`` or computes and writes
  it atomically (temp file + rename) under a file lock, so two processes preparing the same cell
  compute it once. Without a ``cache_dir`` it just computes.
* :func:`standard_surrogate`: a fresh model of the cell's architecture trained on the clean
  training set with the cell's own recipe (``ctx.train_config``), its epochs scaled by the budget
  (:func:`scaled_epochs`: paper epochs x ``ctx.budget.scale``, at least 1). Narcissus
  (``pood="self"``) and LC (``surrogate="clean"``) both use it and share one cached copy per cell.
* :class:`Frozen` wraps a trained model for optimisation *through* it (trigger synthesis, PGD):
  it stays in eval mode and takes no gradient even when :func:`bench.engine.fit` calls ``train()``.
* :class:`EncoderDecoder`: the conv encoder-decoder that IAD uses as trigger-pattern generator and
  as mask network (BackdoorBox/BackdoorBench layout: two conv-BN-ReLU per level, ``depth``
  max-pool downsamplings and nearest upsamplings, ``width`` channels at the first level).

All training goes through :func:`bench.engine.fit`; nothing here owns a loop over the data.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from bench import artifacts, engine
from bench.data import Split
from bench.spec import derive_seed, stable_hash

_DIGESTS: dict[tuple, str] = {}


# -- keys -----------------------------------------------------------------------------------------
def data_digest(split: Split) -> str:
    """SHA-256 (16 hex) of a split's image bytes and labels (memoised per tensor storage)."""
    memo = (split.x.data_ptr(), tuple(split.x.shape), None if split.y is None else split.y.data_ptr(),
            split.x._version)
    if memo in _DIGESTS:
        return _DIGESTS[memo]
    h = hashlib.sha256()
    h.update(str(tuple(split.x.shape)).encode())
    h.update(split.x.detach().cpu().contiguous().numpy().tobytes())
    if split.y is not None:
        h.update(split.y.detach().cpu().long().contiguous().numpy().tobytes())
    out = h.hexdigest()[:16]
    _DIGESTS[memo] = out
    return out


def model_signature(model: nn.Module) -> dict:
    """What identifies an architecture: class, arch name, parameter shapes, normalisation."""
    shapes = [list(p.shape) for p in model.state_dict().values()]
    sig = {"class": type(model).__name__, "arch": getattr(model, "arch", ""),
           "shapes": stable_hash(shapes)}
    for buf in ("mean", "std"):
        t = getattr(model, buf, None)
        if isinstance(t, torch.Tensor):
            sig[buf] = [round(float(v), 6) for v in t.flatten()]
    return sig


def ctx_seed(ctx) -> int:
    """The seed of the attack's preparation (the initial seed of ``ctx.generator``)."""
    return int(ctx.generator.initial_seed())


def sub_generator(ctx, *tags) -> torch.Generator:
    """An independent, reproducible generator per purpose (does not consume ``ctx.generator``)."""
    return torch.Generator().manual_seed(derive_seed(ctx_seed(ctx), *tags))


def scaled_epochs(ctx, paper_epochs: float) -> float:
    """Paper epochs scaled by the suite's budget (at least 1, never above the paper's)."""
    return ctx.budget.epochs(paper_epochs)


def artifact_key(kind: str, **parts) -> str:
    def norm(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return dataclasses.asdict(v)
        return v

    return stable_hash({"kind": kind, **{k: norm(v) for k, v in parts.items()}}, 24)


# -- the artifact cache ---------------------------------------------------------------------------
def cached(ctx, kind: str, key: str, compute: Callable[[], dict]) -> tuple[dict, bool]:
    """``(artifact, loaded)``: the artifact from ``<ctx.cache_dir>/<kind>``, or ``compute()``
    written there (:func:`bench.artifacts.cached`: a dict of tensors / plain values, loaded as data
    only); without a cache folder it is simply computed."""
    if not getattr(ctx, "cache_dir", None):
        return compute(), False
    blob, _, hit = artifacts.cached(Path(ctx.cache_dir) / kind, key, lambda: (compute(), {"kind": kind}))
    return blob, hit


# -- models ---------------------------------------------------------------------------------------
class Frozen(nn.Module):
    """A trained model used as a fixed function: eval mode and no parameter gradients, always."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, x):
        return self.model(x)


def require_factory(ctx, who: str):
    from bench.attack import AttackConfigError

    if ctx is None or ctx.model_factory is None or ctx.train_config is None:
        raise AttackConfigError(f"{who}: needs a model factory and the cell's training recipe in its "
                                f"AttackContext (the runner provides both)")


def surrogate_key(train: Split, ctx, who: str = "surrogate") -> str:
    """The cache key of :func:`standard_surrogate` (computed without training anything)."""
    require_factory(ctx, who)
    return _surrogate_plan(train, ctx)[2]


def _surrogate_plan(train: Split, ctx):
    model = ctx.model_factory()
    cfg = dataclasses.replace(ctx.train_config, epochs=scaled_epochs(ctx, ctx.train_config.epochs))
    key = artifact_key("standard-surrogate", data=data_digest(train), model=model_signature(model),
                       cfg=cfg, seed=ctx_seed(ctx))
    return model, cfg, key


def standard_surrogate(train: Split, ctx, who: str = "surrogate") -> tuple[nn.Module, str, bool]:
    """``(model, key, loaded)``: the cell's architecture trained on the clean training set with the
    cell's recipe, epochs scaled by the budget; cached under ``<cache>/surrogate/<key>.pt``."""
    require_factory(ctx, who)
    model, cfg, key = _surrogate_plan(train, ctx)

    def compute():
        engine.fit(model, train, cfg, generator=sub_generator(ctx, "surrogate"), desc=f"{who} surrogate")
        return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}

    blob, loaded = cached(ctx, "surrogate", key, compute)
    if loaded:
        model.load_state_dict(blob["state_dict"])
    engine.prepare_model(model)
    model.eval()
    return model, key, loaded


# -- IAD's generator / mask network ---------------------------------------------------------------
def _block(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class EncoderDecoder(nn.Module):
    """Conv encoder-decoder from [0, 1] pixels to ``out_channels`` maps of the same size (raw
    pre-activation values; IAD applies its own squashing). Input is normalised with 0.5/0.5."""

    def __init__(self, out_channels: int = 3, width: int = 32, depth: int = 3, in_channels: int = 3):
        super().__init__()
        enc, c = [], in_channels
        for i in range(depth):
            w = width * 2 ** i
            enc += [_block(c, w), _block(w, w), nn.MaxPool2d(2)]
            c = w
        self.encoder = nn.Sequential(*enc)
        self.middle = _block(c, c)
        dec = []
        for i in reversed(range(depth)):
            w = width * 2 ** i
            out = out_channels if i == 0 else w // 2
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), _block(c, c), _block(c, out, relu=i > 0)]
            c = out
        self.decoder = nn.Sequential(*dec)

    def forward(self, x):
        return self.decoder(self.middle(self.encoder((x - 0.5) / 0.5)))
