"""The evaluator: the only code that sees test sets and ground truth, after a defense returns."""
from __future__ import annotations

import torch
import torch.nn as nn

from bench import metrics
from bench.attack import Attack, TriggeredTest
from bench.data import Split
from bench.engine import predict


def evaluate_model(model: nn.Module, test: Split, triggered: TriggeredTest, attack: Attack | None = None) -> dict:
    """ACC on the clean test set, ASR and RA on the triggered test set, plus attack extras."""
    out = {"acc": metrics.clean_accuracy(predict(model, test), test.y)}
    if triggered.target is not None and len(triggered.x):
        pred = predict(model, triggered.x)
        out["asr"] = metrics.attack_success_rate(pred, triggered.target)
        out["ra"] = metrics.robust_accuracy(pred, triggered.y_true)
    else:
        out["asr"] = float("nan")
        out["ra"] = float("nan")
    if attack is not None:
        extra = attack.extra_metrics(lambda x: predict(model, x), test)
        out.update(extra)
    return out
