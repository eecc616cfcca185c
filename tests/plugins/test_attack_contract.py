"""The contract the built-in attacks keep, checked over every one of them.

A new attack gets these checks by being added to the lists below (``ALL`` for an attack that only
applies a trigger, ``E2E_MODEL`` for one that trains a model first); its own behaviour (exact
trigger pixels, its parameters, its bad input) is tested in a file of its own in this folder
(``tests/plugins/test_<name>.py``). For each attack:

* its MeCa preset exists (target 1);
* poisoning selects exactly the ratio's count (capped by the candidates), flips labels only for
  dirty-label attacks, keeps positions and every untouched image, is reproducible with a seed;
  the triggered test set excludes the target class (TaCT: the source class only);
* it works at other resolutions and refuses a target class the cell does not have;
* end to end on digits 32 px with ``cnn_tiny``, it implants a backdoor (ASR clearly above chance).
"""
import math

import pytest
import torch

from bench.attack import AttackConfigError
from bench.registry import ATTACKS

from conftest import (ATTACK_CLASSES as C, ATTACK_N as N, ATTACK_RATIO as RATIO, attack_data as data,
                     make_attack as make, run_attack as run)

ALL = ["badnet", "blend", "sig", "wanet", "physicalba", "tact", "trojan", "adaptive_blend", "adaptive_patch"]


def test_all_registered_with_meca_presets():
    for name in ALL:
        entry = ATTACKS.get(name)
        assert "meca" in entry.obj.presets, name
        assert entry.make_params(preset="meca").target == 1
    assert make("tact").params.source_classes == [0] and make("tact").params.cover_classes == [5, 7]
    assert {n: make(n).params.cover_rate for n in ("wanet", "tact", "adaptive_blend", "adaptive_patch")} == \
        {"wanet": 0.05, "tact": 0.01, "adaptive_blend": 0.01, "adaptive_patch": 0.01}
    assert make("blend").params.alpha_train == 0.2


@pytest.mark.parametrize("name", ALL)
def test_selection_labels_positions_and_test_set(name):
    att, clean, out = run(name)
    p = att.params
    pm, cm = out.poison_mask, out.cover_mask
    ratio = RATIO.get(name, 0.1)
    if name == "sig":
        cand = clean.y == p.target
    elif name == "tact":
        cand = clean.y == 0
    else:
        cand = torch.ones(N, dtype=torch.bool)
    assert int(pm.sum()) == min(math.floor(ratio * N), int(cand.sum())) == out.info["n_poison"]
    assert not (pm & ~cand).any()
    n_cover = math.floor(p.cover_rate * N)
    if name == "tact":
        assert not (cm & ~((clean.y == 5) | (clean.y == 7))).any()
    assert int(cm.sum()) == n_cover == out.info["n_cover"]
    assert not (pm & cm).any()
    x, y = out.data.x, out.data.y
    assert x.dtype == torch.uint8 and x.shape == clean.x.shape
    touched = pm | cm
    assert torch.equal(x[~touched], clean.x[~touched])              # positions kept, others untouched
    assert torch.equal(y[~pm], clean.y[~pm])                        # cover and clean keep labels
    if att.label_mode == "clean":
        assert torch.equal(y, clean.y)
    else:
        assert (y[pm] == p.target).all()
    changed = (x[touched] != clean.x[touched]).flatten(1).any(1)
    assert changed.float().mean() > 0.9                            # the trigger is really there
    assert out.info["trigger"]
    test = data(seed=1)
    trig = att.triggered_test(test)
    keep = (test.y == 0) if name == "tact" else (test.y != p.target)
    assert torch.equal(trig.y_true, test.y[keep]) and trig.x.dtype == torch.uint8
    assert trig.target == p.target
    assert (trig.x != test.x[keep]).flatten(1).any(1).float().mean() > 0.9
    # seeded poisoning is reproducible (fresh instance), another seed selects differently
    _, _, again = run(name)
    assert torch.equal(again.data.x, x) and torch.equal(again.poison_mask, pm) and torch.equal(again.cover_mask, cm)
    _, _, other = run(name, seed=1)
    assert not torch.equal(other.poison_mask, pm)


