"""Label-consistent attack (attacks/lc.py, clean label, adversarial perturbation from a surrogate):
counts, the PGD bound, the stamped corners, the cache; bad parameters and cells."""
from __future__ import annotations

import pytest
import torch

from bench import engine
from bench.attack import AttackConfigError
from bench.registry import ATTACKS, ParamsError

from conftest import (attack_context as make_ctx, check_clean_label_rules as clean_label_rules,
                     check_refuses_more_than_the_target_class as refuses_more_than_the_target_class,
                     forbid_training as no_training, poison_with as poison)


@pytest.mark.parametrize("params,msg", [
    ({"surrogate": "adv_trained"}, "surrogate"),
    ({"eps": -0.1}, "eps"),
])
def test_bad_params_refused(params, msg):
    with pytest.raises(ParamsError, match=msg):
        ATTACKS.create("lc", **params)


def test_bad_cells_refused_before_training(digits16, monkeypatch):
    refuses_more_than_the_target_class("lc", digits16, monkeypatch)
    y = digits16.train.y
    with pytest.raises(AttackConfigError, match="trigger"):
        ATTACKS.create("lc", trigger="no_such_trigger").check(10, y, digits16.image_shape, 0.05)
    with pytest.raises(AttackConfigError, match="model factory"):
        ATTACKS.create("lc").poison(digits16.train, 0.05, torch.Generator().manual_seed(0))


def test_lc_counts_perturbation_bound_and_cache(digits16, tmp_path, monkeypatch):
    ratio = 0.05
    ctx = make_ctx(digits16, tmp_path / "a", scale=0.1)
    attack, out = poison("lc", digits16, ctx, ratio)
    clean_label_rules(digits16, out, ratio)
    assert out.info["lc_pgd_steps"] == 10 and out.info["lc_cache_hits"] == 0
    sign = attack.sign[0, 0]                                        # +1 / -1 cells, 0 elsewhere
    assert (sign != 0).sum() > 0
    x0 = digits16.train.x[out.poison_mask].int()
    x1 = out.data.x[out.poison_mask].int()
    off = sign == 0
    d = (x1 - x0).abs()[:, :, off]
    assert d.max() <= 8 and d.float().mean() > 0.5                  # PGD moved pixels, within 8/255
    assert (x1[:, :, sign > 0] == 255).all() and (x1[:, :, sign < 0] == 0).all()
    trig = attack.triggered_test(digits16.test)                     # test: stamp only
    t0 = digits16.test.x[trig.index].int()
    assert torch.equal(trig.x.int()[:, :, off], t0[:, :, off])
    no_training(monkeypatch)
    monkeypatch.setattr(engine, "map_batches", lambda *a, **k: (_ for _ in ()).throw(AssertionError("PGD ran")))
    attack2, out2 = poison("lc", digits16, make_ctx(digits16, tmp_path / "a", scale=0.1), ratio)
    assert out2.info["lc_cache_hits"] == out2.info["lc_batches"] > 0
    assert torch.equal(out2.data.x, out.data.x)
