"""``tinyimagenet``: Tiny-ImageNet (Le and Yang, 2015), 200 classes of 64x64 images, from its
standard folder layout::

    <root>/tiny-imagenet-200/wnids.txt                     the 200 class ids (wnids)
    <root>/tiny-imagenet-200/words.txt                     wnid<TAB>readable names
    <root>/tiny-imagenet-200/train/<wnid>/images/*.JPEG    training images (500 per class)
    <root>/tiny-imagenet-200/val/images/*.JPEG             validation images (50 per class)
    <root>/tiny-imagenet-200/val/val_annotations.txt       file<TAB>wnid<TAB>box

Choices:

* The labelled ``val`` split is the test split (the official ``test`` folder has no labels and is
  ignored), as in the backdoor toolboxes.
* Class order is the sorted wnid order (what ``ImageFolder`` on ``train/`` gives), not the order of
  ``wnids.txt``.
* Class names are the first synonym in ``words.txt`` (``"goldfish"`` for ``"goldfish, Carassius
  auratus"``); where two classes would share a first synonym the full entry is used for both, and a
  wnid missing from ``words.txt`` keeps its wnid.
* Grayscale (and any non-RGB) images are converted to RGB; images are 64x64 and any other size is a
  :class:`CorruptDataError`. Train files are all ``*.JPEG`` under ``train/<wnid>/images/``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bench.data import Split
from bench.datasets._decode import decode_images, list_images
from bench.datasets.base import CorruptDataError, DatasetSource
from bench.registry import DATASETS

_HOW = ("Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into the data root "
        "(--data-root or BENCH_DATA_ROOT).")


def _read_lines(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptDataError(f"cannot read {path}: not a text file ({exc})") from exc
    return [line.rstrip("\r\n").split("\t") for line in text.splitlines() if line.strip()]


def readable_names(wnids: list[str], words_file: Path) -> list[str]:
    """First synonyms from a ``wnid<TAB>names`` file, full entries where first synonyms collide."""
    words = {row[0].strip(): row[1].strip() for row in _read_lines(words_file) if len(row) >= 2}
    full = [words.get(w, w) for w in wnids]
    first = [f.split(",")[0].strip() for f in full]
    return [fi if first.count(fi) == 1 else fu for fi, fu in zip(first, full)]


@DATASETS.register("tinyimagenet", num_classes=200, image_size=64)
class TinyImageNet(DatasetSource):
    """Tiny-ImageNet (standard folder layout, 64x64 RGB, 200 classes; val is the test split)."""

    num_classes = 200
    image_size = 64
    folder = "tiny-imagenet-200"
    layout = ("<root>/tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images/*.JPEG, "
              "val/images/*.JPEG, val/val_annotations.txt}")

    def locate(self, root: Path) -> list[Path]:
        base = root / self.folder
        if not base.is_dir():
            raise self.missing(root, base, _HOW)
        needed = [base / "wnids.txt", base / "words.txt", base / "val" / "val_annotations.txt"]
        absent = [str(p.relative_to(base)) for p in needed if not p.is_file()]
        for d in (base / "train", base / "val" / "images"):
            if not d.is_dir():
                absent.append(str(d.relative_to(base)) + "/")
        if absent:
            raise self.missing(root, base, f"The folder exists but lacks {', '.join(absent)}. {_HOW}")
        wnids = sorted({row[0].strip() for row in _read_lines(base / "wnids.txt")})
        files = list(needed)
        for w in wnids:
            d = base / "train" / w / "images"
            if not d.is_dir():
                raise self.missing(root, d, f"wnids.txt lists {w} but it has no train/{w}/images/ folder. {_HOW}")
            files += list_images(d, (".jpeg", ".jpg", ".png"))
        files += list_images(base / "val" / "images", (".jpeg", ".jpg", ".png"))
        return files

    def decode(self, root, files):
        base = root / self.folder
        wnids = sorted({row[0].strip() for row in _read_lines(base / "wnids.txt")})
        index = {w: i for i, w in enumerate(wnids)}
        train_paths, train_y, val_paths = [], [], {}
        for f in files:
            parts = f.relative_to(base).parts
            if parts[0] == "train":
                train_paths.append(f)
                train_y.append(index[parts[1]])
            elif parts[:2] == ("val", "images"):
                val_paths[f.name] = f
        ann = base / "val" / "val_annotations.txt"
        test_paths, test_y = [], []
        for row in _read_lines(ann):
            if len(row) < 2:
                raise CorruptDataError(f"{ann}: malformed line {row!r} (expected file<TAB>wnid<TAB>box)")
            name, wnid = row[0].strip(), row[1].strip()
            if wnid not in index:
                raise CorruptDataError(f"{ann}: {name} has class {wnid}, which is not in wnids.txt")
            if name not in val_paths:
                raise CorruptDataError(f"{ann} lists {name}, but val/images/{name} does not exist")
            test_paths.append(val_paths[name])
            test_y.append(index[wnid])
        if not train_paths:
            raise CorruptDataError(f"{base / 'train'}: no training images found")
        train = Split(self._decode(train_paths), torch.tensor(train_y, dtype=torch.long))
        test = Split(self._decode(test_paths), torch.tensor(test_y, dtype=torch.long))
        classes = readable_names(wnids, base / "words.txt")
        return train, test, classes, {"origin": str(base), "wnids": wnids}

    def _decode(self, paths: list[Path]) -> torch.Tensor:
        x = decode_images(paths, None, what=self.name)
        if len(x) and tuple(x.shape[2:]) != (64, 64):
            raise CorruptDataError(f"{self.name}: images must be 64x64, {paths[0]} is "
                                   f"{x.shape[3]}x{x.shape[2]}")
        return x
