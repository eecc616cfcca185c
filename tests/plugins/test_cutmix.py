"""CutMix fine-tuning on the clean reserve (defenses/cutmix.py): the pasted box, the mixed loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.engine import Batch
from bench.registry import DEFENSES, ParamsError
from defenses.cutmix import CutMixParams, cutmix_batch, cutmix_loss

from conftest import check_reserve_fraction_is_refused, check_runs_end_to_end_and_keeps_clean_accuracy


def test_defense_runs_end_to_end_and_keeps_clean_accuracy(backdoored_cell):
    check_runs_end_to_end_and_keeps_clean_accuracy(backdoored_cell, "cutmix", {})


def test_bad_input_is_refused_before_compute():
    check_reserve_fraction_is_refused("cutmix")
    with pytest.raises(ParamsError, match="lam_clip"):
        DEFENSES.create("cutmix", lam_clip=(0.8, 0.2))


def test_cutmix_pastes_a_box_of_area_one_minus_lambda():
    x = torch.zeros(4, 3, 32, 32)
    x[1] = 1
    perm = torch.tensor([1, 0, 3, 2])
    for seed in range(20):
        rng = np.random.default_rng(seed)
        mixed, lam_eff = cutmix_batch(x, 0.5, rng, perm)
        pasted = (mixed[0, 0] == 1).float().mean().item()   # image 0 received image 1's pixels
        assert pasted == pytest.approx(1 - lam_eff)
        assert torch.equal(mixed[2], x[2])                  # 3 -> 2: zeros into zeros
        assert 0.5 <= lam_eff <= 1.0                        # at most the unclipped box (area ~ 0.5)


def test_cutmix_loss_mixes_labels_in_proportion_to_pasted_area():
    seen = {}

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3 * 16 * 16, 5)

        def forward(self, x):
            seen["x"] = x
            return self.lin(x.flatten(1))

    model = Probe()
    b = 8
    x = torch.arange(b).float().view(b, 1, 1, 1).expand(b, 3, 16, 16) / 10   # image i is constant i/10
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    batch = Batch(x, y, torch.arange(b), 0, 0, 0.0)
    loss_fn = cutmix_loss(CutMixParams(prob=1.0, beta=1.0, lam_clip=(0.3, 0.7)), seed=3)
    for _ in range(10):
        loss = loss_fn(model, batch)
        mixed = seen["x"]
        changed = (mixed != x)[:, 0]
        area = changed.float().mean((1, 2)).max().item()   # images paired with themselves look unchanged
        # the partner of each image, read off its pasted pixels
        partner = torch.stack([(mixed[i, 0][changed[i]][0] * 10).round().long() if changed[i].any()
                               else torch.tensor(i) for i in range(b)])
        out = model.lin(mixed.flatten(1))
        expected = (1 - area) * F.cross_entropy(out, y) + area * F.cross_entropy(out, y[partner])
        assert torch.isclose(loss, expected, atol=1e-5), (loss, expected, area)
        assert area <= 0.7 + 1e-6  # lambda clipped to >= 0.3: the box never exceeds 70%
    plain = cutmix_loss(CutMixParams(prob=0.0), seed=0)(model, batch)
    assert torch.isclose(plain, F.cross_entropy(model(x), y))
