"""Files written safely: atomic replacement, the user's umask, exclusive locks, data-only loading.

Every file the suite writes goes to a temporary name in the same folder and is renamed over the
target (``os.replace``), so a reader, or a run killed with SIGKILL, sees the old file or the new
one, never half of one. Files get the permissions the user's umask gives (not ``mkstemp``'s 0600).
Every tensor file the suite reads back is loaded with ``torch.load(weights_only=True)``: tensors,
numbers, strings, lists and dicts only, so a crafted file cannot run code (:func:`load_data`).
"""
from __future__ import annotations

import collections
import contextlib
import fcntl
import io
import os
import tempfile
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _current_umask()


class UnsafeFileError(RuntimeError):
    """A file that is not plain data (e.g. a pickle that would run code) or cannot be read."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~UMASK)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def torch_bytes(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def builtin_values(obj):
    """``obj`` with every subclass of a number or a string (e.g. the budget's
    :class:`~bench.budget.PhaseEpochs`, an ``IntEnum``) reduced to its base type, through dicts,
    lists and tuples; tensors and other values are kept as they are. The data-only loader
    refuses any class it does not know, so a file saved with such a value could not be read back."""
    if isinstance(obj, (bool, int, float, str)):
        for base in (bool, int, float, str):   # bool before int: a bool is an int
            if isinstance(obj, base):
                return obj if type(obj) is base else base(obj)
    if isinstance(obj, dict):
        items = [(builtin_values(k), builtin_values(v)) for k, v in obj.items()]
        if type(obj) in (dict, collections.OrderedDict) and all(
                a[0] is k and a[1] is v for a, (k, v) in zip(items, obj.items())):
            return obj   # unchanged: keep the object (a state dict keeps its _metadata)
        return type(obj)(items) if type(obj) in (dict, collections.OrderedDict) else dict(items)
    if isinstance(obj, (list, tuple)):
        values = [builtin_values(v) for v in obj]
        return values if isinstance(obj, list) else tuple(values)
    return obj


def atomic_torch_save(obj, path: Path) -> None:
    """Save ``obj`` as a tensor file that :func:`load_data` reads back (:func:`builtin_values`)."""
    atomic_write_bytes(path, torch_bytes(builtin_values(obj)))


def load_data(source, what: str = "file"):
    """Load a tensor file (a path or bytes) as data only; anything else raises
    :class:`UnsafeFileError` naming the file, and nothing in it is executed."""
    import torch

    fh = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        return torch.load(fh, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        name = what if isinstance(source, (bytes, bytearray)) else f"{what} {source}"
        raise UnsafeFileError(
            f"refused to load {name}: it is not plain tensor data ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Nothing in it was executed; delete it "
            f"if it is a cache file to have it recomputed") from exc


@contextlib.contextmanager
def exclusive_lock(path: Path):
    """A blocking exclusive flock (for short critical sections such as cache fills)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
