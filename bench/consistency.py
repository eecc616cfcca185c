"""Prediction consistency under a one-step adversarial perturbation inside a random patch.

MeCa's score (Pu et al., arXiv 2405.12719, eq. 3 and Algorithm 1): for
a model f in eval mode and an image x (float pixels in [0, 1], no augmentation),

* m is a binary mask holding one ``patch_size`` x ``patch_size`` square (same for all channels) at a
  uniformly random position, drawn fresh for every sample and every call;
* delta = ``eps`` * sign(grad_x CE(f(x), y_hat)): one backward pass (FGSM, L_inf), where y_hat is
  f's own predicted label by default (``label="pred"``) or the given label (``label="given"``);
* x' = clip(x + m * delta, 0, 1);
* score = KL(softmax f(x) || softmax f(x')).

A low score means consistent predictions, which the paper finds typical of poisoned samples: the
backdoor feature is robust to small perturbations, the clean-task features are not.

Scoring goes through :func:`bench.engine.map_batches` with ``grad=True``, so each scored sample
counts as one forward/backward pass in the run's cost. Only the input gradient is taken
(``torch.autograd.grad``), so the model's parameter gradients are never touched. Other defenses
may reuse :func:`kl_consistency` or :func:`patch_masks`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import engine
from bench.data import Split


def patch_masks(n: int, image_shape: tuple[int, ...], patch_size: int, generator: torch.Generator,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` float masks (n, 1, H, W), each with one ``patch_size`` square of ones at a uniformly
    random position (top-left corner in [0, H - s] x [0, W - s])."""
    h, w = int(image_shape[-2]), int(image_shape[-1])
    s = int(patch_size)
    if not 1 <= s <= min(h, w):
        raise ValueError(f"patch_size must be in [1, {min(h, w)}] for {h}x{w} images, got {patch_size}")
    oy = torch.randint(0, h - s + 1, (n,), generator=generator).to(device)
    ox = torch.randint(0, w - s + 1, (n,), generator=generator).to(device)
    rows = torch.arange(h, device=device)[None, :]
    cols = torch.arange(w, device=device)[None, :]
    in_rows = (rows >= oy[:, None]) & (rows < oy[:, None] + s)      # (n, H)
    in_cols = (cols >= ox[:, None]) & (cols < ox[:, None] + s)      # (n, W)
    return (in_rows[:, :, None] & in_cols[:, None, :]).float()[:, None]


def kl_consistency(model: nn.Module, data: Split, *, patch_size: int = 2, eps: float = 8 / 255,
                   generator: torch.Generator, label: str = "pred", batch_size: int | None = None,
                   indices: torch.Tensor | None = None,
                   with_pred: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-sample KL(f(x) || f(x')) for the split (or ``indices`` of it), in order, on the CPU.

    ``label``: ``"pred"`` (the model's own prediction, the default) or ``"given"`` (the split's
    labels) as the target of the cross-entropy whose input gradient gives the perturbation.
    ``with_pred``: also return f's predicted label of every (unperturbed) sample, ``(kl, pred)``,
    taken from the same forward pass (no extra cost; the random masks drawn are the same).
    """
    if label not in ("pred", "given"):
        raise ValueError(f"label must be 'pred' or 'given', got '{label}'")
    if label == "given" and data.y is None:
        raise ValueError("label='given' needs a labelled split")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")

    def score(x: torch.Tensor, y: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        logits = model(x).float()
        target = logits.argmax(1).detach() if label == "pred" else y
        # summed CE: each sample's input gradient is its own (the sign ignores the scale anyway)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, target, reduction="sum"), x)
        mask = patch_masks(len(x), x.shape, patch_size, generator, x.device).to(x.dtype)
        with torch.no_grad():
            x_adv = (x + mask * eps * grad.sign()).clamp_(0.0, 1.0)
            logp = F.log_softmax(logits.detach(), 1)
            logq = F.log_softmax(model(x_adv).float(), 1)
            kl = (logp.exp() * (logp - logq)).sum(1).clamp_min_(0.0)
            return torch.stack([kl, logits.detach().argmax(1).float()], 1) if with_pred else kl

    with engine.eval_mode(model):
        out = engine.map_batches(score, data, batch_size=batch_size, grad=True, indices=indices)
    if with_pred:
        return out[:, 0].contiguous(), out[:, 1].long()
    return out
