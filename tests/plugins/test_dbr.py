"""Decoupling-Based backdoor Removal (defenses/dbr.py, repair with the poisoned set): the samples
it flags as sensitive, its separation loss, bad input."""
from __future__ import annotations

import re

import pytest
import torch

from bench.defense import CellInfo, DefenseConfigError
from bench.registry import DEFENSES, ParamsError

from conftest import run_defense_with_detection


def _poison_ratio(cell):
    return cell.poisoned.poison_mask.float().mean().item()


def test_dbr_flags_sensitive_samples_and_returns_a_usable_model(backdoored_cell):
    out, m, det, ctx, cell = run_defense_with_detection("dbr", backdoored_cell, 0.05)
    n = len(cell.poisoned.data)
    assert int(out.flags.sum()) == int(0.05 * n)
    assert det["precision"] > _poison_ratio(cell), det
    assert det["auroc"] > 0.5, det
    assert m["acc"] > 0.5, m
    assert "dbr_fct" in ctx.sample_logs


@pytest.mark.parametrize("params,msg", [
    ({"poison_ratio": 0.0}, "poison_ratio must be in (0, 1)"),
    ({"poison_ratio": 0.5, "clean_ratio": 0.6}, "poison_ratio + clean_ratio must be <= 1"),
    ({"fct_model": "nope"}, "fct_model"),
])
def test_bad_params_are_refused(params, msg):
    with pytest.raises(ParamsError, match=re.escape(msg)):
        DEFENSES.create("dbr", **params)


def test_bad_cells_are_refused_before_compute():
    with pytest.raises(DefenseConfigError, match="selects no sample"):
        DEFENSES.create("dbr").check(CellInfo(10, (3, 16, 16), 10, "cnn_tiny", 0.05))


def test_class_separation_loss_prefers_separated_centres():
    from defenses.dbr import class_separation_loss
    from bench.engine import Batch

    class Feat(torch.nn.Module):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def features(self, x):
            return self.f

    y = torch.tensor([0, 0, 1, 1])
    close = Feat(torch.tensor([[1.0, 0.1], [1.0, 0.0], [1.0, 0.2], [1.0, 0.3]]))
    apart = Feat(torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, 0.1]]))
    batch = Batch(None, y, torch.arange(4), 0, 0, 0.0)
    assert class_separation_loss(apart, batch) < 0 < class_separation_loss(close, batch)
