import pytest
import torch
import torch.nn as nn

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


def test_the_step_floor_lifts_a_starved_phase_up_to_its_paper_budget_and_no_further():
    """A quarter of the papers' epochs with a floor of 10 steps, 4 steps per epoch: the floor undoes
    the scale's starvation but never runs a phase beyond its paper's own count (ABL's unlearning, 5
    paper epochs on a few hundred images, once lifted to a 300-step floor, ascended 75 epochs and
    left every model at chance), and leaves a count the budget does not scale as it is."""
    import pickle

    from bench.budget import Budget

    budget = Budget(scale=0.25, min_steps=10)
    data = Split(torch.randint(0, 256, (100, 3, 4, 4), dtype=torch.uint8), torch.arange(100) % 3)

    def steps(epochs):
        model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
        with engine.step_floor(budget):
            return engine.fit(model, data, TrainConfig(epochs=epochs, batch_size=32, augment=False)).steps

    assert steps(budget.epochs(8)) == 10         # 2 epochs = 8 steps, lifted to the floor (paper: 32)
    assert steps(budget.epochs(2)) == 8          # 1 epoch = 4 steps, lifted to the paper's 2 epochs only
    assert steps(budget.epochs(40)) == 40        # 10 epochs: above the floor, untouched
    assert steps(1.0) == 4                       # an unscaled count is its paper's: not lifted
    assert Budget(scale=0.25, min_steps=300).phase_steps(Budget(scale=0.25).epochs(5), 4) == 20   # ABL
    assert Budget(scale=0.25, min_steps=0).phase_steps(budget.epochs(8), 4) == 8                   # no floor
    again = pickle.loads(pickle.dumps(budget.epochs(8)))
    assert again == 2.0 and again.paper == 8.0
