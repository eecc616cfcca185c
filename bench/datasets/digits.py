"""``digits``: scikit-learn's bundled handwritten digits, upscaled to RGB; needs no download.

The 1,797 8x8 grey images (values 0-16) of the UCI optical-digits set ship inside scikit-learn,
so this dataset works offline anywhere and is the default for smoke runs and tests. Images are
scaled to [0, 255], upscaled bilinearly to ``image_size`` (16 or 32) and repeated over three
channels. The train/test split is a fixed, stratified 80/20 split (seed 0), independent of the
run's seed, so every run sees the same test set.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.data import Split, to_uint8
from bench.datasets.base import DatasetSource
from bench.registry import DATASETS


@dataclass
class DigitsParams:
    image_size: int = 32

    def validate(self):
        if self.image_size not in (16, 32):
            raise ValueError(f"digits image_size must be 16 or 32, got {self.image_size}")


@DATASETS.register("digits", offline=True, num_classes=10)
class Digits(DatasetSource):
    """scikit-learn's handwritten digits (offline), upscaled to 3x16x16 or 3x32x32."""

    Params = DigitsParams
    num_classes = 10
    offline = True
    layout = "none (bundled with scikit-learn)"

    def locate(self, root: Path) -> list[Path]:
        return []

    def decode(self, root, files):
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
        s = self.params.image_size
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False).clamp_(0, 1)
        x = to_uint8(x.repeat(1, 3, 1, 1))
        y = torch.tensor(d.target, dtype=torch.long)
        g = torch.Generator().manual_seed(0)
        test_mask = torch.zeros(len(y), dtype=torch.bool)
        for c in range(10):
            idx = (y == c).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            test_mask[idx[: len(idx) // 5]] = True
        classes = [str(i) for i in range(10)]
        return (Split(x[~test_mask], y[~test_mask]), Split(x[test_mask], y[test_mask]), classes,
                {"origin": "sklearn.datasets.load_digits"})
