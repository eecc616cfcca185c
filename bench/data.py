"""In-memory image data: uint8 NCHW tensors, class names, fingerprints, subsets.

Every dataset is decoded once into a :class:`Split` (``x``: uint8 ``(N, C, H, W)``, ``y``: int64
``(N,)``) and handled as tensors from then on. Pixels become floats in [0, 1] only inside the engine
and the attacks (:func:`to_float`); anything written back (a poisoned image) is quantised to 8 bits
again with :func:`to_uint8`, exactly like the clean images, so that no off-grid value gives it away.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def to_float(x_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return x_u8.float().div_(255.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [0, 1] -> uint8, rounding to the nearest 8-bit level (what saving a PNG does)."""
    return x.detach().mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


@dataclass
class Split:
    """Images and (optionally) labels of one split, as tensors."""

    x: torch.Tensor
    y: torch.Tensor | None

    def __post_init__(self):
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise TypeError(f"Split.x must be a uint8 (N, C, H, W) tensor, got {self.x.dtype} "
                            f"{tuple(self.x.shape)}")
        if self.y is not None:
            if self.y.dim() != 1 or len(self.y) != len(self.x):
                raise ValueError(f"Split.y must have shape ({len(self.x)},), got {tuple(self.y.shape)}")
            self.y = self.y.long()

    def __len__(self) -> int:
        return len(self.x)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, idx: torch.Tensor) -> "Split":
        return Split(self.x[idx], None if self.y is None else self.y[idx])

    def unlabeled(self) -> "Split":
        return Split(self.x, None)

    def clone(self) -> "Split":
        return Split(self.x.clone(), None if self.y is None else self.y.clone())


@dataclass
class DatasetBundle:
    """A loaded dataset: train and test splits, class names and the fingerprint of its sources."""

    name: str
    train: Split
    test: Split
    classes: list[str]
    fingerprint: str
    source: str = ""
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape


def reserve_size(n_train: int, fraction: float) -> int:
    """Images in a clean reserve of ``fraction`` of ``n_train`` training images (floor)."""
    return math.floor(fraction * n_train)


def balanced_subset(split: Split, n: int | None, generator: torch.Generator) -> torch.Tensor:
    """Indices of a seeded, class-balanced subset of ``n`` samples (all indices if n is None).

    Each class contributes ``n // C`` samples (the remainder goes to the first classes), capped by
    its size; the result is sorted so the subset keeps the original order.
    """
    total = len(split)
    if n is None or n >= total:
        return torch.arange(total)
    if n <= 0:
        raise ValueError(f"subset size must be positive, got {n}")
    if split.y is None:
        return torch.randperm(total, generator=generator)[:n].sort().values
    classes = split.y.unique()
    per_class = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    picked = []
    for c, k in zip(classes.tolist(), per_class):
        idx = (split.y == c).nonzero().flatten()
        picked.append(idx[torch.randperm(len(idx), generator=generator)[:k]])
    return torch.cat(picked).sort().values


def subset_bundle(bundle: DatasetBundle, n_train: int | None, n_test: int | None,
                  seed: int = 0) -> DatasetBundle:
    """The same dataset restricted to seeded, class-balanced train/test subsets."""
    if n_train is None and n_test is None:
        return bundle
    g = torch.Generator().manual_seed(seed)
    tr = balanced_subset(bundle.train, n_train, g)
    te = balanced_subset(bundle.test, n_test, g)
    info = dict(bundle.info, n_train=len(tr), n_test=len(te))
    return DatasetBundle(bundle.name, bundle.train.subset(tr), bundle.test.subset(te), bundle.classes,
                         bundle.fingerprint, bundle.source, info)
