"""Shared helpers of the file-based dataset plug-ins: image listing, parallel decoding, resizing
and checksum warnings (pickled batches are read by :mod:`bench.datasets._pickle_data`).

Images are decoded with Pillow in a joblib thread pool (Pillow releases the GIL while it decodes
and resizes, so threads scale without the cost of copying pixels between processes). Every image is
converted to RGB (grayscale and palette images included) and returned as a uint8 ``(N, 3, H, W)``
tensor. Resizing, where asked for, is "shorter side to ``size``, then center crop ``size`` x
``size``" with Pillow's antialiased bilinear filter (the usual evaluation transform of ImageNet-style
data); JPEGs are first reduced in the decoder (``Image.draft``) when they are at least twice the
target size, which is much faster and changes pixels by less than the resize itself.

Any file that cannot be decoded raises :class:`~bench.datasets.base.CorruptDataError` naming it.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from bench.datasets.base import CorruptDataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def n_jobs() -> int:
    """Decoder threads: ``BENCH_DECODE_THREADS`` or the number of CPUs (at most 16)."""
    env = os.environ.get("BENCH_DECODE_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(16, os.cpu_count() or 1))


def list_images(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly inside ``folder`` (case-insensitive extensions), sorted by name."""
    exts = tuple(e.lower() for e in extensions)
    with os.scandir(folder) as it:  # scandir: file types without one stat per file
        names = [e.name for e in it if e.name.lower().endswith(exts) and e.is_file()]
    return [folder / n for n in sorted(names)]


def class_folders(folder: Path) -> list[str]:
    """Names of the sub-folders of ``folder`` (hidden ones skipped), sorted."""
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _resize_center_crop(img, size: int):
    from PIL import Image

    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_image(path: Path, size: int | None = None) -> np.ndarray:
    """One image file as a uint8 ``(H, W, 3)`` RGB array (resized to ``size`` if given)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if size is not None and img.format == "JPEG":
                img.draft("RGB", (size, size))  # decoder-side reduction, keeps side >= size
            img = img.convert("RGB")
            if size is not None:
                img = _resize_center_crop(img, size)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CorruptDataError(f"cannot decode image {path}: {exc}") from exc


def decode_images(paths: Sequence[Path], size: int | None = None, what: str = "images") -> torch.Tensor:
    """Decode many files in parallel into a uint8 ``(N, 3, H, W)`` tensor.

    Without ``size`` all images must already share one size; otherwise a CorruptDataError names
    the first one that differs and suggests resizing.
    """
    from joblib import Parallel, delayed

    if not paths:
        return torch.empty((0, 3, size or 1, size or 1), dtype=torch.uint8)
    chunk = 256
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]

    def work(group):
        return [decode_image(p, size) for p in group]

    jobs = n_jobs()
    if jobs == 1 or len(chunks) == 1:
        arrays = [a for group in chunks for a in work(group)]
    else:
        parts = Parallel(n_jobs=jobs, prefer="threads")(delayed(work)(g) for g in chunks)
        arrays = [a for part in parts for a in part]
    first = arrays[0].shape
    for p, a in zip(paths, arrays):
        if a.shape != first:
            raise CorruptDataError(
                f"{what}: {p} is {a.shape[1]}x{a.shape[0]} but {paths[0]} is {first[1]}x{first[0]}; "
                f"images of different sizes need a resize (set the dataset's image_size)")
    out = torch.from_numpy(np.stack(arrays))
    return out.permute(0, 3, 1, 2).contiguous()


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def warn_checksums(files: Iterable[tuple[Path, str]], dataset: str) -> list[str]:
    """Compare files with their official md5 sums; one ``warnings.warn`` lists those that differ
    (re-encoded copies are read anyway: the fingerprint records what was actually read)."""
    differ = [p.name for p, expected in files if md5(p) != expected]
    if differ:
        warnings.warn(f"{dataset}: {', '.join(differ)} differ from the official release (md5 mismatch); "
                      f"reading them anyway, the data fingerprint records these exact files",
                      stacklevel=3)
    return differ


def scan_class_tree(split_dir: Path, classes: Sequence[str] | None = None,
                    extensions: Sequence[str] = IMAGE_EXTENSIONS) -> tuple[list[Path], list[int], list[str]]:
    """Files of a ``<split_dir>/<class>/<image>`` tree: (paths, label indices, class names).

    Classes are the sorted sub-folder names unless ``classes`` fixes them (then a folder that is
    not among them raises CorruptDataError: a test split must not invent classes).
    """
    found = class_folders(split_dir)
    if classes is None:
        classes = found
    else:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise CorruptDataError(f"{split_dir}: class folder(s) {', '.join(extra)} are not among "
                                   f"the training classes")
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for c in found:
        imgs = list_images(split_dir / c, extensions)
        paths += imgs
        labels += [index[c]] * len(imgs)
    return paths, labels, list(classes)
