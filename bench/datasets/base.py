"""The dataset plug-in interface, source fingerprints and the decoded-tensor cache.

A dataset plug-in is a :class:`DatasetSource` subclass registered in ``DATASETS``. It does two
things: :meth:`~DatasetSource.locate` finds its source files under a data root (or raises
:class:`DataNotFoundError` saying where it looked, which layout it expects and how to get it), and
:meth:`~DatasetSource.decode` turns them into uint8 tensors. :func:`load_dataset` wraps both with a
cache: the decoded tensors are stored under ``<cache>/datasets/`` keyed by the plug-in's name, its
parameters and a fingerprint of the source files' contents, so the next load of unchanged files
is a single ``torch.load`` (``weights_only=True``: a cache file is read as tensors, never run as
code). The fingerprint goes into every result record. ``write_cache=False`` reads an existing cache
entry but writes nothing (no cache file, no fingerprint memo): what suite validation uses, so that a
refused suite leaves no trace in the cache folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.data import DatasetBundle, Split
from bench.registry import DATASETS, params_to_dict


class DataNotFoundError(FileNotFoundError):
    """The data a dataset needs is not where it was looked for."""


class CorruptDataError(ValueError):
    """Source files exist but cannot be decoded (truncated, wrong format, inconsistent)."""


@dataclass
class NoParams:
    """A dataset with no options."""


class DatasetSource:
    """Base class of dataset plug-ins.

    Class attributes: ``num_classes`` (if fixed), ``image_size`` (default side), ``offline`` (needs
    no files at all), ``layout`` (a one-line description of the expected files, used in errors).
    """

    Params = NoParams
    num_classes: int | None = None
    image_size: int = 32
    offline: bool = False
    layout: str = ""
    metadata: dict = {}

    def __init__(self, params=None):
        self.params = params if params is not None else self.Params()

    # -- to implement -----------------------------------------------------------------------------
    def locate(self, root: Path) -> list[Path]:
        """The source files under ``root`` (raise DataNotFoundError when missing)."""
        raise NotImplementedError

    def decode(self, root: Path, files: list[Path]) -> tuple[Split, Split, list[str], dict]:
        """Decode the files into (train, test, class names, info)."""
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------------
    def missing(self, root: Path, looked: list[Path] | Path, how: str) -> DataNotFoundError:
        looked = looked if isinstance(looked, list) else [looked]
        where = ", ".join(str(p) for p in looked)
        return DataNotFoundError(
            f"dataset '{self.name}' not found: looked in {where} (data root {root}). Expected layout: "
            f"{self.layout}. {how}")


# -- fingerprints ---------------------------------------------------------------------------------
_HASH_MEMO = "file-hashes.json"


def _file_digest(path: Path, memo: dict) -> str:
    st = path.stat()
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"  # abspath: resolve() is slow on 100k files
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    memo[key] = h.hexdigest()
    return memo[key]


def fingerprint_files(files: list[Path], root: Path, memo_dir: Path | None = None,
                      update_memo: bool = True) -> str:
    """sha256 over the relative paths and content hashes of ``files`` (order-independent).

    Content hashes are memoised by (path, size, mtime) in ``memo_dir`` so that re-fingerprinting
    an unchanged tree does not re-read it; ``update_memo=False`` reads the memo but never writes it.
    """
    memo_path = memo_dir / _HASH_MEMO if memo_dir else None
    memo: dict = {}
    if memo_path and memo_path.exists():
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: str(p)):
        try:
            rel = f.relative_to(root)
        except ValueError:
            rel = f
        h.update(str(rel).encode())
        h.update(_file_digest(f, memo).encode())
    if memo_path and update_memo:
        _atomic_write_text(memo_path, json.dumps(memo))
    return h.hexdigest()[:16]


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


# -- loading --------------------------------------------------------------------------------------
def default_data_root() -> Path:
    return Path(os.environ.get("BENCH_DATA_ROOT", "data"))


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR", "results/cache"))


def make_source(name: str, **params) -> DatasetSource:
    return DATASETS.create(name, **params)


def check_dataset(name: str, data_root: str | Path | None = None, **params) -> list[Path]:
    """Validate that a dataset can be loaded, without decoding it (for up-front suite checks)."""
    source = make_source(name, **params)
    root = Path(data_root) if data_root is not None else default_data_root()
    return source.locate(root)


def load_dataset(name: str, data_root: str | Path | None = None, cache_dir: str | Path | None = None,
                 *, write_cache: bool = True, **params) -> DatasetBundle:
    """Load a registered dataset as uint8 tensors, through the on-disk cache.

    With ``write_cache=False`` an existing cache entry is still used, but a miss decodes the source
    files in memory only: nothing is created, replaced or deleted under ``cache_dir``."""
    source = make_source(name, **params)
    root = Path(data_root) if data_root is not None else default_data_root()
    cache = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "datasets"
    files = source.locate(root)
    fp = fingerprint_files(files, root, cache, update_memo=write_cache) if files else "offline"
    pjson = json.dumps(params_to_dict(source.params), sort_keys=True)
    key = hashlib.sha256(f"{source.name}|{pjson}|{fp}".encode()).hexdigest()[:16]
    path = cache / f"{source.name}-{key}.pt"
    cached = _read_cache(path, source.name, fp, root, discard_corrupt=write_cache)
    if cached is not None:
        return cached
    train, test, classes, info = source.decode(root, files)
    bundle = DatasetBundle(source.name, train, test, classes, fp, str(root), dict(info, params=json.loads(pjson)))
    if write_cache:
        _write_cache(path, bundle)
    return bundle


def _read_cache(path: Path, name: str, fingerprint: str, root: Path,
                discard_corrupt: bool) -> DatasetBundle | None:
    """The bundle cached at ``path`` (None when absent or unreadable; an unreadable file is deleted
    when ``discard_corrupt``, so that it is rebuilt, never trusted)."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, weights_only=True)
        return DatasetBundle(name, Split(blob["train_x"], blob["train_y"]), Split(blob["test_x"], blob["test_y"]),
                             list(blob["classes"]), fingerprint, str(root), json.loads(blob["info"]))
    except Exception:  # noqa: BLE001 - any damage means: decode again
        if discard_corrupt:
            path.unlink(missing_ok=True)
        return None


def _write_cache(path: Path, bundle: DatasetBundle) -> None:
    """Store a decoded bundle atomically (temp file + rename): tensors, class names, info as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    try:
        torch.save({"train_x": bundle.train.x, "train_y": bundle.train.y, "test_x": bundle.test.x,
                    "test_y": bundle.test.y, "classes": bundle.classes, "info": json.dumps(bundle.info)}, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
