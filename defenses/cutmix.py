"""``cutmix``: repair the backdoored model by fine-tuning on the clean reserve with CutMix.

Follows Borgnia et al., "Strong data augmentation sanitizes poisoning and backdoor attacks without
an accuracy trade-off" (ICASSP 2021) in the repair form of BackdoorBox's ``CutMix.repair`` (whose
knobs MeCa V-A5 lists: CutMix probability, beta, repair lr and epochs); CutMix itself follows Yun
et al. (ICCV 2019, clovaai/CutMix-PyTorch).

Training is the shared FineTuning recipe (:func:`bench.recipes.finetune`: SGD lr 0.01, momentum
0.9, wd 5e-4, batch 128, 10 paper epochs scaled by the budget, cosine, crop + flip) with the
per-batch CutMix loss of :func:`cutmix_loss`:

1. with probability ``prob`` (one draw per batch) draw lambda ~ Beta(beta, beta), clipped to
   ``lam_clip`` = [0.3, 0.7] (BackdoorBox; ``lam_clip=None`` turns the clip off, as clovaai);
2. the partner batch is a random permutation of the batch; one box for the whole batch, of side
   int(H sqrt(1 - lambda)) x int(W sqrt(1 - lambda)), centred at uniform integer coordinates,
   corners centre -/+ side // 2 clipped to the image;
3. the partner images' pixels are pasted inside the box (after the crop/flip augmentation);
4. lambda_eff = 1 - box area / image area (exact area after clipping), and the loss is
   lambda_eff CE(out, y) + (1 - lambda_eff) CE(out, y_partner);
5. otherwise (no draw, or beta = 0) plain CE.

Choices: the repair data is the clean reserve (MeCa does not say; the other repair phases use it);
the recipe is FineTuning's (MeCa's lr and epochs are lost); the random draws (Beta, box centre,
permutation) come from a numpy/torch stream seeded from the run's defense generator, so the run
is reproducible. The training-time variant of Borgnia et al. (a fresh model trained on the
poisoned set with CutMix for 200 epochs) is not this entry.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from bench.card import CostPhase, DefenseCard
from bench.defense import Defense, DefenseContext, DefenseOutput
from bench.recipes import FINETUNE, finetune
from bench.registry import DEFENSES


@dataclass
class CutMixParams:
    prob: float = 1.0                                  # cutmix_prob, one draw per batch
    beta: float = 1.0
    lam_clip: tuple[float, float] | None = (0.3, 0.7)  # None: no clipping (clovaai)
    epochs: float = 10                                 # FineTuning recipe epochs (paper), budget-scaled
    lr: float = 0.01
    reserve_fraction: float | None = None              # None: the suite's reserve fraction

    def validate(self):
        if not 0 <= self.prob <= 1:
            raise ValueError(f"prob must be in [0, 1], got {self.prob}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.lam_clip is not None:
            lo, hi = self.lam_clip
            if not 0 <= lo <= hi <= 1:
                raise ValueError(f"lam_clip must be (lo, hi) with 0 <= lo <= hi <= 1, got {self.lam_clip}")
        if self.epochs <= 0 or self.lr <= 0:
            raise ValueError(f"epochs and lr must be positive, got {self.epochs}, {self.lr}")
        if self.reserve_fraction is not None and not 0 < self.reserve_fraction < 1:
            raise ValueError(f"reserve_fraction must be in (0, 1), got {self.reserve_fraction}")


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(y1, y2, x1, x2) of the pasted box for mixing weight ``lam`` (clovaai's rand_bbox, with
    rows and columns named correctly)."""
    cut = float(np.sqrt(1.0 - lam))
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y1, y2 = int(np.clip(cy - ch // 2, 0, h)), int(np.clip(cy + ch // 2, 0, h))
    x1, x2 = int(np.clip(cx - cw // 2, 0, w)), int(np.clip(cx + cw // 2, 0, w))
    return y1, y2, x1, x2


def cutmix_batch(x: torch.Tensor, lam: float, rng: np.random.Generator, perm: torch.Tensor):
    """Paste ``x[perm]`` into one box of ``x``; returns (mixed images, lambda_eff)."""
    h, w = x.shape[-2:]
    y1, y2, x1, x2 = cutmix_box(h, w, lam, rng)
    mixed = x.clone()
    mixed[:, :, y1:y2, x1:x2] = x[perm][:, :, y1:y2, x1:x2]
    lam_eff = 1.0 - (y2 - y1) * (x2 - x1) / float(h * w)
    return mixed, lam_eff


def cutmix_loss(params: CutMixParams, seed: int):
    """The engine ``loss_fn`` of the CutMix repair (see the module docstring)."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)

    def loss(model, batch):
        if params.beta <= 0 or rng.random() >= params.prob:
            return F.cross_entropy(model(batch.x), batch.y)
        lam = float(rng.beta(params.beta, params.beta))
        if params.lam_clip is not None:
            lam = float(np.clip(lam, *params.lam_clip))
        perm = torch.randperm(len(batch.x), generator=g).to(batch.x.device)
        mixed, lam_eff = cutmix_batch(batch.x, lam, rng, perm)
        out = model(mixed)
        return lam_eff * F.cross_entropy(out, batch.y) + (1 - lam_eff) * F.cross_entropy(out, batch.y[perm])

    return loss


@DEFENSES.register
class CutMix(Defense):
    """Fine-tune on the clean reserve with CutMix (ICASSP 2021; BackdoorBox CutMix.repair)."""

    card = DefenseCard(name="cutmix", label="CutMix", paper="Borgnia et al., ICASSP 2021",
                       code="THUYimingLi/BackdoorBox", stage="repair", needs_reserve=True,
                       cost="~0.005 trainings", tables=("table2", "table3"), order=3,
                       cost_phases=(CostPhase("cutmix fine-tune", data="reserve", epochs="epochs",
                                              batch_size=FINETUNE.batch_size),))

    Params = CutMixParams

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p = self.params
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=ctx.generator))
        recipe = replace(FINETUNE, epochs=p.epochs, lr=p.lr)
        model = finetune(ctx.model, ctx.reserve, ctx.budget, ctx.generator, recipe=recipe,
                         loss_fn=cutmix_loss(p, seed), desc="cutmix")
        return DefenseOutput(model, info={"reserve_size": len(ctx.reserve)})
