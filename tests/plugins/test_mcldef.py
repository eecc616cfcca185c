"""MCLDef (defenses/mcldef.py): the class scan by trigger inversion, purification, the oracle
target, bad parameters.

End-to-end runs use the shared backdoored digits fixture (target class 1, a white corner patch)
and ``build_context`` exactly as the runner does; budgets are cut through the defense's own
epoch parameters and the fixture's budget scale (0.2), so the file stays fast.
"""
from __future__ import annotations

import pytest

from bench.defense import DefenseConfigError
from bench.registry import DEFENSES, ParamsError

from conftest import TARGET, cell_info, run_defense_with_checkpoints


def test_mcldef_scans_classes_and_purifies(backdoored_cell):
    cell, model, nodef = backdoored_cell
    defense, ctx, out, acc, _ = run_defense_with_checkpoints("mcldef", cell, model, inv_epochs=25, inv_lr=0.02,
                                                             epochs=20)
    assert defense.declaration()["reserve_labels"] is False and ctx.reserve.y is None
    assert out.info["oracle_target"] is None
    norms = ctx.logs["mcldef/mask_norms"]
    assert norms.shape == (10,) and int(norms.argmin()) == out.info["chosen_class"]
    assert out.info["chosen_class"] == TARGET  # the backdoor's class has the smallest mask
    assert out.info["anomaly_index"] > 2 and out.info["detected"]
    assert ctx.logs["mcldef/trigger_mask"].shape == (32, 32)
    assert ctx.logs["mcldef/trigger_pattern"].shape == (3, 32, 32)
    assert out.info["trigger_success_reserve"] > 0.5
    assert acc > 0.5, acc  # well above chance (0.1)
    assert out.model is not ctx.model


def test_mcldef_oracle_target_inverts_only_that_class(backdoored_cell):
    cell, model, _ = backdoored_cell
    _, ctx, out, acc, _ = run_defense_with_checkpoints("mcldef", cell, model, oracle_target=TARGET, inv_epochs=10,
                                                       epochs=5, lr_drop_epochs=[1, 3])
    assert out.info["chosen_class"] == TARGET and "mcldef/mask_norms" not in ctx.logs
    assert acc > 0.5


@pytest.mark.parametrize("params,match", [
    ({"oracle_target": -1}, "oracle_target"),
    ({"temperature": 0}, "temperature"),
    ({"lr_drop_epochs": [10, 1]}, "lr_drop_epochs"),
    ({"lr_drop_epochs": [0, 10]}, "lr_drop_epochs"),
])
def test_bad_params_are_refused(params, match):
    with pytest.raises(ParamsError, match=match):
        DEFENSES.create("mcldef", **params)


def test_cell_dependent_settings_are_refused_before_compute():
    cell = cell_info(n_train=1000)
    with pytest.raises(DefenseConfigError, match="oracle_target 10"):
        DEFENSES.create("mcldef", oracle_target=10).check(cell)
    DEFENSES.create("mcldef").check(cell)  # the defaults pass
