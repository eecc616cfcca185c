"""MeCa (Mellivora Capensis): train a clean model on a poisoned training set, with no clean data.

Paper: Pu, Chen, Zhou, Feng, Li, Hu, Ji, "Mellivora Capensis: a backdoor-free training framework on
the poisoned dataset without auxiliary data", arXiv 2405.12719 (section IV, Algorithms 1-2, eq. 3,
11, 12; section V). No official code is public. Spec: ``specs/defenses/meca.md``.

Stages (a training-time defense: it gets the poisoned training set and trains from scratch):

0. **Warm-up.** A fresh model trained on the whole poisoned set: the "possibly backdoored" model.
1. **Backdoor enhancement** (Algorithm 2, eq. 11). For rounds k = 1..K: score every training sample
   with the KL consistency of :func:`bench.consistency.kl_consistency` (Algorithm 1: one-step
   adversarial perturbation inside a random ``patch_size`` square); D_c = the ceil(rho_k N) samples
   with the highest KL (lowest consistency: "labeled as clean samples and unlearned"), D_u = the
   rest; one epoch over D_u where each D_u batch is paired with a D_c batch and the loss is
   ``mean CE(D_u) - lambda * mean CE(D_c)``. The model's backdoor gets stronger while its clean
   accuracy falls (Fig. 6).
2. **Detection.** The enhanced model's prediction on every training sample (eval, no augmentation):
   misclassified = clean, predicted = given label = poisoned. No threshold, no poison ratio.
3. **Clean model.** A fresh model trained from scratch on the detected-clean samples with the cell's
   standard recipe.
4. **Relabel and relearn** (eq. 12, Table IV; ``relabel_relearn``, default off). D' = detected-clean
   plus the flagged samples relabelled with the clean model's prediction; the clean model is
   fine-tuned on D'. When it is on, the model before relearning is also measured
   (checkpoint ``clean_before_relearn``), so one run reports both Table IV variants.

Diagnostics: ``kl_round1`` (every sample's round-1 KL score, paired with the ground truth by the
evaluator: Fig. 4); checkpoints ``enhance_round{k}`` (ACC/ASR of the enhanced model after every
round: Fig. 6); logs ``dc_size`` and ``rho`` per round, ``kl_mean`` per round, and
``flagged_fraction_per_label``. Output scores: the enhanced model's softmax probability of the
given label (higher = more likely poison), flags: predicted == given label.

Choices where the paper's extracted text lost the numbers (the spec marks them **choice**):

* patch_size = 2 (paper) is read as the side of the square (Algorithm 1 says "radius"); one square
  per sample, uniform position, redrawn per sample and per round;
* eps = 8/255 (L_inf), perturbation = eps * sign of the input gradient of CE against the model's own
  prediction; KL direction KL(f(x) || f(x')); scoring in eval mode without augmentation;
* warm-up: ``warmup_epochs`` = 5 epochs (scaled by the budget) with the shape of the cell's standard
  recipe (optimizer, lr, schedule, batch size, augmentation), its length set to the warm-up's;
* K = ``iterations`` = 5 rounds; rho_k = min(k * ``partition_rate``, ``rho_max``) with
  partition_rate 0.05 and rho_max 0.5; D_c re-selected from all N samples every round;
* one epoch over D_u per round (``enhance_epochs``), SGD lr 0.01 (``enhance_lr``), momentum 0.9,
  wd 5e-4, constant learning rate, the standard recipe's batch size and augmentation;
* each D_u batch is paired with a D_c batch of the same size (at most |D_c|) drawn cyclically from
  a reshuffled D_c and augmented the same way; both go through one forward pass (shared BatchNorm
  statistics); the loss is the per-set mean CE on D_u minus lambda (= 0.05, paper) times the
  per-set mean CE on D_c, with the given labels. The D_c passes count in the run's cost;
* detection score for AUROC: the enhanced model's softmax probability of the given label;
* clean model: the cell's standard recipe (the paper gives none); if nothing is detected clean the
  run fails with a clear error (there is nothing to train on);
* relabel-and-relearn: 10 epochs (budget-scaled), SGD lr 0.01, cosine, the standard recipe's batch
  size and augmentation (numbers lost in the paper).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench import engine
from bench.card import CostPhase, DefenseCard
from bench.consistency import kl_consistency
from bench.data import Split
from bench.defense import CellInfo, Defense, DefenseConfigError, DefenseContext, DefenseOutput
from bench.engine import Batch, TrainConfig
from bench.recipes import FINETUNE, finetune, train_from_scratch
from bench.registry import DEFENSES, require_positive


@dataclass
class MeCaParams:
    """MeCa's parameters (``specs/defenses/meca.md``; paper values: patch_size, unlearn_coef)."""

    patch_size: int = 2              # side of the perturbed square (paper: "patch size 2")
    eps: float = 8 / 255             # L_inf bound of the one-step perturbation (choice)
    warmup_epochs: float = 5         # paper epochs of the warm-up training (choice)
    iterations: int = 5              # enhancement rounds K (choice)
    partition_rate: float = 0.05     # rho_k = min(k * partition_rate, rho_max) (choice; Fig. 7 sweeps it)
    rho_max: float = 0.5             # cap of the partition rate (choice)
    unlearn_coef: float = 0.05       # lambda of eq. 11 (paper)
    enhance_lr: float = 0.01         # SGD lr of the enhancement rounds (choice)
    enhance_epochs: float = 1        # epochs over D_u per round (choice)
    relabel_relearn: bool = False    # stage 4 (eq. 12, Table IV)
    relearn_epochs: float = 10       # paper epochs of the relearning fine-tune (choice)
    relearn_lr: float = 0.01         # its SGD lr, cosine (choice)
    score_batch_size: int | None = None  # batch size of the scoring pass (None: the engine's)

    def validate(self):
        def num(name, v):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")

        for name in ("eps", "warmup_epochs", "partition_rate", "rho_max", "unlearn_coef", "enhance_lr",
                     "enhance_epochs", "relearn_epochs", "relearn_lr"):
            num(name, getattr(self, name))
        for name in ("patch_size", "iterations"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not 0 < self.eps <= 1:
            raise ValueError(f"eps must be in (0, 1] (pixels are in [0, 1]), got {self.eps}")
        if not 0 < self.partition_rate < 1:
            raise ValueError(f"partition_rate must be in (0, 1), got {self.partition_rate}")
        if not 0 < self.rho_max < 1:
            raise ValueError(f"rho_max must be in (0, 1) (D_u must keep samples), got {self.rho_max}")
        if self.partition_rate > self.rho_max:
            raise ValueError(f"partition_rate {self.partition_rate} exceeds rho_max {self.rho_max}")
        if self.unlearn_coef < 0:
            raise ValueError(f"unlearn_coef must be >= 0, got {self.unlearn_coef}")
        require_positive(self, "warmup_epochs", "enhance_epochs", "relearn_epochs", "enhance_lr", "relearn_lr")
        if not isinstance(self.relabel_relearn, bool):
            raise ValueError(f"relabel_relearn must be true or false, got {self.relabel_relearn!r}")
        if self.score_batch_size is not None and (isinstance(self.score_batch_size, bool)
                                                  or not isinstance(self.score_batch_size, int)
                                                  or self.score_batch_size < 1):
            raise ValueError(f"score_batch_size must be a positive integer or None, got {self.score_batch_size!r}")

    def rho(self, k: int) -> float:
        """The partition rate of round k (1-based)."""
        return min(k * self.partition_rate, self.rho_max)


def paired_unlearning_loss(data: Split, dc_idx: torch.Tensor, coef: float, generator: torch.Generator,
                           cfg: TrainConfig):
    """Eq. 11 as an engine loss: ``mean CE(D_u batch) - coef * mean CE(D_c batch)``.

    The engine iterates D_u; each step draws the next D_c batch (same size, at most |D_c|) from a
    cyclic, reshuffled order of ``dc_idx``, augments it like the D_u batch, and counts its passes.
    """
    dc_idx = dc_idx.detach().cpu().long()
    state = {"order": dc_idx[torch.randperm(len(dc_idx), generator=generator)], "pos": 0}

    def next_dc(k: int) -> torch.Tensor:
        out = []
        while k > 0:
            if state["pos"] >= len(state["order"]):
                state["order"] = dc_idx[torch.randperm(len(dc_idx), generator=generator)]
                state["pos"] = 0
            take = state["order"][state["pos"]:state["pos"] + k]
            state["pos"] += len(take)
            k -= len(take)
            out.append(take)
        return torch.cat(out)

    def loss(model, batch: Batch) -> torch.Tensor:
        dev = batch.x.device
        c = next_dc(min(len(batch.idx), len(dc_idx)))
        xc = data.x[c.to(data.x.device)].to(dev, non_blocking=True).float().div_(255.0)
        yc = data.y[c.to(data.y.device)].to(dev, non_blocking=True)
        if cfg.augment:
            xc = engine.augment(xc, generator, cfg.crop_padding, cfg.flip)
        if dev.type == "cuda" and engine.runtime().channels_last:
            xc = xc.contiguous(memory_format=torch.channels_last)
        logits = model(torch.cat([batch.x, xc.to(batch.x.dtype)]))
        nu = len(batch.x)
        engine.count_passes(len(c))
        return F.cross_entropy(logits[:nu], batch.y) - coef * F.cross_entropy(logits[nu:], yc)

    return loss


@DEFENSES.register
class MeCa(Defense):
    """MeCa: KL-consistency partition, backdoor enhancement, detection, clean training (train stage)."""

    card = DefenseCard(name="meca", label="MeCa", paper="Pu et al., arXiv 2405.12719", stage="train",
                       detects=True, variant_params={"relabel_relearn": True}, variant_name="RR",
                       tables=("table2", "table3", "table4", "table5", "table6", "table7", "fig4", "fig6",
                               "fig7"), order=8,
                       cost_phases=(
                           CostPhase("warm-up", epochs="warmup_epochs"),
                           CostPhase("KL scoring", kind="grad", epochs=1, repeat="iterations"),
                           # D_u = 1 - rho_k of the set (0.85 on average over the default rounds),
                           # every D_u batch paired with a D_c batch
                           CostPhase("enhancement", fraction=0.85, epochs="enhance_epochs", repeat="iterations",
                                     passes=2),
                           # an upper bound: the clean model trains on the detected-clean samples only
                           CostPhase("clean model", epochs="standard"),
                           CostPhase("relearn", epochs="relearn_epochs", when={"relabel_relearn": True})))

    Params = MeCaParams
    presets = {"relearn": {"relabel_relearn": True}}

    def check(self, cell: CellInfo) -> None:
        super().check(cell)
        p = self.params
        side = min(cell.image_shape[-2:])
        if p.patch_size > side:
            raise DefenseConfigError(f"meca: patch_size {p.patch_size} is larger than the {side}px images")
        n_c = math.ceil(p.rho_max * cell.n_train)
        if cell.n_train < 2 or n_c >= cell.n_train:
            raise DefenseConfigError(
                f"meca: rho_max {p.rho_max} of {cell.n_train} training images leaves no samples to learn")

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p = self.params
        train, base = ctx.train, ctx.train_config
        n = len(train)
        gen = ctx.generator

        # 0. warm-up: the "possibly backdoored" model
        model = ctx.new_model()
        warm_epochs = ctx.budget.epochs(p.warmup_epochs)
        engine.fit(model, train, base.scaled(epochs=warm_epochs), generator=gen, desc="meca warm-up")
        ctx.checkpoint("enhance_round0", model)

        # 1. backdoor enhancement (Algorithm 2)
        enhance_cfg = TrainConfig(epochs=ctx.budget.epochs(p.enhance_epochs), batch_size=base.batch_size,
                                  optimizer="sgd", lr=p.enhance_lr, momentum=0.9, weight_decay=5e-4,
                                  schedule="constant", augment=base.augment, crop_padding=base.crop_padding,
                                  flip=base.flip)
        dc_sizes, rhos = [], []
        for k in range(1, p.iterations + 1):
            kl = kl_consistency(model, train, patch_size=p.patch_size, eps=p.eps, generator=gen,
                                batch_size=p.score_batch_size)
            if k == 1:
                ctx.log_sample_scores("kl_round1", kl)
            rho = p.rho(k)
            n_c = min(math.ceil(rho * n), n - 1)
            order = torch.argsort(kl, descending=True, stable=True)
            dc_idx, du_idx = order[:n_c].sort().values, order[n_c:].sort().values
            loss_fn = paired_unlearning_loss(train, dc_idx, p.unlearn_coef, gen, enhance_cfg)
            engine.fit(model, train, enhance_cfg, loss_fn=loss_fn, generator=gen, indices=du_idx,
                       desc=f"meca enhance {k}")
            dc_sizes.append(n_c)
            rhos.append(rho)
            ctx.log("dc_size", dc_sizes.copy())
            ctx.log("rho", rhos.copy())
            ctx.log(f"kl_mean_round{k}", float(kl.mean()))
            ctx.checkpoint(f"enhance_round{k}", model)

        # 2. detection: misclassified by the enhanced model = clean, the rest poisoned
        y = train.y.cpu()
        probs = engine.predict_logits(model, train).float().softmax(1)
        pred = probs.argmax(1)
        flags = pred == y
        scores = probs.gather(1, y[:, None]).squeeze(1)
        per_label = []
        for c in range(ctx.num_classes):
            m = y == c
            per_label.append(float(flags[m].float().mean()) if m.any() else float("nan"))
        ctx.log("flagged_fraction_per_label", per_label)
        clean_idx = (~flags).nonzero().flatten()
        n_flagged = int(flags.sum())
        ctx.log("n_flagged", n_flagged)
        if len(clean_idx) == 0:
            raise RuntimeError("meca: the enhanced model classifies every training sample as its given "
                               "label, so no sample is detected clean and there is nothing to train on")

        # 3. the clean model, from scratch on the detected-clean samples
        clean = ctx.new_model()
        train_from_scratch(clean, train, base, gen, indices=clean_idx, desc="meca clean model")

        # 4. relabel (eq. 12) and relearn
        n_relabelled = 0
        if p.relabel_relearn:
            ctx.checkpoint("clean_before_relearn", clean)
            y_new = y.clone()
            if n_flagged:
                flagged_idx = flags.nonzero().flatten()
                y_new[flagged_idx] = engine.predict(clean, train.subset(flagged_idx.to(train.x.device)))
                n_relabelled = int((y_new[flagged_idx] != y[flagged_idx]).sum())
            recipe = FINETUNE.scaled(epochs=p.relearn_epochs, lr=p.relearn_lr, batch_size=base.batch_size,
                                     augment=base.augment, crop_padding=base.crop_padding, flip=base.flip)
            finetune(clean, Split(train.x, y_new), ctx.budget, gen, recipe=recipe, desc="meca relearn")
            ctx.log("n_relabelled", n_relabelled)

        info = {"n_detected_clean": len(clean_idx), "n_flagged": n_flagged, "dc_sizes": dc_sizes,
                "rhos": rhos, "warmup_epochs": warm_epochs, "relabel_relearn": p.relabel_relearn,
                "n_relabelled": n_relabelled}
        return DefenseOutput(clean, scores=scores, flags=flags, info=info)