@pytest.mark.parametrize("size", [64, 224])
def test_attacks_scale_to_other_resolutions(size):
    split = data(size=size, n=40)
    for name in ALL:
        att, _, out = run(name, split=split, ratio=0.05 if name in RATIO else 0.25)
        assert out.data.x.shape == split.x.shape and out.info["n_poison"] >= 1, name
        trig = att.triggered_test(data(size=size, n=20, seed=1))
        assert trig.x.shape[-1] == size, name


def test_bad_input_is_refused_before_compute():
    split = data()
    for name in ALL:
        with pytest.raises(AttackConfigError, match="target class 12 does not exist"):
            make(name, target=12).check(C, split.y, split.image_shape, 0.1)


# -- end to end: a backdoor per attack on digits 32 px ---------------------------------------------
# Fixed settings (one per attack, chosen once, not tuned per run). Patch and blend triggers are
# learnt in 4 epochs without augmentation (at 3, one seed of four missed BadNet's: ASR 0.15; at 4
# seeds 0-3 give ASR >= 0.99 for BadNet, Blend, TaCT, Trojan and the adaptive attacks, one thread); SIG and WaNet need the standard crop/flip augmentation
# and 4 epochs. Clean-label SIG poisons 9 % of N, i.e. nearly the whole target class (129 of ~144
# images). WaNet's default field (s = 0.5) moves pixels by well under one pixel, which on these
# 8x8-upscaled digits is not learnt in a CPU-sized run, so its test uses s = 4 (same mechanism,
# stronger field). Chance ASR of a clean model is ~0.02, a label flip without a trigger stays < 0.15.
NO_AUG = {"epochs": 4, "batch_size": 64, "lr": 0.05, "schedule": "onecycle", "augment": False}
AUG = {"epochs": 4, "batch_size": 64, "lr": 0.05, "schedule": "onecycle"}
# subtler triggers need a few more epochs on the 95 % of the set left after the reserve is carved out
AUG_LONG = {**AUG, "epochs": 7}
# clean-label SIG is the slowest to learn here, and at 7 epochs its ASR hangs on the seed and on the
# float summation order (seeds 0-4: 0.03-0.36, NCHW or channels-last alike); at 12 epochs it is
# 0.13-0.29 over seeds 0-4, so the bar sits at 0.1 (5x a clean model's ~0.02)
SIG_TRAIN = {**AUG, "epochs": 12}
NO_AUG_LONG = {**NO_AUG, "epochs": 9}
E2E = {  # name: (poison ratio, attack params, train recipe, min ASR, min clean ACC)
    "badnet": (0.1, {}, NO_AUG, 0.6, 0.8),
    "blend": (0.1, {}, NO_AUG, 0.6, 0.8),
    "sig": (0.09, {}, SIG_TRAIN, 0.1, 0.8),
    "wanet": (0.1, {"s": 4.0}, AUG_LONG, 0.3, 0.8),
    "physicalba": (0.1, {}, NO_AUG_LONG, 0.6, 0.5),   # T_phys on every training image costs clean ACC early
    "tact": (0.1, {}, NO_AUG, 0.6, 0.8),         # capped at the ~144 source-class images
    "trojan": (0.1, {}, NO_AUG, 0.6, 0.8),
    "adaptive_blend": (0.1, {}, NO_AUG, 0.4, 0.8),
    "adaptive_patch": (0.1, {}, NO_AUG, 0.4, 0.8),
}


# Backdoors that a CPU-sized run implants unreliably: whether one seed's victim learns the trigger
# hangs on the seed (and on the float summation order, so on the machine): ASR spans 0.03-0.79 over
# seeds 0-4 for IAD at 4 epochs, 0.02-0.76 for Narcissus, 0.03-0.36 for SIG at 7 epochs, 0.18-0.33 for
# LC at 8 epochs over seeds 0-2 (0.24-0.33 at 10; one thread: the tests run with one). Their tests
# judge the median of three seeds, which is stable where one seed is not.
SEED_SENSITIVE = ("sig", "narcissus", "iad", "lc")


