"""The evaluator's secret: a salt that every seed of a run is derived with.

A defense must not be able to recompute the attack's random draws (which images were poisoned,
which form the reserve) from what it is handed. Every seed of a run is therefore derived from the
run seed *and* a secret salt (:class:`Seeds`): the evaluator's draws (reserve, poison selection,
attacker's preparation, backdoor training) and the defense's own seeds alike. The defense receives
only its derived seeds, 63-bit values it cannot invert without the salt (a 256-bit random value).

The salt belongs to a results folder (``<results>/protocol-salt``, created on first use): every
record of the folder is of the same draws, a resumed folder continues them, and a published
results folder ships its salt so others reproduce the same numbers. Records carry only the salt's
fingerprint (``salt_id``); artifact caches key their files by it, so a cache shared by several
results folders never mixes draws. ``BENCH_SALT`` overrides the file (it is removed from the
environment a defense process sees).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import torch

from bench.spec import derive_seed, stable_hash

SALT_FILE = "protocol-salt"
SALT_ENV = "BENCH_SALT"


class SaltError(RuntimeError):
    """The salt file exists but cannot be read."""


def folder_salt(folder: str | Path) -> str:
    """The salt of a folder: ``$BENCH_SALT``, else ``<folder>/protocol-salt`` (created once)."""
    env = os.environ.get(SALT_ENV)
    if env:
        return env.strip()
    path = Path(folder) / SALT_FILE
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:   # O_EXCL: two schedulers starting at once agree on one salt
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    return _read(path)


def _read(path: Path) -> str:
    text = path.read_text().strip()
    if len(text) < 16:
        raise SaltError(f"{path} does not hold a salt (expected a hex string); delete it to start "
                        f"new draws, or restore the folder's original")
    return text


def salt_id(salt: str) -> str:
    """A public fingerprint of the salt (records, cache keys); it does not reveal the salt."""
    return stable_hash(["bench-salt", salt], 10)


class Seeds:
    """Seeds of one run, derived from the run seed and the salt; ``tags`` name the purpose."""

    def __init__(self, seed: int, salt: str):
        self._seed, self._salt = int(seed), str(salt)

    def seed(self, *tags) -> int:
        return derive_seed(self._seed, self._salt, *tags)

    def generator(self, *tags) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed(*tags))
