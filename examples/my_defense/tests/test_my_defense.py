"""The example defense's own test: it is registered, refuses bad input and runs on one cell."""
import pytest

from bench.registry import DEFENSES, ParamsError
from bench.runner import execute
from bench.spec import RunSpec


def test_entry_point_registers_the_defense():
    assert "my_defense" in DEFENSES.names()


def test_bad_sigma_is_refused():
    with pytest.raises(ParamsError, match="sigma"):
        DEFENSES.create("my_defense", sigma=2.0)


def test_runs_on_digits(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    record, _ = execute(RunSpec(dataset="digits", model="cnn_tiny", attack="badnet", poison_ratio=0.1,
                                defense="my_defense", dataset_params={"image_size": 32},
                                train={"epochs": 2, "batch_size": 64, "lr": 0.05}, budget_scale=0.5))
    assert record["acc"] > 0.5
