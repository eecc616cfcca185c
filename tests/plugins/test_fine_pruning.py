"""Fine-Pruning (defenses/fine_pruning.py): which channels it prunes, the mask surviving
fine-tuning, the reserve-accuracy search, bad layers and ratios."""
from __future__ import annotations

import copy

import pytest
import torch

from bench.pruning import LayerNotFoundError, get_channel_mask, layer_outputs, mean_channel_activation, resolve_layer
from bench.registry import DEFENSES, ParamsError
from bench.runner import build_context

from conftest import (cell_info, check_reserve_fraction_is_refused, check_runs_end_to_end_and_keeps_clean_accuracy,
                      run_defense)


@pytest.mark.parametrize("params", [{}, {"preset": "meca"}])
def test_defense_runs_end_to_end_and_keeps_clean_accuracy(backdoored_cell, params):
    check_runs_end_to_end_and_keeps_clean_accuracy(backdoored_cell, "fine_pruning", params)


def test_fine_pruning_masks_lowest_clean_activation_and_mask_survives_finetuning(backdoored_cell):
    cell, model, _ = backdoored_cell
    defense = DEFENSES.create("fine_pruning", prune_ratio=0.25, finetune=True)
    ctx = build_context(defense, cell, model)
    reserve = ctx.reserve
    probe = copy.deepcopy(model)
    name, layer = resolve_layer(probe, "auto", cell.bundle.image_shape)
    assert name == "layer3"  # cnn_tiny's last conv stage
    act = mean_channel_activation(probe, layer, reserve)
    out = defense.run(ctx)
    k = int(0.25 * len(act))
    pruned = torch.tensor(out.info["pruned_channels"])
    assert len(pruned) == k == out.info["pruned"]
    # exactly the k channels of lowest mean clean activation (dormant first)
    assert set(pruned.tolist()) == set(torch.argsort(act)[:k].tolist())
    kept = torch.ones(len(act), dtype=torch.bool)
    kept[pruned] = False
    assert act[pruned].max() <= act[kept].min()
    # the mask is still there after fine-tuning: pruned channels output exactly 0
    _, new_layer = resolve_layer(out.model, name)
    mask = get_channel_mask(new_layer)
    assert mask is not None and torch.equal(mask.cpu() == 0, ~kept)
    maps = layer_outputs(out.model, new_layer, reserve)
    assert maps[:, pruned].abs().max() == 0
    assert maps[:, kept].abs().sum() > 0
    # fine-tuning did change the weights (so surviving it means something) and deepcopy keeps it
    w_old = dict(model.named_parameters())
    assert any(not torch.equal(w_old[n].cpu(), p.detach().cpu()) for n, p in out.model.named_parameters())
    clone = copy.deepcopy(out.model)
    _, clone_layer = resolve_layer(clone, name)
    assert layer_outputs(clone, clone_layer, reserve)[:, pruned].abs().max() == 0


@pytest.mark.parametrize("layer", ["auto", "layer2"])  # cached-head search and full-model search
def test_fine_pruning_search_uses_reserve_accuracy_rule(backdoored_cell, layer):
    cell, model, _ = backdoored_cell
    out, ctx, _ = run_defense(cell, model, "fine_pruning", layer=layer, finetune=False, step=0.05, acc_drop=0.1)
    steps = out.info["search"]
    base = steps[0]["reserve_acc"]
    k = out.info["pruned"]
    assert all(s["reserve_acc"] >= 0.9 * base for s in steps if 0 < s["pruned"] <= k)
    last = steps[-1]
    if last["pruned"] > k:  # the search stopped at the first step that broke the rule
        assert last["reserve_acc"] < 0.9 * base
    assert ctx.logs["reserve_acc_per_step"][0] == base


def test_bad_input_is_refused_before_compute():
    with pytest.raises(ParamsError, match="prune_ratio"):
        DEFENSES.create("fine_pruning", prune_ratio=1.0)
    with pytest.raises(ParamsError, match="prune_ratio"):
        DEFENSES.create("fine_pruning", prune_ratio=-0.1)
    with pytest.raises(LayerNotFoundError, match="layer9"):
        DEFENSES.create("fine_pruning", layer="layer9").check(cell_info())
    with pytest.raises(LayerNotFoundError, match="did you mean"):
        DEFENSES.create("fine_pruning", layer="layer22").check(cell_info("resnet_tiny"))
    with pytest.raises(LayerNotFoundError, match="layer2"):  # the MeCa preset on MobileNetV2
        DEFENSES.create("fine_pruning", preset="meca").check(cell_info("mobilenetv2"))
    DEFENSES.create("fine_pruning", preset="meca").check(cell_info("resnet_tiny"))
    check_reserve_fraction_is_refused("fine_pruning")
