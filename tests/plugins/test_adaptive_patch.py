"""Adaptive-Patch (attacks/adaptive_patch.py): one of four partial triggers per sample in sorted
blocks, the full badge at test time, the toolbox preset; unknown triggers and mismatched alphas."""
import pytest
import torch

from bench.data import to_uint8
from bench.registry import ParamsError
from bench.triggers import TriggerError, procedural

from conftest import ATTACK_CLASSES as C, attack_data as data, make_attack as make, run_attack as run


def test_adaptive_patch_one_trigger_per_sample():
    att, clean, out = run("adaptive_patch")
    masks = [procedural(f"firefox_split_{q}", 32)[1][0].bool() for q in (1, 2, 3, 4)]
    for sel in (out.poison_mask, out.cover_mask):
        idx = sel.nonzero().flatten()
        tid = att.trigger_ids(idx)
        counts = torch.bincount(tid, minlength=4)
        assert counts.max() - counts.min() <= 1
        assert torch.equal(tid, torch.arange(len(idx)) * 4 // len(idx))   # sorted blocks (toolbox)
        for i, j in zip(idx.tolist(), tid.tolist()):
            d = (out.data.x[i] != clean.x[i]).any(0)
            assert not (d & ~masks[j]).any() and d[masks[j]].float().mean() > 0.9
    test = data(seed=1)
    trig = att.triggered_test(test)
    pat, m = procedural("firefox_badge", 32)
    mm = m[0].bool()
    assert torch.equal(trig.x[:, :, mm], to_uint8(pat)[:, mm].expand(len(trig.x), -1, -1))
    tb = make("adaptive_patch", preset="toolbox")
    assert tb.params.train_alphas == [0.5, 0.2, 0.5, 0.3] and tb.params.test_triggers == ["phoenix5x2", "grid4"]


def test_bad_input_is_refused_before_compute():
    split = data()
    with pytest.raises(TriggerError, match="unknown trigger"):
        make("adaptive_patch", train_triggers=["grid3", "firefx"], train_alphas=[1, 1]).check(
            C, split.y, split.image_shape, 0.1)
    with pytest.raises(ParamsError, match="train_alphas"):
        make("adaptive_patch", train_triggers=["grid3"])
