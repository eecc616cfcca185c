"""Anti-Backdoor Learning (defenses/abl.py, train stage): isolation of the lowest-loss samples
through the runner, its objectives, bad input."""
from __future__ import annotations

import re

import pytest
import torch

from bench.defense import CellInfo, DefenseConfigError
from bench.registry import DEFENSES, ParamsError
from bench.runner import execute
from bench.spec import RunSpec

from conftest import BACKDOOR_SPEC


def test_abl_isolates_mostly_poison_through_the_runner():
    # train stage: the runner hands ABL only the poisoned set; 16 px and a tiny budget
    # (1 isolation epoch, 3 clean epochs, 1 unlearning epoch) keep it fast
    spec = RunSpec(defense="abl", **dict(BACKDOOR_SPEC, dataset_params={"image_size": 16},
                                         train=dict(BACKDOOR_SPEC["train"], epochs=1), budget_scale=0.05))
    record, diag = execute(spec)
    ratio = record["n_poison"] / record["n_train"]
    assert record["status"] == "ok"
    assert record["flagged"] == int(0.01 * record["n_train"])
    assert record["precision"] > 0.5 > 3 * ratio, record        # D_b is mostly poison
    assert record["auroc"] > 0.8, record                        # -loss ranks poison first
    assert record["acc"] > 0.5, record                          # chance is 0.1
    assert "abl_isolation_loss" in diag["sample_logs"]
    assert record["epochs_equiv"] == pytest.approx(1 + 3 * 0.99 + 0.01, abs=0.05)


@pytest.mark.parametrize("params,msg", [
    ({"isolation_ratio": 0.0}, "isolation_ratio must be in (0, 1)"),
    ({"isolation_ratio": 1.5}, "isolation_ratio must be in (0, 1)"),
    ({"gamma": -1}, "gamma"),
])
def test_bad_params_are_refused(params, msg):
    with pytest.raises(ParamsError, match=re.escape(msg)):
        DEFENSES.create("abl", **params)


def test_bad_cells_are_refused_before_compute():
    small = CellInfo(10, (3, 16, 16), 50, "cnn_tiny", 0.05)
    with pytest.raises(DefenseConfigError, match="isolates no sample"):
        DEFENSES.create("abl").check(small)


def test_abl_objectives():
    from defenses.abl import cutout, lga_loss
    from bench.engine import Batch

    x = torch.ones(4, 3, 32, 32)
    out = cutout(x, 3, torch.Generator().manual_seed(0))
    holes = (out == 0).all(1).sum((1, 2))
    assert holes.max() <= 4 and holes.min() >= 1                   # a 2x2 hole, clipped at borders

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.nn.Parameter(logits)

        def forward(self, x):
            return self.logits

    y = torch.tensor([0, 1])
    easy = Fixed(torch.tensor([[5.0, -5.0], [-5.0, 5.0]]))       # CE below gamma: ascend
    hard = Fixed(torch.tensor([[-5.0, 5.0], [5.0, -5.0]]))       # CE above gamma: descend
    batch = Batch(None, y, torch.arange(2), 0, 0, 0.0)
    assert lga_loss(0.5)(easy, batch) < 0 < lga_loss(0.5)(hard, batch)
