"""Reading pickled dataset batches (CIFAR's python layout) as data, never as code.

A pickle can name any importable callable and call it while it loads (``os.system`` through
``__reduce__``), so a received batch file is read with :class:`DataUnpickler`, which resolves only
the few globals that plain data needs and refuses every other one before anything is called:

* dicts, lists, tuples, strings, bytes, numbers, booleans and None have their own opcodes and need
  no global at all;
* numpy arrays need ``_reconstruct`` (protocols 0-4) or ``_frombuffer`` (protocol 5), ``ndarray``
  and ``dtype``, and numpy scalars need ``scalar``; these are accepted under their numpy 1
  (``numpy.core.*``, what the official CIFAR files name) and numpy 2 (``numpy._core.*``) modules;
* a ``bytes`` object written by Python 3 with protocol 2 is rebuilt by ``_codecs.encode(text,
  "latin1")`` (accepted for the latin-1 codec only), an empty one by ``bytes()`` (without
  arguments only).

A refused global raises :class:`~bench.datasets.base.CorruptDataError` naming it; nothing of the
file has run by then.
"""
from __future__ import annotations

import codecs
import importlib
import pickle
from pathlib import Path
from typing import Any, Callable

from bench.datasets.base import CorruptDataError


def _numpy_attr(submodule: str, name: str) -> Callable[[], Any]:
    """A resolver of ``numpy._core.<submodule>.<name>`` (numpy 2) or ``numpy.core.<...>`` (numpy 1)."""
    def resolve():
        for module in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
            try:
                return getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"this numpy has no {submodule}.{name}")
    return resolve


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for bytes: the latin-1 codec, nothing else."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with the '{encoding}' codec is not plain data")
    return codecs.encode(text, "latin1")


def _empty_bytes(*args) -> bytes:
    """``bytes()`` as protocol 2 uses it for an empty bytes object: no arguments, nothing else."""
    if args:
        raise pickle.UnpicklingError("bytes(...) with arguments is not plain data")
    return b""


def _numpy(name: str) -> Callable[[], Any]:
    return lambda: getattr(importlib.import_module("numpy"), name)


_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): _numpy("ndarray"),
    ("numpy", "dtype"): _numpy("dtype"),
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("__builtin__", "bytes"): lambda: _empty_bytes,
    ("builtins", "bytes"): lambda: _empty_bytes,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _numpy_attr("multiarray", "_reconstruct")
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _numpy_attr("multiarray", "scalar")
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _numpy_attr("numeric", "_frombuffer")

ALLOWED_GLOBALS = frozenset(f"{m}.{n}" for m, n in _ALLOWED)


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle names a global that plain data does not need."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class DataUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain data and numpy arrays (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED.get((module, name))
        if resolve is None:
            raise ForbiddenGlobalError(module, name)
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not plain data")


def _str_keys(obj: dict) -> dict:
    """Top-level bytes keys (a batch re-pickled after loading with ``encoding="bytes"``) as strings."""
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def load_pickle(path: Path) -> dict:
    """A CIFAR-style pickled dict (latin-1 strings), read as data only.

    A global other than those data needs raises CorruptDataError naming it; truncated or garbled
    files raise CorruptDataError too."""
    try:
        with open(path, "rb") as fh:
            obj = DataUnpickler(fh, encoding="latin1").load()
    except ForbiddenGlobalError as exc:
        raise CorruptDataError(
            f"refused {path}: it asks to call {exc.qualname}, which a dataset batch never needs (a batch "
            f"holds only arrays, bytes, numbers, lists and dicts). The file is not a genuine batch, "
            f"possibly crafted; nothing in it was run. Delete it and get the data again") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, MemoryError, UnicodeDecodeError) as exc:
        raise CorruptDataError(f"cannot read {path}: not a valid pickle ({type(exc).__name__}: {exc}); "
                               f"the file is truncated or damaged, delete it and get it again") from exc
    if not isinstance(obj, dict):
        raise CorruptDataError(f"cannot read {path}: expected a pickled dict, got {type(obj).__name__}")
    return _str_keys(obj)
