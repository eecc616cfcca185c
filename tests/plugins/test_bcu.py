"""BCU (defenses/bcu.py): layer-wise re-initialisation by group, the groups of models without
stages, an end-to-end run without labels, bad parameters.

The end-to-end run uses the shared backdoored digits fixture and ``build_context`` exactly as the
runner does; the budget is cut through the defense's own epochs and the fixture's budget scale.
"""
from __future__ import annotations

import pytest
import torch

from bench.defense import CellInfo, DefenseConfigError
from bench.models import create_model
from bench.registry import DEFENSES, ParamsError

from conftest import cell_info, run_defense_with_checkpoints


def test_bcu_reinitialises_layers_by_group():
    from defenses.bcu import GROUPS, layer_groups, layerwise_reinit

    torch.manual_seed(0)
    teacher = create_model("resnet_tiny", 10, 16)
    teacher.train()
    teacher(torch.rand(8, 3, 16, 16))  # non-trivial BN running statistics
    fresh = create_model("resnet_tiny", 10, 16)
    groups = layer_groups(teacher)
    assert groups["net.stem.0"] == 0 and groups["net.linear"] == 5
    assert groups["net.layer2.0.shortcut.0"] == 2 and groups["net.layer4.0.conv2"] == 4
    assert not any("bn" in n for n in groups)
    ratios = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
    student, frac = layerwise_reinit(teacher, fresh, ratios, torch.Generator().manual_seed(1))
    t_mods, s_mods, f_mods = dict(teacher.named_modules()), dict(student.named_modules()), dict(fresh.named_modules())
    changed = [0] * 6
    total = [0] * 6
    for name, k in groups.items():
        for pname, tp in t_mods[name].named_parameters(recurse=False):
            sp = getattr(s_mods[name], pname)
            fp = getattr(f_mods[name], pname)
            assert torch.all((sp == tp) | (sp == fp))  # every element is the teacher's or the fresh one
            changed[k] += int((sp != tp).sum())
            total[k] += sp.numel()
    for k, r in enumerate(ratios):
        assert abs(changed[k] / total[k] - r) < 0.03, (GROUPS[k], changed[k] / total[k], r)
        assert abs(frac[GROUPS[k]] - r) < 0.03
    # normalisation layers and buffers are the teacher's
    for (n, tb), (_, sb) in zip(teacher.named_buffers(), student.named_buffers()):
        assert torch.equal(tb, sb), n
    for name, mod in teacher.named_modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            assert torch.equal(mod.weight, s_mods[name].weight) and torch.equal(mod.bias, s_mods[name].bias)


def test_bcu_groups_models_without_stages():
    from defenses.bcu import layer_groups

    groups = layer_groups(create_model("cnn_tiny", 10, 16))
    assert sorted(set(groups.values())) == [0, 1, 2, 3, 4, 5]
    assert groups["net.stem.0"] == 0 and groups["net.linear"] == 5
    order = [groups[n] for n in groups if groups[n] != 5]
    assert order == sorted(order)  # consecutive groups in layer order


def test_bcu_end_to_end_without_labels(backdoored_cell):
    cell, model, _ = backdoored_cell
    defense, ctx, out, acc, _ = run_defense_with_checkpoints("bcu", cell, model, epochs=20)
    assert defense.declaration()["reserve_labels"] is False and ctx.reserve.y is None
    frac = ctx.logs["bcu/reinit_fraction"]
    assert frac["layer3"] > frac["stem"]
    # re-initialised layers differ from the teacher's
    t = dict(ctx.model.named_parameters())
    diff = {n: float((p.detach().cpu() != t[n].detach().cpu()).float().mean()) for n, p in out.model.named_parameters()}
    assert diff["net.linear.weight"] > 0.05
    assert acc > 0.5, acc


@pytest.mark.parametrize("params,match", [
    ({"layerwise_ratio": [0.1, 0.2]}, "layerwise_ratio needs 6"),
    ({"layerwise_ratio": [0.1, 0.2, 0.3, 0.4, 0.5, 1.5]}, "probabilities"),
    ({"fresh_init": "xavier"}, "fresh_init"),
    ({"reserve_fraction": 1.5}, "reserve_fraction"),
])
def test_bad_params_are_refused(params, match):
    with pytest.raises(ParamsError, match=match):
        DEFENSES.create("bcu", **params)


def test_cell_dependent_settings_are_refused_before_compute():
    with pytest.raises(DefenseConfigError, match="reserve fraction"):
        DEFENSES.create("bcu").check(CellInfo(10, (3, 32, 32), 10, "cnn_tiny", 0.05))
    DEFENSES.create("bcu").check(cell_info(n_train=1000))  # the defaults pass
    assert DEFENSES.create("bcu").reserve_fraction(0.05) == 0.05
