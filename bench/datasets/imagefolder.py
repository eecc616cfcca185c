"""``imagefolder``: any image tree in the ``ImageFolder`` layout, split into train and test::

    <path>/train/<class>/*.{jpg,jpeg,png,bmp}
    <path>/test/<class>/*.{jpg,jpeg,png,bmp}      (or <path>/val/...)

``path`` is relative to the data root, or absolute. Class names are the sorted folder names of
``train/`` (their index is the label); every image becomes RGB.

Choices:

* ``test/`` is the test split; where it is absent ``val/`` is used (the Imagenette / ImageNet
  convention). A class folder in the test split that is not in ``train/`` is an error; a train
  class with no test images is allowed.
* ``image_size`` (default none): without it all images must share one size (else a
  :class:`CorruptDataError` names the odd one and asks for ``image_size``); with it, images are
  resized shorter side first and center-cropped to a square, like Imagenette.
* Extensions are matched case-insensitively; other files are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bench.data import Split
from bench.datasets._decode import decode_images, scan_class_tree
from bench.datasets.base import CorruptDataError, DatasetSource
from bench.registry import DATASETS


@dataclass
class ImageFolderParams:
    path: str = ""
    image_size: int | None = None

    def validate(self):
        if not self.path:
            raise ValueError("imagefolder needs path=<folder with train/ and test/> (relative to the "
                             "data root, or absolute)")
        if self.image_size is not None and not 4 <= int(self.image_size) <= 1024:
            raise ValueError(f"imagefolder image_size must be in 4..1024 or None, got {self.image_size}")


@DATASETS.register("imagefolder")
class ImageFolder(DatasetSource):
    """Any <path>/{train,test}/<class>/*.{jpg,jpeg,png,bmp} tree (class names from folder names)."""

    Params = ImageFolderParams
    layout = "<path>/{train,test}/<class>/*.{jpg,jpeg,png,bmp} (path relative to the data root or absolute)"

    def _base(self, root: Path) -> Path:
        p = Path(self.params.path).expanduser()
        return p if p.is_absolute() else root / p

    def _splits(self, root: Path) -> tuple[Path, Path]:
        base = self._base(root)
        how = "Point path= at a folder holding train/<class>/ and test/<class>/ image folders."
        if not base.is_dir():
            raise self.missing(root, base, how)
        test = base / "test" if (base / "test").is_dir() else base / "val"
        absent = [str(d) for d in (base / "train", test) if not d.is_dir()]
        if absent:
            raise self.missing(root, [base / "train", base / "test", base / "val"],
                               f"{base} exists but has no {' or '.join(Path(a).name for a in absent)}/ "
                               f"folder. {how}")
        return base / "train", test

    def locate(self, root: Path) -> list[Path]:
        train_dir, test_dir = self._splits(root)
        tr, _, classes = scan_class_tree(train_dir)
        te, _, _ = scan_class_tree(test_dir, classes)
        for d, paths in ((train_dir, tr), (test_dir, te)):
            if not paths:
                raise self.missing(root, d, f"{d} holds no <class>/*.{{jpg,jpeg,png,bmp}} images.")
        return tr + te

    def decode(self, root, files):
        train_dir, test_dir = self._splits(root)
        tr_paths, tr_y, classes = scan_class_tree(train_dir)
        te_paths, te_y, _ = scan_class_tree(test_dir, classes)
        if set(tr_paths) | set(te_paths) != set(files):
            raise CorruptDataError(f"imagefolder: the files under {self._base(root)} changed while loading")
        size = None if self.params.image_size is None else int(self.params.image_size)
        x_tr = decode_images(tr_paths, size, what=self.name)
        x_te = decode_images(te_paths, size, what=self.name)
        if x_tr.shape[1:] != x_te.shape[1:]:
            raise CorruptDataError(f"imagefolder: train images are {tuple(x_tr.shape[2:])} but test images "
                                   f"are {tuple(x_te.shape[2:])}; set image_size to resize both")
        train = Split(x_tr, torch.tensor(tr_y, dtype=torch.long))
        test = Split(x_te, torch.tensor(te_y, dtype=torch.long))
        return train, test, classes, {"origin": str(self._base(root))}
