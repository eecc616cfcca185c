"""The contract every registered defense keeps, checked over the whole registry.

A new defense gets these checks by being registered; its own behaviour is tested in a file of its
own in this folder (``tests/plugins/test_<name>.py``). For each defense:

* its card and its declaration agree, and unknown or mistyped parameters are refused before any
  compute;
* run through the real runner (in its own process, handed only what it declares, so reading
  anything undeclared would fail the run with ``ProtocolError``), it finishes on a tiny cell and
  returns a model of the cell's architecture;
* the same spec run twice gives the same numbers (its seeds come from the run, nothing else).
"""
from __future__ import annotations

import pytest

from bench.cell import clear_memo
from bench.registry import DEFENSES, ParamsError
from bench.runner import execute
from bench.spec import RunSpec

DEFENSE_NAMES = [n for n in DEFENSES.names() if not n.startswith("_") and n != "none"]
TINY = dict(dataset="digits", model="cnn_tiny", attack="badnet", poison_ratio=0.1, n_train=300, n_test=100,
            reserve_fraction=0.2,   # SCAn needs 2 reserve images of every class
            dataset_params={"image_size": 16}, train={"epochs": 1, "batch_size": 64, "lr": 0.05},
            budget_scale=0.05)


@pytest.fixture(scope="module")
def contract_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("contract-cache")


@pytest.mark.parametrize("name", DEFENSE_NAMES)
def test_card_and_declaration_agree_and_bad_params_are_refused(name):
    entry = DEFENSES.get(name)
    assert entry.card.declaration() == entry.obj.declaration()
    with pytest.raises(ParamsError, match="not_a_parameter"):
        DEFENSES.create(name, not_a_parameter=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", DEFENSE_NAMES)
def test_runs_isolated_returns_the_cell_architecture_and_is_deterministic(name, contract_cache):
    spec = RunSpec(defense=name, **TINY)
    first, _ = execute(spec, cache_dir=contract_cache)
    clear_memo()
    second, _ = execute(spec, cache_dir=contract_cache)
    assert first["status"] == "ok" and first["arch_ok"] is True
    assert first["isolation"] == "process"
    for key in ("acc", "asr", "ra", "tpr", "fpr", "auroc", "epochs_equiv"):
        assert first[key] == second[key], (name, key, first[key], second[key])
