"""NT-ML (defenses/nt_ml.py, provisional): its losses, end-to-end runs of its readings (NT mode, the
clean samples each stage gets), bad parameters refused before compute, its development suite.

End-to-end runs use the shared backdoored digits fixture and ``build_context`` exactly as the runner
does; budgets are cut through the defense's own epoch parameters and the fixture's budget scale.
"""
from __future__ import annotations

import pytest
import torch

from bench import engine
from bench.data import balanced_subset
from bench.defense import CellInfo
from bench.distill import complementary_loss, mutual_learning_loss, non_target_kl
from bench.engine import Batch
from bench.models import create_model
from bench.registry import DEFENSES, ParamsError
from bench.runner import build_context
from bench.suite import expand, load_suite, validate

from conftest import toy_split


def _run(cell, model, **params):
    """NT-ML on the fixture's cell, handed its inputs as the runner would; keeps checkpoint tags."""
    defense = DEFENSES.create("nt_ml", **params)
    tags = []
    ctx = build_context(defense, cell, model, checkpoint_cb=lambda tag, m: tags.append(tag))
    out = defense.run(ctx)
    acc = float((engine.predict(out.model, cell.bundle.test) == cell.bundle.test.y).float().mean())
    return defense, ctx, out, acc, tags


def test_nt_losses_never_pull_towards_the_given_label():
    torch.manual_seed(0)
    logits = torch.randn(6, 5, requires_grad=True)
    teacher = torch.randn(6, 5)
    y = torch.tensor([0, 1, 2, 3, 4, 1])
    # nckd: the given label's logit gets exactly zero gradient, and the loss ignores it
    loss = non_target_kl(logits, teacher, y, 4.0)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.all(grad[torch.arange(6), y] == 0)
    assert grad.abs().sum() > 0
    bumped = logits.detach().clone()
    bumped[torch.arange(6), y] += 10
    assert torch.allclose(non_target_kl(bumped, teacher, y, 4.0), loss)
    # complementary: descending the loss lowers the avoided class's probability
    avoid = teacher.argmax(1)
    (grad,) = torch.autograd.grad(complementary_loss(logits, avoid), logits)
    assert torch.all(grad[torch.arange(6), avoid] > 0)
    p = logits.detach().softmax(1)[torch.arange(6), avoid]
    assert torch.allclose(complementary_loss(logits.detach(), avoid), -(1 - p).log().mean(), atol=1e-5)


def test_mutual_learning_gives_each_model_its_own_gradient():
    data = toy_split(16, size=8)
    a, b = create_model("cnn_tiny", 4, 8), create_model("cnn_tiny", 4, 8)
    batch = Batch(data.x.float() / 255, data.y, torch.arange(16), 0, 0, 0.0)
    mutual_learning_loss()([a, b], batch).backward()
    ga = [p.grad.clone() for p in a.parameters()]
    for p in list(a.parameters()) + list(b.parameters()):
        p.grad = None
    la, lb = a(batch.x), b(batch.x)
    own = torch.nn.functional.cross_entropy(la, data.y) + torch.nn.functional.kl_div(
        la.log_softmax(1), lb.detach().log_softmax(1), reduction="batchmean", log_target=True)
    own.backward()
    assert all(torch.allclose(g, p.grad, atol=1e-6) for g, p in zip(ga, a.parameters()))


def _spy_stages(monkeypatch, cell, hide_labels=True):
    """Record each engine.fit call's training-set size ("nt" for the NT stage, whose given labels
    are hidden from the loss unless ``hide_labels`` is off: nckd reads them by design)."""
    real_fit = engine.fit
    stages = []

    def spy_fit(m, data, cfg, **kw):
        if len(data) == len(cell.poisoned.data):  # the NT stage (on its copy): hide the given labels
            loss_fn = kw["loss_fn"]
            if hide_labels:
                kw["loss_fn"] = lambda mod, batch: loss_fn(mod, Batch(batch.x, None, batch.idx, batch.epoch,
                                                                       batch.step, batch.progress))
            stages.append("nt")
        else:
            stages.append(len(data))
        return real_fit(m, data, cfg, **kw)

    monkeypatch.setattr(engine, "fit", spy_fit)
    return stages


