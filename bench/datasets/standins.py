"""Generated stand-ins for the file-based datasets, written in each dataset's real on-disk layout.

A stand-in is a small synthetic dataset saved exactly as the real release is laid out, so that the
real loader (:mod:`bench.datasets.cifar`, :mod:`~bench.datasets.tinyimagenet`,
:mod:`~bench.datasets.imagenette`) reads it: CIFAR-10/100 python pickles, Tiny-ImageNet's folder
tree with ``wnids.txt``, ``words.txt`` and ``val/val_annotations.txt``, Imagenette's
``{train,val}/<wnid>/*.JPEG`` tree. The tests build their small data with these writers, and
``run --miniature`` (:mod:`bench.miniature`) writes them where the real data is absent.

Images are learnable on purpose: each class has a coarse random colour layout (a 4x4 grid blown up
to the image size) and every image is that layout plus noise, so a model trained for one epoch is
better than chance and the defenses see ordinary (not degenerate) models. Everything is drawn from
``seed``: the same call writes the same bytes (JPEG encoding included, for one Pillow version), so
the files' fingerprint, and with it the decoded-tensor cache, is stable across sessions.

:data:`WRITERS` maps a dataset name to its writer and to the folders it creates under a data root.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bench.datasets.imagenette import NAMES as IMAGENETTE_NAMES

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# -- pixels ---------------------------------------------------------------------------------------
def class_images(labels: Sequence[int], size: int | tuple[int, int], seed: int, noise: int = 48) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` images: class ``c``'s coarse colour layout plus per-image noise."""
    h, w = (size, size) if isinstance(size, int) else size
    labels = np.asarray(labels, dtype=np.int64)
    out = np.empty((len(labels), h, w, 3), dtype=np.uint8)
    rng = np.random.default_rng([seed, 1])
    layouts: dict[int, np.ndarray] = {}
    for i, c in enumerate(labels.tolist()):
        if c not in layouts:
            grid = np.random.default_rng([seed, 2, c]).integers(40, 216, (4, 4, 3))
            rows = (np.arange(h) * 4 // h)[:, None]
            cols = (np.arange(w) * 4 // w)[None, :]
            layouts[c] = grid[rows, cols].astype(np.int16)
        img = layouts[c] + rng.integers(-noise, noise + 1, (h, w, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def save_image(path: Path, arr: np.ndarray, fmt: str | None = None, gray: bool = False) -> None:
    """Save an ``(H, W, 3)`` uint8 array (as grayscale with ``gray``), creating its folder."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, "RGB")
    if gray:
        img = img.convert("L")
    img.save(path, format=fmt)


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _rows(images: np.ndarray) -> np.ndarray:
    """CIFAR's rows: ``(N, 3072)`` channel-major (the red plane, then green, then blue)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


# -- CIFAR ----------------------------------------------------------------------------------------
def write_cifar10(root: str | Path, per_batch: int = 60, n_test: int = 100, seed: int = 0) -> Path:
    """``<root>/cifar-10-batches-py`` with five training batches of ``per_batch`` images, a test
    batch of ``n_test`` and ``batches.meta``. Image ``k`` of a file is labelled ``k % 10``."""
    d = Path(root) / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        y = [k % 10 for k in range(per_batch)]
        _dump(d / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5",
                                      "data": _rows(class_images(y, 32, seed * 100 + i)), "labels": y,
                                      "filenames": [f"standin_{i}_{k}.png" for k in range(per_batch)]})
    y = [k % 10 for k in range(n_test)]
    _dump(d / "test_batch", {"batch_label": "testing batch 1 of 1", "data": _rows(class_images(y, 32, seed * 100 + 9)),
                             "labels": y, "filenames": [f"standin_test_{k}.png" for k in range(n_test)]})
    _dump(d / "batches.meta", {"num_cases_per_batch": per_batch, "num_vis": 3072, "label_names": CIFAR10_CLASSES})
    return d


def write_cifar100(root: str | Path, n_train: int = 800, n_test: int = 100, seed: int = 0) -> Path:
    """``<root>/cifar-100-python/{train, test, meta}``. Image ``k`` of a split has fine label
    ``17 k % 100`` (every class once in each 100 images) and coarse label ``3 k % 20``."""
    d = Path(root) / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    for name, n, s in (("train", n_train, 1), ("test", n_test, 2)):
        fine = [k * 17 % 100 for k in range(n)]
        _dump(d / name, {"filenames": [f"standin_{name}_{k}.png" for k in range(n)], "batch_label": name,
                         "fine_labels": fine, "coarse_labels": [k * 3 % 20 for k in range(n)],
                         "data": _rows(class_images(fine, 32, seed * 100 + s))})
    _dump(d / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                       "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return d


# -- Tiny-ImageNet --------------------------------------------------------------------------------
def tiny_wnids(n: int = 200) -> list[str]:
    """``n`` made-up wnids in a shuffled order (``wnids.txt`` is unsorted in the real release)."""
    ids = [f"n{90000000 + i:08d}" for i in range(n)]
    return [ids[i] for i in np.random.default_rng(0).permutation(n)]


def write_tinyimagenet(root: str | Path, wnids: Sequence[str] | None = None, train_per_class: int = 7,
                       val_labels: Sequence[str] | None = None, words: dict[str, str] | None = None,
                       gray: int = 1, seed: int = 0) -> Path:
    """``<root>/tiny-imagenet-200``: ``wnids.txt`` (the given order), ``words.txt`` (``words`` or
    ``class <i>`` names), ``train/<wnid>/images/<wnid>_<i>.JPEG`` (``train_per_class`` each, 64x64,
    the last class with ``gray`` extra grayscale images), ``val/images/val_<i>.JPEG`` labelled by
    ``val_labels`` (default: every class once) in ``val/val_annotations.txt``."""
    wnids = list(wnids) if wnids is not None else tiny_wnids()
    base = Path(root) / "tiny-imagenet-200"
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    if words is None:
        words = {w: f"class {i}, stand-in" for i, w in enumerate(sorted(wnids))}
    (base / "words.txt").write_text("".join(f"{w}\t{names}\n" for w, names in words.items()))
    index = {w: i for i, w in enumerate(wnids)}
    for w in wnids:
        imgs = class_images([index[w]] * train_per_class, 64, [seed, 1, index[w]])
        for i, arr in enumerate(imgs):
            save_image(base / "train" / w / "images" / f"{w}_{i}.JPEG", arr, "JPEG")
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
    last = wnids[-1]
    for j, arr in enumerate(class_images([index[last]] * gray, 64, [seed, 3])):
        save_image(base / "train" / last / "images" / f"{last}_{train_per_class + j}.JPEG", arr, "JPEG", gray=True)
    val_labels = list(val_labels) if val_labels is not None else sorted(wnids)
    ann = []
    for i, (w, arr) in enumerate(zip(val_labels, class_images([index[w] for w in val_labels], 64, [seed, 2]))):
        save_image(base / "val" / "images" / f"val_{i}.JPEG", arr, "JPEG")
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t10\t10\n")
    (base / "val" / "val_annotations.txt").write_text("".join(ann))
    return base


# -- Imagenette -----------------------------------------------------------------------------------
def write_imagenette(root: str | Path, variant: str = "imagenette2-160", side: int = 160,
                     wnids: Sequence[str] | None = None, train_per_class: int = 30, val_per_class: int = 10,
                     gray: int = 1, seed: int = 0) -> Path:
    """``<root>/<variant>/{train,val}/<wnid>/<wnid>_<i>.JPEG`` for the given wnids (default: the
    ten of the release), shorter side ``side`` in alternating landscape and portrait shapes, and
    ``gray`` extra grayscale images in the first wnid's training folder."""
    wnids = list(wnids) if wnids is not None else sorted(IMAGENETTE_NAMES)
    base = Path(root) / variant
    long_side = side * 4 // 3
    for split, n, s in (("train", train_per_class, 1), ("val", val_per_class, 2)):
        for k, w in enumerate(wnids):
            for i in range(n):
                shape = (side, long_side) if i % 2 == 0 else (long_side, side)   # (H, W)
                arr = class_images([k], shape, [seed, s, k, i])[0]
                save_image(base / split / w / f"{w}_{i}.JPEG", arr, "JPEG")
    for j in range(gray):
        arr = class_images([0], side, [seed, 3, j])[0]
        save_image(base / "train" / wnids[0] / f"gray_{j}.JPEG", arr, "JPEG", gray=True)
    return base


# name -> (folders it writes under a data root, writer(root, n_train, n_test, image_size))
def _cifar10(root, n_train, n_test, image_size):
    return write_cifar10(root, per_batch=-(-n_train // 5), n_test=n_test)


def _cifar100(root, n_train, n_test, image_size):
    return write_cifar100(root, n_train=n_train, n_test=n_test)


def _tiny(root, n_train, n_test, image_size):
    wnids = tiny_wnids()
    per_class = max(1, -(-n_train // len(wnids)))
    val = [sorted(wnids)[k % len(wnids)] for k in range(max(n_test, len(wnids)))]
    return write_tinyimagenet(root, wnids, per_class, val)


def _imagenette(root, n_train, n_test, image_size):
    side = 160 if (image_size or 224) <= 160 else 320
    return write_imagenette(root, f"imagenette2-{side}", side, train_per_class=max(1, -(-n_train // 10)),
                            val_per_class=max(1, -(-n_test // 10)))


WRITERS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "cifar10": (("cifar-10-batches-py",), _cifar10),
    "cifar100": (("cifar-100-python",), _cifar100),
    "tinyimagenet": (("tiny-imagenet-200",), _tiny),
    "imagenette": (("imagenette2-160", "imagenette2-320", "imagenette2"), _imagenette),
}
