"""bench.inversion, trigger inversion (Neural Cleanse style) as MCLDef uses it: the inverted
trigger flips the backdoored model, early stopping, the anomaly index."""
from __future__ import annotations

import torch

from bench import engine, inversion
from bench.data import balanced_subset
from bench.models import create_model

from conftest import TARGET, toy_split


def test_inverted_trigger_flips_backdoored_model_to_target(backdoored_cell):
    cell, model, _ = backdoored_cell
    g = torch.Generator().manual_seed(0)
    clean = cell.bundle.train.subset(balanced_subset(cell.bundle.train, 128, g)).unlabeled()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = inversion.InversionConfig(epochs=12, patience=30)
    trig = inversion.invert_trigger(model, clean, TARGET, cfg, g)
    # the model is left untouched (frozen inside, eval mode, no gradients into it)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(before, model.parameters()))
    assert all(p.requires_grad for p in model.parameters())
    assert trig.mask.shape == (32, 32) and trig.pattern.shape == (3, 32, 32)
    assert trig.mask.min() >= 0 and trig.mask.max() <= 1 and trig.pattern.min() >= 0 and trig.pattern.max() <= 1
    assert len(trig.norm_history) == trig.epochs_run == 12
    assert trig.norm < trig.norm_history[0] + 1e-6 < 0.5 * 32 * 32  # the L1 term shrinks the mask
    test = cell.bundle.test
    held_out = (test.y != TARGET).nonzero().flatten()
    rate = inversion.flip_rate(model, test, trig, indices=held_out)
    clean_rate = float((engine.predict(model, test.subset(held_out)) == TARGET).float().mean())
    assert clean_rate < 0.1
    assert rate > 0.8, rate


def test_inversion_early_stops_on_patience():
    data = toy_split(32, size=8)
    model = create_model("cnn_tiny", 4, 8)
    cfg = inversion.InversionConfig(epochs=50, patience=0, lam=0.0, lr=1e-9, batch_size=32, augment=False)
    trig = inversion.invert_trigger(model, data, 0, cfg, torch.Generator().manual_seed(0))
    # lambda 0 and a vanishing lr: the norm never improves, so it stops after patience + 2 epochs
    assert trig.epochs_run == 2


def test_anomaly_index_flags_the_small_norm():
    norms = torch.tensor([50.0, 52, 48, 51, 49, 50, 53, 47, 50, 5])
    idx = inversion.anomaly_index(norms)
    assert int(idx.argmax()) == 9 and idx[9] > 2
    assert (idx[:9].abs() < 2).all()