def test_nt_ml_end_to_end_never_reads_given_labels_in_nt(backdoored_cell, monkeypatch):
    cell, model, _ = backdoored_cell
    stages = _spy_stages(monkeypatch, cell)
    defense, ctx, out, acc, tags = _run(cell, model, n_clean=50, nt_epochs=5, ml_clean="same")  # spec-v1's ML set
    assert defense.declaration()["needs_train"] is True
    n_clean = out.info["n_clean"]  # class-balanced from the 71-image reserve: capped per class
    assert 40 <= n_clean <= 50 and ctx.logs["nt_ml/n_clean"] == n_clean == out.info["n_ml_clean"]
    assert stages == ["nt", n_clean, n_clean]  # NT, teacher fine-tune, mutual learning
    assert tags == ["nt_student", "teacher", "ml_teacher"]
    assert out.info["provisional"] is True
    assert acc > 0.5, acc


def test_mutual_learning_on_a_share_of_the_whole_reserve(backdoored_cell, monkeypatch):
    """ml_clean="reserve": the teacher keeps its n_clean samples, ML gets a class-balanced share of
    the whole reserve (the "small number of clean samples" read as the reserve)."""
    cell, model, _ = backdoored_cell
    stages = _spy_stages(monkeypatch, cell)
    defense, ctx, out, acc, tags = _run(cell, model, n_clean=20, nt_epochs=2, teacher_epochs=2, ml_epochs=2,
                                        ml_clean="reserve", ml_clean_fraction=0.5)
    reserve = len(cell.reserve)
    n_ml = len(balanced_subset(cell.reserve, int(0.5 * reserve), torch.Generator().manual_seed(0)))
    assert out.info["n_ml_clean"] == ctx.logs["nt_ml/n_ml_clean"] == n_ml
    assert stages == ["nt", out.info["n_clean"], n_ml] and out.info["n_clean"] <= 20 < n_ml
    full = _run(cell, model, nt_epochs=1, teacher_epochs=1, ml_epochs=1, ml_clean="reserve")[2]
    assert full.info["n_ml_clean"] == reserve


def test_nckd_mode_runs_from_a_fresh_model(backdoored_cell, monkeypatch):
    cell, model, _ = backdoored_cell
    stages = _spy_stages(monkeypatch, cell, hide_labels=False)
    _, _, out, _, tags = _run(cell, model, nt_mode="nckd", n_clean=30, teacher_epochs=1, ml_epochs=1)
    assert stages[0] == "nt" and out.info["nt_mode"] == "nckd"
    assert tags == ["nt_student", "teacher", "ml_teacher"]


def test_defaults_are_the_development_choice_and_spec_v1_is_kept():
    """The default is the reading the ntml-dev search chose (ML on the whole reserve); the preset
    ``spec-v1`` still gives the first reconstruction's (ML on the teacher's clean set)."""
    p = DEFENSES.create("nt_ml").params
    assert (p.nt_mode, p.n_clean, p.ml_clean, p.ml_clean_fraction, p.ml_epochs) == ("complementary", 100, "reserve",
                                                                                   1.0, 20)
    old = DEFENSES.create("nt_ml", preset="spec-v1").params
    assert (old.nt_mode, old.n_clean, old.ml_clean, old.ml_clean_fraction, old.ml_epochs) == (
        "complementary", 100, "same", 1.0, 20)


@pytest.mark.parametrize("params,match", [
    ({"nt_mode": "bogus"}, "nt_mode"),
    ({"n_clean": 0}, "n_clean"),
    ({"ml_epochs": -1}, "ml_epochs"),
    ({"n_cleen": 5}, "did you mean n_clean"),
    ({"ml_clean": "all"}, "ml_clean"),
    ({"ml_clean_fraction": 0}, "ml_clean_fraction"),
    ({"ml_clean_fraction": 1.5}, "ml_clean_fraction"),
    ({"ml_clean_fraction": True}, "ml_clean_fraction"),
])
def test_bad_params_are_refused(params, match):
    with pytest.raises(ParamsError, match=match):
        DEFENSES.create("nt_ml", **params)


def test_cell_dependent_settings():
    cell = CellInfo(num_classes=10, image_shape=(3, 32, 32), n_train=1000, model_name="cnn_tiny",
                    reserve_fraction=0.05)
    DEFENSES.create("nt_ml").check(cell)  # the defaults pass
    assert DEFENSES.create("nt_ml", reserve_fraction=0.2).reserve_fraction(0.05) == 0.2


def test_development_suite_validates_on_development_cells_only():
    specs = expand(load_suite("ntml-dev"))
    assert validate(specs, check_data=False) == []
    runs = [s for s in specs if s.defense == "nt_ml"]
    assert len(runs) == 32 and {s.seed for s in specs} == {11, 12}
    assert {s.attack_params.get("target") for s in specs} == {3}
    assert {s.defense_params.get("nt_mode", "complementary") for s in runs} == {"complementary", "nckd"}
