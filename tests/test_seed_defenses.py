"""The seed defenses MCLDef and BCU: their mechanisms, end-to-end runs, bad parameters (NT-ML's
are in tests/plugins/test_nt_ml.py).

End-to-end runs use the shared backdoored digits fixture (target class 1, a white corner patch)
and ``build_context`` exactly as the runner does; budgets are cut through the defenses' own
epoch parameters and the fixture's budget scale (0.2), so the file stays fast.
"""
from __future__ import annotations

import pytest
import torch

from bench import engine, inversion
from bench.data import Split, balanced_subset
from bench.defense import CellInfo, DefenseConfigError
from bench.engine import TrainConfig
from bench.models import create_model
from bench.registry import DEFENSES, ParamsError
from bench.runner import build_context

from conftest import toy_split

TARGET = 1  # the fixture's target class (AttackParams default)


def _run(name, cell, model, **params):
    defense = DEFENSES.create(name, **params)
    tags = []
    ctx = build_context(defense, cell, model, checkpoint_cb=lambda tag, m: tags.append(tag))
    out = defense.run(ctx)
    acc = float((engine.predict(out.model, cell.bundle.test) == cell.bundle.test.y).float().mean())
    return defense, ctx, out, acc, tags


# -- trigger inversion ----------------------------------------------------------------------------
def test_inverted_trigger_flips_backdoored_model_to_target(backdoored_cell):
    cell, model, _ = backdoored_cell
    g = torch.Generator().manual_seed(0)
    clean = cell.bundle.train.subset(balanced_subset(cell.bundle.train, 128, g)).unlabeled()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = inversion.InversionConfig(epochs=12, patience=30)
    trig = inversion.invert_trigger(model, clean, TARGET, cfg, g)
    # the model is left untouched (frozen inside, eval mode, no gradients into it)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(before, model.parameters()))
    assert all(p.requires_grad for p in model.parameters())
    assert trig.mask.shape == (32, 32) and trig.pattern.shape == (3, 32, 32)
    assert trig.mask.min() >= 0 and trig.mask.max() <= 1 and trig.pattern.min() >= 0 and trig.pattern.max() <= 1
    assert len(trig.norm_history) == trig.epochs_run == 12
    assert trig.norm < trig.norm_history[0] + 1e-6 < 0.5 * 32 * 32  # the L1 term shrinks the mask
    test = cell.bundle.test
    held_out = (test.y != TARGET).nonzero().flatten()
    rate = inversion.flip_rate(model, test, trig, indices=held_out)
    clean_rate = float((engine.predict(model, test.subset(held_out)) == TARGET).float().mean())
    assert clean_rate < 0.1
    assert rate > 0.8, rate


def test_inversion_early_stops_on_patience():
    data = toy_split(32, size=8)
    model = create_model("cnn_tiny", 4, 8)
    cfg = inversion.InversionConfig(epochs=50, patience=0, lam=0.0, lr=1e-9, batch_size=32, augment=False)
    trig = inversion.invert_trigger(model, data, 0, cfg, torch.Generator().manual_seed(0))
    # lambda 0 and a vanishing lr: the norm never improves, so it stops after patience + 2 epochs
    assert trig.epochs_run == 2


def test_anomaly_index_flags_the_small_norm():
    norms = torch.tensor([50.0, 52, 48, 51, 49, 50, 53, 47, 50, 5])
    idx = inversion.anomaly_index(norms)
    assert int(idx.argmax()) == 9 and idx[9] > 2
    assert (idx[:9].abs() < 2).all()


# -- MCLDef ---------------------------------------------------------------------------------------
def test_mcldef_scans_classes_and_purifies(backdoored_cell):
    cell, model, nodef = backdoored_cell
    defense, ctx, out, acc, _ = _run("mcldef", cell, model, inv_epochs=25, inv_lr=0.02, epochs=20)
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
    _, ctx, out, acc, _ = _run("mcldef", cell, model, oracle_target=TARGET, inv_epochs=10, epochs=5,
                                 lr_drop_epochs=[1, 3])
    assert out.info["chosen_class"] == TARGET and "mcldef/mask_norms" not in ctx.logs
    assert acc > 0.5


# -- BCU ------------------------------------------------------------------------------------------
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
    defense, ctx, out, acc, _ = _run("bcu", cell, model, epochs=20)
    assert defense.declaration()["reserve_labels"] is False and ctx.reserve.y is None
    frac = ctx.logs["bcu/reinit_fraction"]
    assert frac["layer3"] > frac["stem"]
    # re-initialised layers differ from the teacher's
    t = dict(ctx.model.named_parameters())
    diff = {n: float((p.detach().cpu() != t[n].detach().cpu()).float().mean()) for n, p in out.model.named_parameters()}
    assert diff["net.linear.weight"] > 0.05
    assert acc > 0.5, acc


# -- bad parameters -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params,match", [
    ("bcu", {"layerwise_ratio": [0.1, 0.2]}, "layerwise_ratio needs 6"),
    ("bcu", {"layerwise_ratio": [0.1, 0.2, 0.3, 0.4, 0.5, 1.5]}, "probabilities"),
    ("bcu", {"fresh_init": "xavier"}, "fresh_init"),
    ("bcu", {"reserve_fraction": 1.5}, "reserve_fraction"),
    ("mcldef", {"oracle_target": -1}, "oracle_target"),
    ("mcldef", {"temperature": 0}, "temperature"),
    ("mcldef", {"lr_drop_epochs": [10, 1]}, "lr_drop_epochs"),
    ("mcldef", {"lr_drop_epochs": [0, 10]}, "lr_drop_epochs"),
])
def test_bad_params_are_refused(name, params, match):
    with pytest.raises(ParamsError, match=match):
        DEFENSES.create(name, **params)


def test_cell_dependent_settings_are_refused_before_compute():
    cell = CellInfo(num_classes=10, image_shape=(3, 32, 32), n_train=1000, model_name="cnn_tiny",
                    reserve_fraction=0.05)
    with pytest.raises(DefenseConfigError, match="oracle_target 10"):
        DEFENSES.create("mcldef", oracle_target=10).check(cell)
    with pytest.raises(DefenseConfigError, match="reserve fraction"):
        DEFENSES.create("bcu").check(CellInfo(10, (3, 32, 32), 10, "cnn_tiny", 0.05))
    for name in ("mcldef", "bcu"):
        DEFENSES.create(name).check(cell)  # the defaults pass
    assert DEFENSES.create("bcu").reserve_fraction(0.05) == 0.05
