"""Shared fixtures: small generated data, a private cache folder, two CPU threads."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache and data roots (nothing leaks between tests)."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "data"))
    from bench import runner

    runner._CELL_MEMO.clear()
    yield
    runner._CELL_MEMO.clear()


@pytest.fixture
def digits16():
    """The offline digits dataset at 16 px (fast)."""
    from bench.datasets import load_dataset

    return load_dataset("digits", image_size=16)


def toy_split(n: int = 64, size: int = 8, classes: int = 4, seed: int = 0):
    """Random uint8 images with balanced labels."""
    from bench.data import Split

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % classes
    return Split(x, y)
