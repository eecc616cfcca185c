"""SIG (attacks/sig.py, clean label): the additive sine signal within its amplitude, only on the
target class; a ratio above what the target class holds (refused, or the whole class with
``cap_to_class``, as the meca preset has it)."""
import math

import pytest
import torch

from bench.attack import AttackConfigError

from conftest import run_attack as run


def test_sig_additive_signal_within_amplitude():
    att, clean, out = run("sig")
    assert torch.equal(out.data.y, clean.y)
    changed = (out.data.x != clean.x).flatten(1).any(1)
    assert not (changed & (clean.y != 1)).any()          # only target-class images change
    d = out.data.x.int() - clean.x.int()
    assert d.abs().max() <= round(30) + 1
    grey = torch.full((1, 3, 32, 32), 0.5)
    delta = att.apply_poison(grey, torch.tensor([0])) - grey
    prof = 30 / 255 * torch.sin(2 * math.pi * 6 * torch.arange(32) / 32)
    assert torch.allclose(delta[0, :, 5], prof.expand(3, -1), atol=1e-6)
    assert torch.equal(delta[0, :, 0], delta[0, :, 31])   # constant down each column
    with pytest.raises(AttackConfigError, match="holds only"):
        run("sig", ratio=0.2, cap_to_class=False)         # more than the target class holds
    _, clean, whole = run("sig", ratio=0.2)              # the meca preset: the whole class instead
    assert whole.info["n_poison"] == int((clean.y == 1).sum()) == int(whole.poison_mask.sum())
