"""Knowledge-distillation and mutual-learning objectives shared by defenses (BCU, NT-ML).

Every function here is a pure loss on logits, or a factory returning an engine ``loss_fn(model,
batch)`` so that the defenses train through :func:`bench.engine.fit` and never own a loop.
All losses are computed in float32 (outputs may be bf16 under autocast) and averaged over the
batch ("batchmean" KL, as ``torch.nn.KLDivLoss(reduction="batchmean")``).

* :func:`kd_kl`: KL(softmax(t / T) || softmax(s / T)), optionally times T^2 (Hinton et al.).
* :func:`distillation_loss`: a frozen teacher distilled into the trained model on (unlabeled)
  batches, with a temperature that may change per epoch (BCU's T rising from 1 to 4).
* :func:`complementary_loss`: -log(1 - p(y_hat)), pushes probability away from a class
  (NT-ML's provisional "complementary" non-target training).
* :func:`non_target_kl`: KL between the teacher's and the student's softmax restricted to the
  classes other than a given label (the "non-target class knowledge", NCKD, of decoupled KD); the
  given label's logit gets no gradient at all.
* :func:`mutual_learning_loss`: deep mutual learning (Zhang et al. 2018) of a list of models:
  each model's CE plus the KL from every partner's detached prediction.
* :func:`cell_augmentation`: the augmentation settings of the cell's training recipe, for defenses
  that train "with the standard augmentation" of the dataset.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.engine import Batch, TrainConfig


def cell_augmentation(train_config: TrainConfig) -> dict:
    """``augment``, ``crop_padding`` and ``flip`` of a cell's recipe (as TrainConfig overrides)."""
    return {"augment": train_config.augment, "crop_padding": train_config.crop_padding,
            "flip": train_config.flip}


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
          t2_scale: bool = False) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s / T)) averaged over the batch (x T^2 if ``t2_scale``)."""
    s = student_logits.float() / temperature
    t = teacher_logits.float().detach() / temperature
    loss = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)
    return loss * temperature ** 2 if t2_scale else loss


def distillation_loss(teacher: nn.Module, temperature: Callable[[Batch], float] | float = 1.0,
                      t2_scale: bool = False) -> Callable[[nn.Module, Batch], torch.Tensor]:
    """Engine loss: distil the frozen ``teacher`` (kept in eval mode, no gradients) into the
    trained model. ``temperature`` is a number or a function of the batch (its epoch, progress).
    Labels are never read, so it trains on unlabeled data."""

    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        teacher.eval()
        with torch.no_grad():
            t = teacher(batch.x)
        temp = temperature(batch) if callable(temperature) else temperature
        return kd_kl(model(batch.x), t, temp, t2_scale)

    return loss


def complementary_loss(logits: torch.Tensor, avoid: torch.Tensor) -> torch.Tensor:
    """Batch mean of -log(1 - p(avoid | x)), computed stably as
    logsumexp(all logits) - logsumexp(logits without ``avoid``)."""
    s = logits.float()
    rest = s.scatter(1, avoid.view(-1, 1).to(s.device), float("-inf"))
    return (torch.logsumexp(s, 1) - torch.logsumexp(rest, 1)).mean()


def non_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, label: torch.Tensor,
                  temperature: float = 4.0) -> torch.Tensor:
    """T^2 * KL(q || r) where q and r are the teacher's and the student's softmax at temperature T
    over the classes other than ``label`` (that class removed and the rest renormalised). The
    student's logit of ``label`` does not enter the loss, so the given label never pulls it."""
    label = label.view(-1, 1).to(student_logits.device)
    s = student_logits.float().scatter(1, label, float("-inf")) / temperature
    t = teacher_logits.float().detach().scatter(1, label, float("-inf")) / temperature
    log_r, log_q = F.log_softmax(s, 1), F.log_softmax(t, 1)
    keep = torch.ones_like(s, dtype=torch.bool).scatter(1, label, False)
    terms = torch.where(keep, log_q.exp() * (log_q - log_r), torch.zeros_like(s))
    return terms.sum(1).mean() * temperature ** 2


def mutual_learning_loss(kl_weight: float = 1.0, temperature: float = 1.0,
                         label_smoothing: float = 0.0) -> Callable[[Sequence[nn.Module], Batch], torch.Tensor]:
    """Engine loss for deep mutual learning of ``fit([m1, m2, ...])``: for each model k,
    CE(m_k(x), y) + w * mean over partners j of KL(p_j || p_k), partners detached. The sum over
    models gives each model exactly its own gradient, so one optimizer updates all of them as
    simultaneous per-model updates would."""

    def loss(models: Sequence[nn.Module], batch: Batch) -> torch.Tensor:
        if batch.y is None:
            raise ValueError("mutual learning needs labels")
        if not isinstance(models, (list, tuple)) or len(models) < 2:
            raise ValueError("mutual learning trains at least two models: fit([student, teacher], ...)")
        logits = [m(batch.x) for m in models]
        total = 0.0
        for k, lk in enumerate(logits):
            partners = [kd_kl(lk, lj.detach(), temperature) for j, lj in enumerate(logits) if j != k]
            total = total + F.cross_entropy(lk.float(), batch.y, label_smoothing=label_smoothing) \
                + kl_weight * torch.stack(partners).mean()
        return total

    return loss
