"""``cifar10`` and ``cifar100``: CIFAR (Krizhevsky, 2009) from the standard python-pickle layout.

Layouts (what torchvision's ``CIFAR10``/``CIFAR100`` download and read)::

    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

Each batch is a pickled dict with ``data`` (N x 3072 uint8, channel-major 32x32) and ``labels``
(CIFAR-10) or ``fine_labels``/``coarse_labels`` (CIFAR-100); the meta file holds the class names.

Choices:

* Missing folder: torchvision's downloader is tried once (into ``<root>``); offline, or when
  ``BENCH_NO_DOWNLOAD=1``, a :class:`DataNotFoundError` says where we looked, the layout and how to
  get the data. A folder that exists but lacks files is reported as such (no download attempt).
* Checksums: files whose md5 differs from the official release are read with a warning, not
  refused (re-encoded copies exist; the fingerprint in every record identifies what was read).
* Batches are read as data only (:mod:`bench.datasets._pickle_data`): a pickle that names any
  global besides numpy's array builders is refused before anything in it runs.
* Truncated or garbled pickles, or dicts without the expected keys/shapes, raise
  :class:`CorruptDataError` naming the file.
* ``cifar100`` has ``label="fine"`` (100 classes, default) or ``"coarse"`` (20 superclasses).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.data import Split
from bench.datasets._decode import warn_checksums
from bench.datasets._pickle_data import load_pickle
from bench.datasets.base import CorruptDataError, DatasetSource
from bench.registry import DATASETS

# official md5 sums (as listed by torchvision)
_CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
_CIFAR100_MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}


def _download_allowed() -> bool:
    return os.environ.get("BENCH_NO_DOWNLOAD", "").lower() not in ("1", "true", "yes")


class _CifarBase(DatasetSource):
    folder = ""
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    meta_file = ""
    md5: dict = {}
    tv_class = ""
    label_key = "labels"
    names_key = "label_names"

    def locate(self, root: Path) -> list[Path]:
        folder = root / self.folder
        names = [*self.train_files, *self.test_files, self.meta_file]
        if not folder.is_dir():
            err = self._try_download(root)
            if not folder.is_dir():
                raise self.missing(root, folder, self._how(err))
        files = [folder / n for n in names]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise self.missing(root, folder, f"The folder exists but lacks {', '.join(absent)}. "
                                             + self._how(None))
        return files

    def _how(self, err: str | None) -> str:
        tried = f"Automatic download failed ({err}). " if err else ""
        return (f"{tried}Get it with torchvision.datasets.{self.tv_class}('<data root>', download=True) "
                f"on a machine with a network, or unpack the official python archive "
                f"(https://www.cs.toronto.edu/~kriz/) into the data root (--data-root or BENCH_DATA_ROOT).")

    def _try_download(self, root: Path) -> str | None:
        if not _download_allowed():
            return "downloads disabled by BENCH_NO_DOWNLOAD"
        try:
            import torchvision.datasets as tvd

            root.mkdir(parents=True, exist_ok=True)
            getattr(tvd, self.tv_class)(str(root), train=True, download=True)
        except Exception as exc:  # offline, DNS, HTTP errors, bad archive: all reported the same way
            return f"{type(exc).__name__}: {exc}"
        return None

    # -- decoding ---------------------------------------------------------------------------------
    def _read_batches(self, files: list[Path]) -> Split:
        xs, ys = [], []
        for f in files:
            d = load_pickle(f)
            if "data" not in d or self.label_key not in d:
                raise CorruptDataError(f"{f}: expected keys 'data' and '{self.label_key}', "
                                       f"found {sorted(map(str, d))}")
            x = np.asarray(d["data"])
            y = np.asarray(d[self.label_key])
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(y) != len(x):
                raise CorruptDataError(f"{f}: 'data' must be uint8 (N, 3072) with N labels, got "
                                       f"{x.dtype} {x.shape} and {len(y)} labels")
            xs.append(torch.from_numpy(x.reshape(-1, 3, 32, 32).copy()))
            ys.append(torch.as_tensor(y, dtype=torch.long))
        return Split(torch.cat(xs), torch.cat(ys))

    def decode(self, root, files):
        by_name = {f.name: f for f in files}
        warn_checksums([(f, self.md5[f.name]) for f in files if f.name in self.md5], self.name)
        train = self._read_batches([by_name[n] for n in self.train_files])
        test = self._read_batches([by_name[n] for n in self.test_files])
        meta_path = by_name[self.meta_file]
        meta = load_pickle(meta_path)
        if self.names_key not in meta:
            raise CorruptDataError(f"{meta_path}: expected key '{self.names_key}', found {sorted(map(str, meta))}")
        classes = [c.decode("latin1") if isinstance(c, bytes) else str(c) for c in meta[self.names_key]]
        for split, what in ((train, "train"), (test, "test")):
            if len(split) and (int(split.y.min()) < 0 or int(split.y.max()) >= len(classes)):
                raise CorruptDataError(f"{self.name}: {what} labels outside 0..{len(classes) - 1}")
        return train, test, classes, {"origin": str(root / self.folder), "label_key": self.label_key}


@DATASETS.register("cifar10", num_classes=10, image_size=32)
class Cifar10(_CifarBase):
    """CIFAR-10 (python-pickle layout, 50k/10k 32x32 RGB images, 10 classes)."""

    num_classes = 10
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    md5 = _CIFAR10_MD5
    tv_class = "CIFAR10"
    layout = "<root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}"


@dataclass
class Cifar100Params:
    label: str = "fine"

    def validate(self):
        if self.label not in ("fine", "coarse"):
            raise ValueError(f"cifar100 label must be 'fine' or 'coarse', got '{self.label}'")


@DATASETS.register("cifar100", num_classes=100, image_size=32)
class Cifar100(_CifarBase):
    """CIFAR-100 (python-pickle layout, 50k/10k 32x32 RGB images, 100 fine or 20 coarse classes)."""

    Params = Cifar100Params
    num_classes = 100
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    md5 = _CIFAR100_MD5
    tv_class = "CIFAR100"
    layout = "<root>/cifar-100-python/{train, test, meta}"

    def __init__(self, params=None):
        super().__init__(params)
        coarse = self.params.label == "coarse"
        self.label_key = "coarse_labels" if coarse else "fine_labels"
        self.names_key = "coarse_label_names" if coarse else "fine_label_names"
        self.num_classes = 20 if coarse else 100
