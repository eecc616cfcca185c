"""Channel Lipschitzness-based Pruning (defenses/clp.py): its scores against a direct spectral
norm, exact pruning, the conv-BN pairing it prunes over, the optional repair on the reserve."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.defense import DefenseConfigError
from bench.models import create_model
from bench.pruning import conv_bn_pairs
from bench.registry import DEFENSES
from defenses.clp import clp_prune, clp_scores

from conftest import cell_info, check_runs_end_to_end_and_keeps_clean_accuracy


@pytest.mark.parametrize("params", [{}, {"preset": "meca"}])
def test_defense_runs_end_to_end_and_keeps_clean_accuracy(backdoored_cell, params):
    check_runs_end_to_end_and_keeps_clean_accuracy(backdoored_cell, "clp", params)


def test_clp_needs_reserve_only_when_it_repairs():
    assert not DEFENSES.create("clp").declaration()["needs_reserve"]
    assert DEFENSES.create("clp", preset="meca").declaration()["needs_reserve"]
    assert DEFENSES.create("fine_tuning").declaration()["needs_reserve"]


def test_bad_input_is_refused_before_compute():
    DEFENSES.create("clp", reserve_fraction=0.0005).check(cell_info(n_train=1000))  # data-free
    with pytest.raises(DefenseConfigError, match="reserve"):
        DEFENSES.create("clp", repair_epochs=5, reserve_fraction=0.0005).check(cell_info(n_train=1000))


def _conv_bn(groups=1, cin=4, cout=16, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(cout),
                      nn.ReLU())
    with torch.no_grad():
        m[1].weight.uniform_(-2, 2)
        m[1].bias.uniform_(-1, 1)
        m[1].running_var.uniform_(0.2, 3)
    return m.eval()


@pytest.mark.parametrize("groups,cin", [(1, 4), (16, 16)])  # a plain and a depthwise conv
def test_clp_scores_match_direct_spectral_norm(groups, cin):
    m = _conv_bn(groups, cin)
    (scored, unpaired) = clp_scores(m, (cin, 8, 8))
    assert unpaired == [] and len(scored) == 1
    conv, bn = m[0], m[1]
    direct = []
    for k in range(16):
        w = conv.weight[k].reshape(cin // groups, -1).double() * (bn.weight[k] / bn.running_var[k].sqrt()).abs()
        direct.append(torch.linalg.svdvals(w)[0])
        if groups == cin:  # depthwise: a 1 x 9 matrix, UCLC = L2 norm of the scaled kernel
            assert torch.isclose(direct[-1], w.norm(), rtol=1e-5)
    assert torch.allclose(scored[0][3].double(), torch.stack(direct), rtol=1e-4)


def test_clp_prunes_the_outlying_channel_to_exact_zero():
    m = _conv_bn()
    with torch.no_grad():
        m[0].weight[5] *= 50
    pruned, _ = clp_prune(m, (4, 8, 8), u=3.0)
    assert pruned == {"1": [5]}
    assert m[1].weight[5] == 0 and m[1].bias[5] == 0
    y = m(torch.randn(2, 4, 8, 8))
    assert y[:, 5].abs().max() == 0 and y[:, [0, 1]].abs().sum() > 0


def test_clp_dataflow_pairing_skips_preactivation_bn():
    class PreAct(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
            self.bn0 = nn.BatchNorm2d(8)           # fed by conv0: a true pair
            self.bn1 = nn.BatchNorm2d(8)           # pre-activation: fed by relu(bn0 + x0)
            self.conv1 = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            h = self.conv0(x)
            h = F.relu(self.bn0(h)) + h
            return self.conv1(F.relu(self.bn1(h)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pairs, unpaired = conv_bn_pairs(PreAct(), (3, 8, 8), "dataflow")
        order_pairs, _ = conv_bn_pairs(PreAct(), (3, 8, 8), "order")
    assert [(c, b) for c, _, b, _ in pairs] == [("conv0", "bn0")] and unpaired == ["bn1"]
    assert [(c, b) for c, _, b, _ in order_pairs] == [("conv0", "bn0"), ("conv0", "bn1")]  # official rule


def test_clp_pairs_every_bn_of_resnet_and_mobilenet():
    for name in ("resnet_tiny", "mobilenetv2"):
        model = create_model(name, 10)
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        pairs, unpaired = conv_bn_pairs(model, (3, 32, 32), "dataflow")
        order, _ = conv_bn_pairs(model, (3, 32, 32), "order")
        assert len(pairs) == n_bn and not unpaired
        assert [(c, b) for c, _, b, _ in pairs] == [(c, b) for c, _, b, _ in order]
