"""SCAn with fine-tuning (defenses/scan_ft.py, repair with the poisoned set): the infected class it
flags and unlearns, its statistic on a mixed class, bad input."""
from __future__ import annotations

import math
import re

import pytest
import torch

from bench import detection
from bench.defense import CellInfo, DefenseConfigError
from bench.registry import DEFENSES, ParamsError
from bench.runner import execute
from bench.spec import RunSpec

from conftest import BACKDOOR_SPEC, run_defense_with_detection


def test_scan_flags_the_target_class_and_unlearns(backdoored_cell):
    # the spec's lr 5e-4 moves little in 5 steps over ~130 samples; a larger rate shows the ascent
    out, m, det, ctx, cell = run_defense_with_detection("scan_ft", backdoored_cell, 1.0, unlearn_lr=0.01)
    target = cell.attack.params.target
    assert target in out.info["infected_classes"], out.info
    assert det["precision"] > 0.5 and det["tpr"] > 0.5, det
    assert det["auroc"] > 0.75, det   # 0.77 with the tests' salt; draw-dependent on this tiny cell
    flagged_labels = cell.poisoned.data.y[out.flags]
    assert (flagged_labels == target).float().mean() > 0.9   # flags come from infected classes only
    assert m["acc"] > 0.5, m
    assert m["asr"] < 0.5 * backdoored_cell[2]["asr"], m       # unlearning the flagged set removes it


@pytest.mark.parametrize("params,msg", [
    ({"mu_form": "mean"}, "mu_form"),
    ({"reserve_fraction": 1.2}, "reserve_fraction must be in (0, 1)"),
])
def test_bad_params_are_refused(params, msg):
    with pytest.raises(ParamsError, match=re.escape(msg)):
        DEFENSES.create("scan_ft", **params)


def test_bad_cells_are_refused_before_compute():
    small = CellInfo(10, (3, 16, 16), 50, "cnn_tiny", 0.05)
    with pytest.raises(DefenseConfigError, match="at least 2 clean reserve samples per class"):
        DEFENSES.create("scan_ft").check(small)
    # the runner refuses before training the backdoored model
    spec = RunSpec(defense="scan_ft", **dict(BACKDOOR_SPEC, dataset_params={"image_size": 16},
                                             reserve_fraction=0.01))
    with pytest.raises(DefenseConfigError, match="need >= 20"):
        execute(spec)


def test_scan_statistics_find_the_mixed_class():
    g = torch.Generator().manual_seed(0)
    dim, per = 6, 60
    means = torch.randn(5, dim, generator=g, dtype=torch.float64) * 4
    xs, ys = [], []
    for k in range(5):
        xs.append(means[k] + torch.randn(per, dim, generator=g, dtype=torch.float64))
        ys.append(torch.full((per,), k))
    x, y = torch.cat(xs), torch.cat(ys)
    su, se, f, _ = detection.scan_global_model(x - x.mean(0), y)
    # class 2 of a contaminated set: half its samples come from class 4's distribution
    mixed = torch.cat([means[2] + torch.randn(per, dim, generator=g, dtype=torch.float64),
                       means[4] + torch.randn(per, dim, generator=g, dtype=torch.float64)])
    j = []
    for k in range(5):
        data = mixed if k == 2 else means[k] + torch.randn(2 * per, dim, generator=g, dtype=torch.float64)
        data = data - x.mean(0)
        g1 = detection.two_means(data, f, g)
        if k == 2:  # 2-means separates the two sources
            assert abs(g1[:per].float().mean() - g1[per:].float().mean()) > 0.95
        j.append(detection.scan_class_statistic(data, g1, su, se, f, "posterior"))
    a = detection.mad_anomaly_index(torch.tensor(j))
    assert int(a.argmax()) == 2 and a[2] > math.exp(2), (j, a)
