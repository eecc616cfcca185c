"""Blend (attacks/blend.py): exact blending at the train and test alphas, the noise trigger, a
missing trigger file, a bad alpha."""
import pytest
import torch

from bench.data import to_float, to_uint8
from bench.registry import ParamsError
from bench.triggers import TriggerFileError, procedural

from conftest import ATTACK_CLASSES as C, attack_data as data, make_attack as make, run_attack as run


def test_blend_exact_and_test_alpha():
    att, clean, out = run("blend", alpha_test=0.3)
    k = procedural("kitty", 32)[0]
    idx = out.poison_mask.nonzero().flatten()
    want = to_uint8(torch.lerp(to_float(clean.x[idx]), k.expand(len(idx), -1, -1, -1), 0.2))
    assert torch.equal(out.data.x[idx], want)
    test = data(seed=1)
    trig = att.triggered_test(test)
    want = to_uint8(torch.lerp(to_float(test.x[test.y != 1]), k.expand(int((test.y != 1).sum()), -1, -1, -1), 0.3))
    assert torch.equal(trig.x, want)
    att_n, _, out_n = run("blend", trigger="noise")
    assert out_n.info["trigger"] == "noise" and not torch.equal(out_n.data.x, out.data.x)


def test_bad_input_is_refused_before_compute(tmp_path):
    split = data()
    with pytest.raises(TriggerFileError, match="not found"):
        make("blend", trigger=str(tmp_path / "kitty.png")).check(C, split.y, split.image_shape, 0.1)
    with pytest.raises(ParamsError, match="alpha"):
        make("blend", alpha_train=1.5)
