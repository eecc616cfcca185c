"""Baseline defenses that isolate or flag samples: ABL (train), DBR and SCAnFT (repair + poisoned set)."""
import math

import pytest
import torch

from bench import detection
from bench.defense import Budget, CellInfo, DefenseConfigError
from bench.evaluate import evaluate_model
from bench.metrics import detection_metrics
from bench.registry import DEFENSES, ParamsError
from bench.runner import build_context, execute
from bench.spec import RunSpec

from conftest import BACKDOOR_SPEC


def _run(name, backdoored_cell, scale, **params):
    cell, model, nodef = backdoored_cell
    defense = DEFENSES.create(name, **params)
    defense.check(CellInfo(cell.bundle.num_classes, cell.bundle.image_shape, len(cell.bundle.train),
                           cell.spec.model, cell.spec.reserve_fraction))
    ctx = build_context(defense, cell, model)
    ctx.budget = Budget(scale)
    out = defense.run(ctx)
    metrics = evaluate_model(out.model, cell.bundle.test, cell.triggered)
    det = detection_metrics(cell.poisoned.poison_mask, out.flags, out.scores)
    return out, metrics, det, ctx, cell


def _poison_ratio(cell):
    return cell.poisoned.poison_mask.float().mean().item()


# -- end to end on the easy BadNet cell -----------------------------------------------------------
def test_scan_flags_the_target_class_and_unlearns(backdoored_cell):
    # the spec's lr 5e-4 moves little in 5 steps over ~130 samples; a larger rate shows the ascent
    out, m, det, ctx, cell = _run("scan_ft", backdoored_cell, 1.0, unlearn_lr=0.01)
    target = cell.attack.params.target
    assert target in out.info["infected_classes"], out.info
    assert det["precision"] > 0.5 and det["tpr"] > 0.5, det
    assert det["auroc"] > 0.75, det   # 0.77 with the tests' salt; draw-dependent on this tiny cell
    flagged_labels = cell.poisoned.data.y[out.flags]
    assert (flagged_labels == target).float().mean() > 0.9   # flags come from infected classes only
    assert m["acc"] > 0.5, m
    assert m["asr"] < 0.5 * backdoored_cell[2]["asr"], m       # unlearning the flagged set removes it


def test_dbr_flags_sensitive_samples_and_returns_a_usable_model(backdoored_cell):
    out, m, det, ctx, cell = _run("dbr", backdoored_cell, 0.05)
    n = len(cell.poisoned.data)
    assert int(out.flags.sum()) == int(0.05 * n)
    assert det["precision"] > _poison_ratio(cell), det
    assert det["auroc"] > 0.5, det
    assert m["acc"] > 0.5, m
    assert "dbr_fct" in ctx.sample_logs


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


# -- bad input refused before compute -------------------------------------------------------------
@pytest.mark.parametrize("name,params,msg", [
    ("abl", {"isolation_ratio": 0.0}, "isolation_ratio must be in (0, 1)"),
    ("abl", {"isolation_ratio": 1.5}, "isolation_ratio must be in (0, 1)"),
    ("abl", {"gamma": -1}, "gamma"),
    ("dbr", {"poison_ratio": 0.0}, "poison_ratio must be in (0, 1)"),
    ("dbr", {"poison_ratio": 0.5, "clean_ratio": 0.6}, "poison_ratio + clean_ratio must be <= 1"),
    ("dbr", {"fct_model": "nope"}, "fct_model"),
    ("scan_ft", {"mu_form": "mean"}, "mu_form"),
    ("scan_ft", {"reserve_fraction": 1.2}, "reserve_fraction must be in (0, 1)"),
])
def test_bad_params_are_refused(name, params, msg):
    with pytest.raises(ParamsError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        DEFENSES.create(name, **params)


def test_bad_cells_are_refused_before_compute():
    small = CellInfo(10, (3, 16, 16), 50, "cnn_tiny", 0.05)
    with pytest.raises(DefenseConfigError, match="isolates no sample"):
        DEFENSES.create("abl").check(small)
    with pytest.raises(DefenseConfigError, match="selects no sample"):
        DEFENSES.create("dbr").check(CellInfo(10, (3, 16, 16), 10, "cnn_tiny", 0.05))
    with pytest.raises(DefenseConfigError, match="at least 2 clean reserve samples per class"):
        DEFENSES.create("scan_ft").check(small)
    # the runner refuses before training the backdoored model
    spec = RunSpec(defense="scan_ft", **dict(BACKDOOR_SPEC, dataset_params={"image_size": 16},
                                             reserve_fraction=0.01))
    with pytest.raises(DefenseConfigError, match="need >= 20"):
        execute(spec)


# -- helpers --------------------------------------------------------------------------------------
def test_rotate_translate_moves_pixels_as_asked():
    x = torch.zeros(2, 1, 8, 8)
    x[:, :, 1, 2] = 1.0
    out = detection.random_rotate_translate(x, torch.tensor([0.0, 180.0]), torch.tensor([[3.0, 1.0], [0.0, 0.0]]))
    assert out[0, 0, 2, 5] == 1.0 and out[0].sum() == 1.0          # shifted right 3, down 1
    assert out[1, 0, 6, 5] == 1.0 and out[1].sum() == 1.0          # rotated half a turn
    big = detection.random_rotate_translate(x, torch.tensor([0.0, 0.0]), torch.tensor([[8.0, 0.0], [0.0, 8.0]]))
    assert big.sum() == 0                                          # zero fill


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


def test_masks_and_anomaly_index():
    s = torch.tensor([0.3, 0.9, 0.1, 0.9, 0.5])
    assert detection.top_k_mask(s, 2).tolist() == [False, True, False, True, False]
    assert detection.bottom_k_mask(s, 2).tolist() == [True, False, True, False, False]
    a = detection.mad_anomaly_index(torch.tensor([1.0, 1.1, 0.9, 1.0, 10.0]))
    assert a[-1] > 20 and a[:4].max() < 2


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
