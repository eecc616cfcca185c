"""``imagenette``: Imagenette (Howard, 2019; github.com/fastai/imagenette), fast.ai's 10-class
subset of ImageNet (Deng et al., 2009), from the layout of its official releases::

    <root>/imagenette2/{train,val}/<wnid>/*.JPEG         full size
    <root>/imagenette2-320/{train,val}/<wnid>/*.JPEG     shorter side 320
    <root>/imagenette2-160/{train,val}/<wnid>/*.JPEG     shorter side 160

Images are resized to ``image_size`` (default 224): shorter side to ``image_size``, then a center
crop, with Pillow's antialiased bilinear filter; grayscale images become RGB. ``val`` is the test
split. Classes are the 10 wnids in sorted order, named with the readable names of the release
("tench", "English springer", ...).

Choices:

* Several releases under one root: ``variant="auto"`` (default) takes the smallest release whose
  side is at least ``image_size`` (160 < 320 < full), which decodes fastest without upscaling, and
  the largest present one if none is big enough (then a warning says the images are upscaled).
  ``variant`` can name a release explicitly.
* ``noisy_imagenette.csv`` (noisy labels) is not used: labels come from the folder names.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.data import Split
from bench.datasets._decode import decode_images, scan_class_tree
from bench.datasets.base import CorruptDataError, DatasetSource
from bench.registry import DATASETS

NAMES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888257": "parachute",
}
# release folder -> nominal shorter side (None: full size)
VARIANTS = {"imagenette2-160": 160, "imagenette2-320": 320, "imagenette2": None}
_HOW = ("Download and unpack one of https://s3.amazonaws.com/fast-ai-imageclas/imagenette2{,-320,-160}.tgz "
        "into the data root (--data-root or BENCH_DATA_ROOT), or use "
        "torchvision.datasets.Imagenette('<data root>', download=True).")


@dataclass
class ImagenetteParams:
    image_size: int = 224
    variant: str = "auto"   # auto | imagenette2 | imagenette2-320 | imagenette2-160

    def validate(self):
        if not 8 <= self.image_size <= 1024:
            raise ValueError(f"imagenette image_size must be in 8..1024, got {self.image_size}")
        if self.variant != "auto" and self.variant not in VARIANTS:
            raise ValueError(f"imagenette variant must be auto or one of {', '.join(VARIANTS)}, "
                             f"got '{self.variant}'")


@DATASETS.register("imagenette", num_classes=10, image_size=224)
class Imagenette(DatasetSource):
    """Imagenette (10 ImageNet classes; official release layout, resized, val is the test split)."""

    Params = ImagenetteParams
    num_classes = 10
    image_size = 224
    layout = "<root>/imagenette2{,-320,-160}/{train,val}/<wnid>/*.JPEG"

    def _pick(self, root: Path) -> Path:
        names = [self.params.variant] if self.params.variant != "auto" else list(VARIANTS)
        present = [n for n in names if (root / n / "train").is_dir() and (root / n / "val").is_dir()]
        if not present:
            looked = [root / n for n in names]
            partial = [str(p) for p in looked if p.is_dir()]
            how = (f"{', '.join(partial)} exist(s) but lack(s) train/ or val/. " if partial else "") + _HOW
            raise self.missing(root, looked, how)
        size = self.params.image_size
        big_enough = [n for n in present if VARIANTS[n] is None or VARIANTS[n] >= size]
        if big_enough:
            return root / min(big_enough, key=lambda n: VARIANTS[n] or 10 ** 6)
        return root / max(present, key=lambda n: VARIANTS[n] or 10 ** 6)

    def locate(self, root: Path) -> list[Path]:
        base = self._pick(root)
        files: list[Path] = []
        for split in ("train", "val"):
            paths, _, _ = scan_class_tree(base / split)
            if not paths:
                raise self.missing(root, base / split, f"{base / split} holds no <wnid>/*.JPEG images. {_HOW}")
            files += paths
        return files

    def decode(self, root, files):
        base = self._pick(root)
        nominal = VARIANTS[base.name]
        if nominal is not None and nominal < self.params.image_size:
            warnings.warn(f"imagenette: only {base.name} is present; its {nominal}px images are upscaled "
                          f"to {self.params.image_size}px (set image_size={nominal} to avoid it)", stacklevel=2)
        wanted = set(files)
        tr_paths, tr_y, wnids = scan_class_tree(base / "train")
        te_paths, te_y, _ = scan_class_tree(base / "val", wnids)
        if set(tr_paths) | set(te_paths) != wanted:
            raise CorruptDataError(f"imagenette: the files under {base} changed while loading; load again")
        size = self.params.image_size
        train = Split(decode_images(tr_paths, size, what=self.name), torch.tensor(tr_y, dtype=torch.long))
        test = Split(decode_images(te_paths, size, what=self.name), torch.tensor(te_y, dtype=torch.long))
        classes = [NAMES.get(w, w) for w in wnids]
        return train, test, classes, {"origin": str(base), "wnids": wnids}
