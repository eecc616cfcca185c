import math

import pytest
import torch

from bench import metrics


def test_accuracy_asr_ra_by_hand():
    pred = torch.tensor([1, 1, 2, 0, 1])
    true = torch.tensor([0, 2, 2, 0, 3])
    assert metrics.clean_accuracy(pred, true) == pytest.approx(2 / 5)
    assert metrics.attack_success_rate(pred, target=1) == pytest.approx(3 / 5)
    assert metrics.robust_accuracy(pred, true) == pytest.approx(2 / 5)
    assert math.isnan(metrics.attack_success_rate(torch.tensor([], dtype=torch.long), 1))


def test_der_definition():
    # ASR 0.95 -> 0.05, ACC 0.90 -> 0.85: (0.90 - 0.05 + 1) / 2
    assert metrics.der(0.85, 0.05, 0.90, 0.95) == pytest.approx((0.90 - 0.05 + 1) / 2)
    # a defense that raises ASR and ACC changes nothing beyond 0.5
    assert metrics.der(0.95, 0.99, 0.90, 0.95) == pytest.approx(0.5)
    assert math.isnan(metrics.der(float("nan"), 0.1, 0.9, 0.9))


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    truth = torch.rand(300, generator=g) < 0.2
    scores = torch.randint(0, 10, (300,), generator=g).float() + truth.float() * 2
    assert metrics.auroc(scores, truth) == pytest.approx(roc_auc_score(truth.numpy(), scores.numpy()))
    assert metrics.auroc(torch.tensor([0.1, 0.2]), torch.tensor([True, True])) is None


def test_detection_metrics_from_flags_and_scores():
    truth = torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool)
    flags = torch.tensor([1, 0, 1, 0, 0, 0], dtype=torch.bool)
    d = metrics.detection_metrics(truth, flags=flags)
    assert d["tpr"] == pytest.approx(0.5)
    assert d["fpr"] == pytest.approx(0.25)
    assert d["precision"] == pytest.approx(0.5)
    assert d["auroc"] is None  # flags only: no AUROC, never from hard flags
    d = metrics.detection_metrics(truth, scores=torch.tensor([0.9, 0.8, 0.1, 0.2, 0.3, 0.4]))
    assert d["auroc"] == pytest.approx(1.0)
    assert d["tpr"] is None
