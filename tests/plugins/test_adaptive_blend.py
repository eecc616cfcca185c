"""Adaptive-Blend (attacks/adaptive_blend.py): half the pieces hidden in training, the full trigger
at test time; image sizes not divisible by 4."""
import pytest
import torch

from bench.attack import AttackConfigError
from bench.data import to_float, to_uint8
from bench.triggers import procedural

from conftest import ATTACK_CLASSES as C, attack_data as data, make_attack as make, run_attack as run


def test_adaptive_blend_pieces():
    att, clean, out = run("adaptive_blend")
    k = procedural("kitty", 32)[0]
    for mask in (out.poison_mask, out.cover_mask):
        idx = mask.nonzero().flatten()
        x0 = clean.x[idx]
        d = (out.data.x[idx] != x0).any(1)                        # (n, 32, 32) changed pixels
        hidden = (~d).view(len(idx), 4, 8, 4, 8).all(4).all(2)    # (n, 4, 4) untouched pieces
        assert (hidden.sum((1, 2)) == 8).all()                    # exactly 8 of 16 pieces hidden
        shown = (~hidden).repeat_interleave(8, 1).repeat_interleave(8, 2).unsqueeze(1)
        blended = to_uint8(torch.lerp(to_float(x0), k.expand(len(idx), -1, -1, -1), 0.2))
        assert torch.equal(out.data.x[idx], torch.where(shown, blended, x0))
    test = data(seed=1)
    trig = att.triggered_test(test)
    full = to_uint8(torch.lerp(to_float(test.x[test.y != 1]), k.expand(int((test.y != 1).sum()), -1, -1, -1), 0.2))
    assert torch.equal(trig.x, full)                              # full trigger at test time


def test_bad_input_is_refused_before_compute():
    split = data()
    odd = data(size=30, n=40)
    with pytest.raises(AttackConfigError, match="divisible by 4, got 30x30"):
        make("adaptive_blend").check(C, odd.y, odd.image_shape, 0.1)
    make("adaptive_blend").check(C, split.y, split.image_shape, 0.1)   # 32 px is fine
