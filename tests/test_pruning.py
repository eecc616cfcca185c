"""bench.pruning, the building block Fine-Pruning and CLP share: the channel mask and the layer
lookup. CLP's conv-BN pairing is tested with CLP (tests/plugins/test_clp.py)."""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.models import create_model
from bench.pruning import resolve_layer, set_channel_mask


def test_channel_mask_is_exact_and_persistent_under_training():
    layer = nn.Conv2d(2, 4, 3, padding=1)
    set_channel_mask(layer, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    for _ in range(3):
        y = layer(torch.randn(2, 2, 5, 5))
        opt.zero_grad()
        (y - 1).pow(2).mean().backward()
        opt.step()
    y = layer(torch.randn(3, 2, 5, 5))
    assert y[:, [1, 3]].abs().max() == 0 and y[:, [0, 2]].abs().sum() > 0
    state = layer.state_dict()
    assert "channel_mask" in state


def test_last_stage_lookup_on_the_zoo():
    shape = (3, 32, 32)
    assert resolve_layer(create_model("resnet_tiny", 10), "auto", shape)[0] == "layer4"
    assert resolve_layer(create_model("mobilenetv2", 10), "auto", shape)[0] == "head_conv"
    assert resolve_layer(create_model("cnn_small", 10), "auto", shape)[0] == "layer3"
    assert resolve_layer(create_model("timm:resnet10t", 10), "auto", shape)[0] == "layer4"
    assert resolve_layer(create_model("resnet_tiny", 10), "net.layer2", shape)[0] == "layer2"
