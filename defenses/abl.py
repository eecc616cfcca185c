"""ABL: anti-backdoor learning (train stage; the poisoned training set only, no clean data).

Follows Li et al., "Anti-backdoor learning: training clean models on poisoned data", NeurIPS 2021,
and its official code bboylyg/ABL:

1. **Isolation training** (``isolation_epochs`` = 20 paper epochs, scaled by the suite's budget):
   a fresh ``ctx.new_model()``, SGD lr 0.1 constant, momentum 0.9, Nesterov, wd 1e-4, batch 128,
   shuffled, no augmentation, with the LGA objective on the batch-mean cross-entropy
   ``sign(L_b - gamma) * L_b`` (gamma 0.5; the same gradient as the official "Flooding" form).
2. **Isolate**: per-sample CE with the given labels (eval mode, no augmentation); the
   ``int(isolation_ratio * N)`` lowest-loss samples form D_b (the flagged set), the rest D_c.
3. **Clean training**, continuing from the isolation model: ``clean_epochs`` = 60 paper epochs on
   D_c, CE, lr 0.1 then x0.1 after 40/60 of the run, same SGD settings, crop + flip + Cutout.
4. **Unlearning** on D_b: minimise ``-CE`` (SGD lr 5e-4 constant, 5 epochs, momentum 0.9,
   Nesterov, wd 1e-4, batch 128, no augmentation) through the shared ``recipes.unlearn``.

Outputs: the final model; per-sample score ``-CE`` after isolation (higher = more suspicious,
AUROC comes from it); flags = D_b. The isolation losses are also logged per sample
(``abl_isolation_loss``) for clean-vs-poison histograms.

Choices (where the spec or the paper leaves room), recorded here once for every attack:

* The isolation loader is shuffled (the official loader is not).
* The clean phase's crop padding and flip come from the cell's standard recipe
  (``ctx.train_config``: 4 px crop + flip on CIFAR, which is the paper's setting); the ABL-specific
  optimiser settings (lr, momentum, Nesterov, wd, batch) are the paper's, not the cell's, because
  the spec fixes them. The step milestone is kept at 40/60 of the (possibly scaled) clean phase.
* Cutout: one hole of side ``cutout_length`` (3) with the official integer halving
  (``[c - 3 // 2, c + 3 // 2)`` = a 2x2 square, clipped at the border), centre uniform over the
  image, applied after crop and flip; the hole is zero in [0, 1] pixel space (black), whereas the
  official code zeroes the normalised tensor (the mean colour). Cutout is skipped when the cell's
  recipe has augmentation off.
* The unlearning phase runs all 5 epochs (the official loop spends its first epoch evaluating).
* Epoch counts (20, 60, 5) are scaled by ``ctx.budget.epochs``; the model is never selected by
  test metrics (none are available).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench import detection, recipes
from bench.card import CostPhase, DefenseCard
from bench.defense import CellInfo, Defense, DefenseConfigError, DefenseContext, DefenseOutput
from bench.engine import Batch, TrainConfig, fit
from bench.registry import DEFENSES, require_positive


@dataclass
class ABLParams:
    gamma: float = 0.5                 # LGA loss threshold (paper; all codes)
    isolation_ratio: float = 0.01      # fraction isolated as D_b (fixed, not the true poison ratio)
    isolation_epochs: float = 20       # T_te (paper, BackdoorBench, BackdoorBox)
    isolation_lr: float = 0.1          # official, BackdoorBox
    clean_epochs: float = 60           # official
    clean_lr: float = 0.1
    clean_lr_drop: float = 40 / 60     # lr x0.1 after this fraction of the clean phase (epoch 40 of 60)
    cutout_length: int = 3             # official Cutout(1, 3): a 2x2 hole
    unlearn_epochs: float = 5          # official config, BackdoorBox
    unlearn_lr: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    batch_size: int = 128

    def validate(self):
        if not 0.0 < self.isolation_ratio < 1.0:
            raise ValueError(f"isolation_ratio must be in (0, 1), got {self.isolation_ratio}")
        if self.gamma < 0:
            raise ValueError(f"gamma (the LGA loss threshold) must be >= 0, got {self.gamma}")
        require_positive(self, "isolation_epochs", "clean_epochs", "isolation_lr", "clean_lr", "unlearn_lr")
        if self.unlearn_epochs < 0:
            raise ValueError(f"unlearn_epochs must be >= 0, got {self.unlearn_epochs}")
        if not 0.0 < self.clean_lr_drop <= 1.0:
            raise ValueError(f"clean_lr_drop must be a fraction of the clean phase in (0, 1], "
                             f"got {self.clean_lr_drop}")
        if self.cutout_length < 0:
            raise ValueError(f"cutout_length must be >= 0 (0 = no Cutout), got {self.cutout_length}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def lga_loss(gamma: float):
    """ABL's local gradient ascent on the batch-mean CE: ``sign(L_b - gamma) * L_b``."""
    def loss(model, batch: Batch) -> torch.Tensor:
        lb = F.cross_entropy(model(batch.x), batch.y)
        return torch.sign(lb.detach() - gamma) * lb

    return loss


