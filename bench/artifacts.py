"""The artifact cache: compute an expensive artifact once, then load it (lock, load, compute, save).

One implementation serves every cache of the suite: backdoored models (``<cache>/models``),
defense outputs reused across clean cells (``<cache>/defended``) and attackers' surrogates and
generators (``<cache>/attacks/...``). An artifact is a tensor file (``<key>.pt``: tensors, numbers,
strings, lists, dicts, loaded as data only) with its metadata as JSON beside it (``<key>.json``,
written last, so its presence means the artifact is complete). A file lock per key makes
concurrent workers (in any process, on any machine sharing the folder) compute it once; the others
wait and load it. A file that is not plain data is refused with a clear error and kept as
evidence, never executed and never silently deleted.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from bench.files import atomic_torch_save, atomic_write_text, exclusive_lock, load_data


def artifact_paths(folder: str | Path, key: str) -> tuple[Path, Path]:
    folder = Path(folder)
    return folder / f"{key}.pt", folder / f"{key}.json"


def cached(folder: str | Path, key: str, compute: Callable[[], tuple[Any, dict]]) -> tuple[Any, dict, bool]:
    """``(data, meta, hit)``: the artifact ``key`` in ``folder``, computing it with ``compute()``
    (which returns ``(data, meta)``; ``meta`` must be JSON-serialisable) when it is absent."""
    data_path, meta_path = artifact_paths(folder, key)
    with exclusive_lock(Path(folder) / f"{key}.lock"):
        if meta_path.exists() and data_path.exists():
            return load_data(data_path, "cached artifact"), json.loads(meta_path.read_text()), True
        data, meta = compute()
        atomic_torch_save(data, data_path)
        atomic_write_text(meta_path, json.dumps(meta, sort_keys=True, default=str))
        return data, meta, False


def wait_for(folder: str | Path, key: str) -> None:
    """Block while another process computes the artifact ``key`` (returns at once otherwise)."""
    with exclusive_lock(Path(folder) / f"{key}.lock"):
        pass
