"""Input-aware dynamic attack (attacks/iad.py, trains a generator): counts, dirty labels, cover
samples, input-dependent patterns, cross accuracy, the cache; bad parameters and cells."""
from __future__ import annotations

import math

import pytest
import torch

from bench.attack import AttackConfigError
from bench.registry import ATTACKS, ParamsError

from conftest import TARGET, attack_context as make_ctx, forbid_training as no_training, poison_with as poison

IAD_SMALL = {"width": 4, "depth": 2, "mask_epochs": 2, "train_epochs": 1}


@pytest.mark.parametrize("params,msg", [
    ({"pratio": 0.6, "cross_ratio": 0.5}, "pratio"),
    ({"mask_density": 0}, "mask_density"),
])
def test_bad_params_refused(params, msg):
    with pytest.raises(ParamsError, match=msg):
        ATTACKS.create("iad", **params)


def test_bad_cells_refused_before_training(digits16, monkeypatch):
    no_training(monkeypatch)
    y = digits16.train.y
    with pytest.raises(AttackConfigError, match="divisible by 8"):
        ATTACKS.create("iad").check(10, y, (3, 20, 20), 0.1)


def test_iad_counts_labels_cache(digits16, tmp_path, monkeypatch):
    ratio = 0.1
    attack, out = poison("iad", digits16, make_ctx(digits16, tmp_path / "a"), ratio, **IAD_SMALL)
    n = len(digits16.train)
    assert out.info["n_poison"] == math.floor(ratio * n) and out.info["n_cover"] == math.floor(0.1 * n)
    assert not (out.poison_mask & out.cover_mask).any()
    assert (out.data.y[out.poison_mask] == TARGET).all()            # dirty label
    keep = ~out.poison_mask
    assert torch.equal(out.data.y[keep], digits16.train.y[keep])    # cover keeps its label
    changed = (out.data.x != digits16.train.x).flatten(1).any(1)
    assert not changed[~(out.poison_mask | out.cover_mask)].any()
    x = digits16.test.x[:16].float() / 255
    pat, mask = attack.pattern_and_mask(x)
    assert pat.shape == x.shape and mask.shape == (16, 1, *x.shape[-2:])
    assert 0 <= pat.min() and pat.max() <= 1 and 0 <= mask.min() and mask.max() <= 1
    assert (pat - pat.roll(1, 0)).abs().flatten(1).sum(1).min() > 0  # patterns depend on the input
    extra = attack.extra_metrics(lambda xb: torch.zeros(len(xb), dtype=torch.long), digits16.test)
    assert 0 <= extra["cross_acc"] <= 1
    no_training(monkeypatch)
    attack2, out2 = poison("iad", digits16, make_ctx(digits16, tmp_path / "a"), ratio, **IAD_SMALL)
    assert out2.info["iad_cache_hit"] and torch.equal(out2.data.x, out.data.x)
