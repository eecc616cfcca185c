"""Shared fixtures: small generated data, a private cache folder, two CPU threads."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


TEST_SALT = "tests-fixed-salt-0123456789abcdef"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache and data roots (nothing leaks between tests)."""
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_DATA_ROOT", str(tmp_path / "data"))
    # one fixed evaluator salt: tests draw the same reserve and poison in every run (a results
    # folder gets a random one; see bench.protocol)
    monkeypatch.setenv("BENCH_SALT", TEST_SALT)
    from bench.cell import clear_memo

    clear_memo()
    yield
    clear_memo()


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


# -- a simple attack and a backdoored digits model shared by the plug-in tests --------------------
from dataclasses import dataclass as _dataclass  # noqa: E402

from bench.attack import Attack, AttackParams  # noqa: E402
from bench.registry import ATTACKS  # noqa: E402


@_dataclass
class _PatchParams(AttackParams):
    size: int = 4


@ATTACKS.register("_test_patch")
class TestPatchAttack(Attack):
    """Test-only attack: a white square in the bottom-right corner, dirty label (an easy BadNet)."""

    Params = _PatchParams

    def apply_poison(self, x, idx):
        out = x.clone()
        out[:, :, -self.params.size:, -self.params.size:] = 1.0
        return out


# a 5 px patch and 6 epochs implant the backdoor whatever the draw (a 4 px patch in 4 epochs did
# only for some salts: ASR 0.48-0.99)
BACKDOOR_SPEC = dict(dataset="digits", model="cnn_tiny", attack="_test_patch", poison_ratio=0.1,
                     dataset_params={"image_size": 32}, attack_params={"size": 5},
                     train={"epochs": 6, "batch_size": 64, "lr": 0.05, "schedule": "onecycle"},
                     budget_scale=0.2)


@pytest.fixture(scope="session")
def backdoored_cell(tmp_path_factory):
    """(cell, backdoored model, no-defense metrics) for an easy BadNet-like attack on digits 32 px,
    trained once per test session. Use ``runner.build_context(defense, cell, model)`` to hand it
    to a defense exactly as the runner would."""
    from bench.runner import backdoored_model, build_cell
    from bench.spec import RunSpec

    cache = tmp_path_factory.mktemp("backdoor-cache")
    spec = RunSpec(defense="none", **BACKDOOR_SPEC)
    cell = build_cell(spec, cache_dir=cache, salt=TEST_SALT)   # built before the autouse fixture sets it
    model, meta = backdoored_model(cell, cache_dir=cache)
    return cell, model, meta["metrics"]
