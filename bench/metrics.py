"""Every metric of the suite, defined once. Runs and reports both use this module.

All rates are fractions in [0, 1] (reports print percentage points).

* **Clean accuracy** (ACC): predictions on the whole clean test set equal to the true labels.
* **Attack success rate** (ASR): on the triggered test set, which holds only images whose true
  class is not the target (TaCT: only images of its source class), the fraction predicted as the
  target. Images misclassified while clean are not removed (toolbox ``tools.test``, BackdoorBench).
* **Robust accuracy** (RA): on the same triggered images, the fraction predicted as the true class.
* **DER** (defense effectiveness rating, BackdoorBench, Wu et al. 2022):
  ``(max(0, ASR_nodef - ASR) - max(0, ACC_nodef - ACC) + 1) / 2``, in [0, 1], 0.5 = no effect.
* **Detection** against the ground-truth poison mask: TPR = flagged poison / poison, FPR =
  flagged clean / clean, precision = poison among flagged; **AUROC** only from a continuous
  per-sample score (higher = more likely poison), never from the hard flags: a defense that only
  flags gets ``None``.
"""
from __future__ import annotations

import math

import torch


def _as_tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.as_tensor(a)


def accuracy(pred, labels) -> float:
    """Fraction of ``pred == labels``; NaN on an empty set."""
    pred, labels = _as_tensor(pred), _as_tensor(labels)
    if len(labels) == 0:
        return float("nan")
    return (pred == labels).float().mean().item()


def clean_accuracy(pred, labels) -> float:
    """ACC on the clean test set."""
    return accuracy(pred, labels)


def attack_success_rate(pred_triggered, target: int) -> float:
    """ASR: fraction of triggered (non-target-class) test images predicted as ``target``."""
    pred = _as_tensor(pred_triggered)
    if len(pred) == 0:
        return float("nan")
    return (pred == int(target)).float().mean().item()


def robust_accuracy(pred_triggered, true_labels) -> float:
    """RA: fraction of triggered test images still predicted as their true class."""
    return accuracy(pred_triggered, true_labels)


def der(acc: float, asr: float, acc_nodef: float, asr_nodef: float) -> float:
    """Defense effectiveness rating (BackdoorBench): 0.5 means no change, 1 the ideal."""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (acc, asr, acc_nodef, asr_nodef)):
        return float("nan")
    return (max(0.0, asr_nodef - asr) - max(0.0, acc_nodef - acc) + 1.0) / 2.0


def auroc(scores, positives) -> float | None:
    """Area under the ROC curve of ``scores`` for the boolean ``positives`` (ties count one half).

    Computed as the Mann-Whitney U statistic with average ranks; None when one class is empty.
    """
    s = _as_tensor(scores).double().flatten()
    pos = _as_tensor(positives).bool().flatten()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = torch.argsort(s)
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    # average ranks over ties
    uniq, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    starts = ends - counts.double() + 1
    avg = (starts + ends) / 2
    ranks[order] = avg[inverse]
    u = ranks[pos].sum().item() - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def detection_metrics(poison_mask, flags=None, scores=None) -> dict:
    """TPR / FPR / precision of the flags and AUROC of the scores against the poison mask.

    Keys are always present; a value is None when it cannot be defined (no flags, no scores,
    no poison, nothing flagged).
    """
    out = {"tpr": None, "fpr": None, "precision": None, "auroc": None, "flagged": None}
    truth = _as_tensor(poison_mask).bool().flatten()
    if flags is not None:
        f = _as_tensor(flags).bool().flatten()
        if f.shape != truth.shape:
            raise ValueError(f"flags have shape {tuple(f.shape)}, poison mask {tuple(truth.shape)}")
        n_pos, n_neg, n_flag = int(truth.sum()), int((~truth).sum()), int(f.sum())
        tp = int((f & truth).sum())
        out["flagged"] = n_flag
        out["tpr"] = tp / n_pos if n_pos else None
        out["fpr"] = (n_flag - tp) / n_neg if n_neg else None
        out["precision"] = tp / n_flag if n_flag else None
    if scores is not None:
        s = _as_tensor(scores).flatten()
        if s.shape != truth.shape:
            raise ValueError(f"scores have shape {tuple(s.shape)}, poison mask {tuple(truth.shape)}")
        out["auroc"] = auroc(s, truth)
    return out