def cutout(x: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """One zero hole per image, rows/cols ``[c - length // 2, c + length // 2)`` clipped to the
    image, centre uniform (the official Cutout's integer arithmetic)."""
    b, _, h, w = x.shape
    half = length // 2
    cy = torch.randint(h, (b,), generator=generator).to(x.device)
    cx = torch.randint(w, (b,), generator=generator).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_r = (rows >= (cy[:, None] - half)) & (rows < (cy[:, None] + half))
    in_c = (cols >= (cx[:, None] - half)) & (cols < (cx[:, None] + half))
    hole = (in_r[:, :, None] & in_c[:, None, :])[:, None]
    return x.masked_fill(hole, 0.0)


def cutout_ce_loss(length: int, generator: torch.Generator):
    def loss(model, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(model(cutout(batch.x, length, generator)), batch.y)

    return loss


@DEFENSES.register
class ABL(Defense):
    """Anti-backdoor learning: isolate the lowest-loss 1% under LGA, train on the rest, unlearn them."""

    card = DefenseCard(name="abl", label="ABL", paper="Li et al., NeurIPS 2021", code="bboylyg/ABL",
                       stage="train", needs_train=True, detects=True, cost="about 0.8 trainings",
                       tables=("table2", "table3"), order=7,
                       cost_phases=(
                           CostPhase("isolation", epochs="isolation_epochs", batch_size="batch_size"),
                           CostPhase("clean training", fraction="1-isolation_ratio", epochs="clean_epochs",
                                     batch_size="batch_size"),
                           CostPhase("unlearning", fraction="isolation_ratio", epochs="unlearn_epochs",
                                     batch_size="batch_size")))

    Params = ABLParams

    def check(self, cell: CellInfo) -> None:
        super().check(cell)
        k = int(self.params.isolation_ratio * cell.n_train)
        if k < 1:
            raise DefenseConfigError(
                f"abl: an isolation ratio of {self.params.isolation_ratio} of {cell.n_train} training "
                f"images isolates no sample; raise isolation_ratio to at least {1 / cell.n_train:.4g}")
        if k >= cell.n_train:
            raise DefenseConfigError(f"abl: isolating {k} of {cell.n_train} images leaves nothing to train on")

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p = self.params
        data = ctx.train
        n = len(data)
        k = int(p.isolation_ratio * n)
        if k < 1 or k >= n:
            raise DefenseConfigError(f"abl: isolation ratio {p.isolation_ratio} of {n} images gives {k}")
        sgd = dict(batch_size=p.batch_size, optimizer="sgd", momentum=p.momentum, nesterov=p.nesterov,
                   weight_decay=p.weight_decay)

        # 1. isolation training under LGA, no augmentation
        model = ctx.new_model()
        iso_cfg = TrainConfig(epochs=ctx.budget.epochs(p.isolation_epochs), lr=p.isolation_lr,
                              schedule="constant", augment=False, **sgd)
        iso = fit(model, data, iso_cfg, loss_fn=lga_loss(p.gamma), generator=ctx.generator,
                  desc="abl isolation")

        # 2. isolate the lowest-loss samples
        losses = detection.per_sample_loss(model, data)
        flags = detection.bottom_k_mask(losses, k)
        ctx.log_sample_scores("abl_isolation_loss", losses)
        ctx.log("abl_isolation_epoch_loss", iso.losses)

        # 3. clean training on D_c, continuing from the isolation model
        base = ctx.train_config
        clean_cfg = TrainConfig(epochs=ctx.budget.epochs(p.clean_epochs), lr=p.clean_lr, schedule="step",
                                milestones=(p.clean_lr_drop,), gamma=0.1, augment=base.augment,
                                crop_padding=base.crop_padding, flip=base.flip, **sgd)
        cut_gen = torch.Generator().manual_seed(int(torch.randint(2 ** 62, (1,), generator=ctx.generator)))
        loss_fn = cutout_ce_loss(p.cutout_length, cut_gen) if (base.augment and p.cutout_length > 1) else None
        clean_idx = (~flags).nonzero().flatten()
        fit(model, data, clean_cfg, loss_fn=loss_fn, generator=ctx.generator, indices=clean_idx,
            desc="abl clean training")
        ctx.checkpoint("before_unlearning", model)

        # 4. unlearn D_b by gradient ascent
        if p.unlearn_epochs > 0:
            recipes.unlearn(model, data, flags.nonzero().flatten(), ctx.budget, ctx.generator,
                            epochs=p.unlearn_epochs, lr=p.unlearn_lr, batch_size=p.batch_size,
                            weight_decay=p.weight_decay, nesterov=p.nesterov, desc="abl unlearning")

        info = {"n_isolated": k, "isolation_loss_max": float(losses[flags].max()),
                "isolation_loss_median": float(losses.median()),
                "isolation_epochs": iso_cfg.epochs, "clean_epochs": clean_cfg.epochs}
        return DefenseOutput(model, scores=-losses, flags=flags, info=info)
