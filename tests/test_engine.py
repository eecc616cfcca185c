import pytest
import torch

from bench import engine
from bench.data import Split
from bench.engine import DivergenceError, TrainConfig
from bench.metrics import accuracy
from bench.models import create_model

from conftest import toy_split


def _train_digits(bundle, seed=0, epochs=6):
    torch.manual_seed(seed)
    model = create_model("cnn_tiny", 10, 16)
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, schedule="onecycle", crop_padding=2)
    with engine.measure_cost(len(bundle.train)) as meter:
        engine.fit(model, bundle.train, cfg, generator=torch.Generator().manual_seed(seed))
    return model, meter


def test_small_cnn_learns_digits_and_costs_are_counted(digits16):
    model, meter = _train_digits(digits16)
    acc = accuracy(engine.predict(model, digits16.test), digits16.test.y)
    assert acc >= 0.90, acc
    assert meter.epochs_equiv == pytest.approx(6.0)


def test_same_seed_same_numbers_on_cpu(digits16):
    m1, _ = _train_digits(digits16, seed=3, epochs=1)
    m2, _ = _train_digits(digits16, seed=3, epochs=1)
    l1 = engine.predict_logits(m1, digits16.test)
    l2 = engine.predict_logits(m2, digits16.test)
    assert torch.equal(l1, l2)


def test_divergence_raises_a_clear_error():
    data = toy_split(32)
    model = create_model("cnn_tiny", 4, 8)

    def nan_loss(model, batch):
        return model(batch.x).sum() * float("nan")

    with pytest.raises(DivergenceError, match="loss became nan"):
        engine.fit(model, data, TrainConfig(epochs=1, batch_size=16), loss_fn=nan_loss)


def test_training_without_labels_needs_a_loss_fn():
    data = toy_split(32)
    unlabeled = Split(data.x, None)
    model = create_model("cnn_tiny", 4, 8)
    with pytest.raises(ValueError, match="needs labels"):
        engine.fit(model, unlabeled, TrainConfig(epochs=1, batch_size=16))
    teacher = create_model("cnn_tiny", 4, 8).eval()

    def distill(model, batch):
        with torch.no_grad():
            t = teacher(batch.x).softmax(1)
        return torch.nn.functional.kl_div(model(batch.x).log_softmax(1), t, reduction="batchmean")

    engine.fit(model, unlabeled, TrainConfig(epochs=1, batch_size=16), loss_fn=distill)


def test_augment_keeps_shape_and_content_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    out = engine.augment(x, g, padding=4)
    assert out.shape == x.shape
    # a crop of a zero-padded image only removes content or adds zeros
    assert out.sum() <= x.sum() + 1e-3
    same = engine.augment(x, torch.Generator().manual_seed(0), padding=0, flip=False)
    assert torch.equal(same, x)


def test_fractional_epochs_and_indices():
    data = toy_split(40)
    model = create_model("cnn_tiny", 4, 8)
    with engine.measure_cost(len(data)) as meter:
        engine.fit(model, data, TrainConfig(epochs=0.5, batch_size=10), indices=torch.arange(20))
    assert meter.samples == 10  # half an epoch over 20 samples


def test_schedules():
    cfg = TrainConfig(epochs=10, schedule="step", milestones=(0.5,), gamma=0.1)
    assert engine.lr_factor(cfg, 0.2, 10) == 1.0
    assert engine.lr_factor(cfg, 0.6, 10) == pytest.approx(0.1)
    cos = TrainConfig(epochs=10)
    assert engine.lr_factor(cos, 0.0, 10) == pytest.approx(1.0)
    assert engine.lr_factor(cos, 0.5, 10) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        TrainConfig(optimizer="lbfgs").validate()
