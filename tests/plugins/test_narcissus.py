"""Narcissus (attacks/narcissus.py, clean label, trains a surrogate): counts, the trigger's bound,
the cache (a second preparation trains nothing), the seed; bad parameters and cells."""
from __future__ import annotations

import pytest
import torch

from bench.registry import ATTACKS, ParamsError

from conftest import (TARGET, attack_context as make_ctx, check_clean_label_rules as clean_label_rules,
                     check_refuses_more_than_the_target_class as refuses_more_than_the_target_class,
                     forbid_training as no_training, poison_with as poison)

NARC = {"trigger_epochs": 20}


@pytest.mark.parametrize("params,msg", [
    ({"eps": 2.0}, "eps"),
    ({"pood": "tiny_imagenet"}, "pood"),
    ({"trigger_epochs": 0}, "trigger_epochs"),
    ({"cover_rate": 0.1}, "cover"),
])
def test_bad_params_refused(params, msg):
    with pytest.raises(ParamsError, match=msg):
        ATTACKS.create("narcissus", **params)


def test_bad_cells_refused_before_training(digits16, monkeypatch):
    refuses_more_than_the_target_class("narcissus", digits16, monkeypatch)


def test_narcissus_counts_bounds_cache_and_seed(digits16, tmp_path, monkeypatch):
    ratio = 0.05
    attack, out = poison("narcissus", digits16, make_ctx(digits16, tmp_path / "a"), ratio, **NARC)
    clean_label_rules(digits16, out, ratio)
    eps = attack.params.eps
    assert 0 < attack.delta.abs().max() <= eps + 1e-6
    diff = (out.data.x.int() - digits16.train.x.int()).abs()
    assert diff.max() <= 16 + 1                                    # 16/255 plus rounding
    losses = attack.losses                                         # synthesis lowers the loss
    assert len(losses) == NARC["trigger_epochs"] and sum(losses[-5:]) < sum(losses[:5])
    trig = attack.triggered_test(digits16.test)
    assert (trig.y_true != TARGET).all()
    tdiff = (trig.x.int() - digits16.test.x[trig.index].int()).abs()
    assert tdiff.max() <= 48 + 1                                    # test trigger is 3 * delta
    assert tdiff.float().mean() > diff[out.poison_mask].float().mean()
    # same seed, fresh cache: the same delta; another seed: a different one
    a2, _ = poison("narcissus", digits16, make_ctx(digits16, tmp_path / "b"), ratio, **NARC)
    assert torch.equal(a2.delta, attack.delta)
    # a second preparation with the cache loads it and trains nothing
    no_training(monkeypatch)
    a3, out3 = poison("narcissus", digits16, make_ctx(digits16, tmp_path / "a"), ratio, **NARC)
    assert out3.info["narcissus_cache_hit"] and torch.equal(a3.delta, attack.delta)
    assert torch.equal(out3.data.x, out.data.x)