def _victims(name, spec, tmp_path, seeds=(0, 1, 2)):
    """(clean ACC, ASR, the records) of ``spec``'s victim: one seed's, or for a seed-sensitive
    attack the medians over ``seeds``."""
    import dataclasses
    import statistics

    from bench.runner import execute

    seeds = seeds if name in SEED_SENSITIVE else (spec.seed,)
    recs = [execute(dataclasses.replace(spec, seed=seed), cache_dir=tmp_path / f"seed{seed}")[0] for seed in seeds]
    return statistics.median(r["acc"] for r in recs), statistics.median(r["asr"] for r in recs), recs


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_end_to_end_backdoor(name, tmp_path):
    from bench.spec import RunSpec

    ratio, params, train, min_asr, min_acc = E2E[name]
    spec = RunSpec(dataset="digits", model="cnn_tiny", attack=name, poison_ratio=ratio, defense="none",
                   dataset_params={"image_size": 32}, attack_params={"preset": "meca", **params}, train=train)
    acc, asr, recs = _victims(name, spec, tmp_path)
    assert acc > min_acc and asr > min_asr, (name, [(r["acc"], r["asr"]) for r in recs])
    rec = recs[0]
    assert rec["trigger"] and rec["n_poison"] > 0
    if name == "physicalba":
        assert 0 <= rec["extra"]["asr_physical"] <= 1
    if name == "tact":   # source-specific: other classes with the trigger mostly keep their class
        assert rec["extra"]["false_trigger_rate"] < rec["asr"]


# -- end to end: the attacks that train a model first (Narcissus, LC, IAD) -------------------------
E2E_MODEL = {   # ratio, attack params (tiny budgets), ASR it must beat (chance is about 0.1), clean ACC
    # Narcissus's victim sees 800 images for 4 epochs: clean ACC 0.74-0.86 over seeds 0-4. Its
    # trigger needs 300 epochs on the surrogate: at 120, ASR over seeds 0-4 was 0.31 / 0.12 / 0.64 /
    # 0.69 / 0.37 on one machine (median of seeds 0-2 under the bar, above it on another CPU); at
    # 300, 0.75 / 0.23 / 0.74 / 0.72 / 0.76
    "narcissus": (0.08, {"trigger_epochs": 300, "trigger_lr": 0.05}, 0.35, 0.65),
    # LC at 8 epochs, one thread: ASR 0.18 / 0.33 / 0.25 over seeds 0-2 (median 0.25)
    "lc": (0.1, {}, 0.15, 0.75),
    # IAD at 4 epochs spans ASR 0.03-0.79 over seeds 0-4 (either memory layout); at 8 epochs 0.36-0.64
    "iad": (0.1, {"width": 8, "mask_epochs": 10}, 0.25, 0.75),
}
N_TRAIN = {"iad": None, "lc": None}   # these need the whole digits training set (1,437 images)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(E2E_MODEL))
def test_end_to_end_asr_above_chance(name, tmp_path):
    from bench.spec import RunSpec

    ratio, params, min_asr, min_acc = E2E_MODEL[name]
    train = {"epochs": 4, "batch_size": 64, "lr": 0.05, "schedule": "onecycle"}
    if name == "lc":
        # the corner trigger sits on the border, where crops cut it off; a clean-label attack also
        # needs the victim to fit its few target-class images: 8 epochs
        train.update(augment=False, epochs=8)
    if name == "iad":
        train.update(epochs=8)
    spec = RunSpec(dataset="digits", model="cnn_tiny", attack=name, poison_ratio=ratio, defense="none",
                   dataset_params={"image_size": 32}, attack_params=params, train=train, budget_scale=0.25,
                   n_train=N_TRAIN.get(name, 800), n_test=300)
    acc, asr, recs = _victims(name, spec, tmp_path)
    assert acc > min_acc and asr > min_asr, (name, [(r["acc"], r["asr"]) for r in recs])
