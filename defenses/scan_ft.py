"""SCAnFT: SCAn detection, then unlearning of the flagged samples (repair + poisoned set + clean reserve).

Follows Tang, Wang, Tang, Zhang, "Demon in the variant: statistical analysis of DNNs for robust
backdoor contamination detection", USENIX Security 2021 (official code TDteach/Demon-in-the-Variant,
Matlab ``msrc`` and the Python port ``pysrc/SCAn.py``) for the detection, and the MeCa paper's
"SCAnFT" (V-A5: detect, then unlearn) for the repair.
The statistics live in :mod:`bench.detection` (float64).

1. Penultimate features of every training and reserve sample (the backdoored model, eval mode,
   no augmentation).
2. **Global model on the reserve only** (centred by the reserve mean): EM of the two-covariance
   model (between-class Su, within-class Se), at most 100 rounds, stop when
   ``||dSu||_F + ||dSe||_F < 1e-5``; F = pinv(Se).
3. **Untangling per class** on its training and reserve samples together, centred by the mean of
   all training + reserve features: 2-means in the F metric from a seeded random start.
4. **Statistic** ``J_k``; the one-group mean takes the form ``mu_form``: ``"code"`` (default,
   what every public implementation computes) or ``"posterior"`` (the model's posterior mean).
5. **Infected classes**: two-sided MAD anomaly index of J above ``class_threshold`` = e^2.
6. **Flag**: in every infected class, the subgroup holding fewer of that class's reserve samples
   (tie: the smaller subgroup); only training samples are flagged.
7. **FT**: nothing flagged -> the model is returned unchanged. Otherwise gradient ascent
   (``-CE``, given labels) on the flagged samples: SGD lr 5e-4, momentum 0.9, Nesterov, wd 1e-4,
   batch 128, 5 epochs, no augmentation (the shared ``recipes.unlearn``); ``relearn_epochs`` > 0
   adds the shared FineTuning recipe on the reserve afterwards (default 0: MeCa mentions none).

Per-sample score (SCAn has none; choice of the spec): ``s_i = a_{y_i} * sigmoid((d_c - d_p)/2)``
with d_c, d_p the squared F-distances of x_i to its class's clean-side and suspect-side subgroup
means and a_k the class's anomaly index (a class whose MAD is 0 gets a large finite index).

Choices:

* The reserve comes from the suite (clean versions of a seeded 5% of the training set), never the
  test set or ground-truth clean samples as in the peers' code; no target class or poison ratio.
* EM tolerance 1e-5 (toolbox and BackdoorBench; the official code stops at 0.01).
* ``(n Su + Se)^-1`` inside the EM is taken for all classes from one eigendecomposition, with a
  ridge of 1e-9 x mean(diag Se) on Se so that features with no within-class variance (dead
  channels) do not break it; F and the statistic's pinv are exact pseudo-inverses (eigenvalues
  below 1e-10 x the largest count as zero), as Matlab's ``pinv``.
* The class threshold is e^2 = 7.389 (BackdoorBench); the two-sided index is kept as in every code.
* Tie in step 6 goes to the smaller subgroup (the peers flag subgroup 1 whatever its size).
* 2-means starts are drawn from the run's seeded generator (the peers' are unseeded).
* Unlearning uses ABL's official settings (the MeCa numbers are lost), Nesterov included; epochs
  are scaled by ``ctx.budget.epochs``.
* The reserve must hold at least two labelled samples of every class (checked before compute
  where the sizes allow, and again on the drawn reserve before any forward pass).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from bench import detection, recipes
from bench.card import CostPhase, DefenseCard
from bench.defense import CellInfo, Defense, DefenseConfigError, DefenseContext, DefenseOutput
from bench.registry import DEFENSES


@dataclass
class SCAnFTParams:
    class_threshold: float = math.exp(2)  # anomaly index above which a class is infected (BackdoorBench)
    mu_form: str = "code"                 # code (every public implementation) | posterior
    em_max_iter: int = 100
    em_tol: float = 1e-5
    kmeans_max_iter: int = 100
    unlearn_epochs: float = 5             # ABL's official unlearning settings
    unlearn_lr: float = 5e-4
    unlearn_weight_decay: float = 1e-4
    batch_size: int = 128
    relearn_epochs: float = 0             # > 0: FineTuning recipe on the reserve afterwards
    reserve_fraction: float | None = None  # None = the suite's reserve fraction

    def validate(self):
        if self.class_threshold <= 0:
            raise ValueError(f"class_threshold must be positive, got {self.class_threshold}")
        if self.mu_form not in ("code", "posterior"):
            raise ValueError(f"mu_form must be 'code' or 'posterior', got '{self.mu_form}'")
        if self.em_max_iter < 1 or self.kmeans_max_iter < 1:
            raise ValueError("em_max_iter and kmeans_max_iter must be >= 1")
        if self.em_tol <= 0:
            raise ValueError(f"em_tol must be positive, got {self.em_tol}")
        if self.unlearn_epochs < 0 or self.relearn_epochs < 0:
            raise ValueError("unlearn_epochs and relearn_epochs must be >= 0")
        if self.unlearn_lr <= 0:
            raise ValueError(f"unlearn_lr must be positive, got {self.unlearn_lr}")
        if self.reserve_fraction is not None and not 0.0 < self.reserve_fraction < 1.0:
            raise ValueError(f"reserve_fraction must be in (0, 1), got {self.reserve_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@DEFENSES.register
class SCAnFT(Defense):
    """SCAn (two-component decomposition, per-class untangling) flags, then gradient-ascent unlearning."""

    card = DefenseCard(name="scan_ft", label="SCAnFT", paper="Tang et al., USENIX Security 2021",
                       code="TDteach/Demon-in-the-Variant", stage="repair", needs_train=True,
                       needs_reserve=True, detects=True, cost="~0.01 trainings", tables=("table2", "table3"),
                       order=6,
                       cost_phases=(
                           # the flagged samples: about half of one infected class (1/20 of CIFAR-10)
                           CostPhase("unlearning", fraction=0.05, epochs="unlearn_epochs", batch_size="batch_size"),
                           CostPhase("relearn", data="reserve", epochs="relearn_epochs",
                                     batch_size=recipes.FINETUNE.batch_size)))

    Params = SCAnFTParams

    def check(self, cell: CellInfo) -> None:
        super().check(cell)
        frac = self.reserve_fraction(cell.reserve_fraction)
        n_res = cell.reserve_images(frac)
        if n_res < 2 * cell.num_classes:
            raise DefenseConfigError(
                f"scan_ft: SCAn needs at least 2 clean reserve samples per class; a reserve fraction of "
                f"{frac} of {cell.n_total} training images gives {n_res} for {cell.num_classes} classes "
                f"(need >= {2 * cell.num_classes}); raise reserve_fraction")

    def detect(self, ctx: DefenseContext) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """SCAn on the backdoored model: (scores, flags, info) over the training set."""
        p = self.params
        train, reserve = ctx.train, ctx.reserve
        if reserve.y is None:
            raise DefenseConfigError("scan_ft needs a labelled reserve")
        c = ctx.num_classes
        res_counts = torch.bincount(reserve.y, minlength=c)
        short = (res_counts < 2).nonzero().flatten().tolist()
        if short:
            raise DefenseConfigError(
                f"scan_ft: the clean reserve holds fewer than 2 samples of class(es) {short} "
                f"(counts {res_counts[short].tolist()}); SCAn needs at least 2 per class; raise "
                f"reserve_fraction")
        model = ctx.model
        f_tr = detection.extract_features(model, train).double()
        f_res = detection.extract_features(model, reserve).double()

        # global model on the reserve only
        su, se, fmat, rounds = detection.scan_global_model(
            f_res - f_res.mean(0, keepdim=True), reserve.y, p.em_max_iter, p.em_tol)

        # untangling per class (training + reserve), centred by the mean of both
        centre = torch.cat([f_tr, f_res]).mean(0, keepdim=True)
        z_tr, z_res = f_tr - centre, f_res - centre
        gen = torch.Generator().manual_seed(int(torch.randint(2 ** 62, (1,), generator=ctx.generator)))
        j = torch.zeros(c, dtype=torch.float64)
        suspect_side = [None] * c   # per class: boolean over its training samples (suspect subgroup)
        d_clean = torch.zeros(len(train), dtype=torch.float64)
        d_susp = torch.zeros(len(train), dtype=torch.float64)
        f_sqrt = detection.psd_sqrt(fmat)   # every class is clustered in the same metric
        for k in range(c):
            tr_idx = (train.y == k).nonzero().flatten()
            rs_idx = (reserve.y == k).nonzero().flatten()
            xk = torch.cat([z_tr[tr_idx], z_res[rs_idx]])
            g1 = detection.two_means(xk, fmat, gen, p.kmeans_max_iter, f_sqrt=f_sqrt)
            j[k] = detection.scan_class_statistic(xk, g1, su, se, fmat, p.mu_form)
            n_tr = len(tr_idx)
            g1_tr, g1_rs = g1[:n_tr], g1[n_tr:]
            res1, res2 = int(g1_rs.sum()), int((~g1_rs).sum())
            size1, size2 = int(g1.sum()), int((~g1).sum())
            # the subgroup with fewer reserve samples is the suspect one (tie: the smaller subgroup)
            suspect_is_g1 = res1 < res2 or (res1 == res2 and size1 <= size2)
            susp = g1_tr if suspect_is_g1 else ~g1_tr
            suspect_side[k] = susp
            if n_tr == 0:
                continue
            s_mask = g1 if suspect_is_g1 else ~g1
            for mask, out in ((s_mask, d_susp), (~s_mask, d_clean)):
                if mask.any():
                    out[tr_idx] = detection.mahalanobis_sq(xk[:n_tr], xk[mask].mean(0), fmat)
        a = detection.mad_anomaly_index(j)
        infected = (a > p.class_threshold).nonzero().flatten().tolist()
        flags = torch.zeros(len(train), dtype=torch.bool)
        for k in infected:
            tr_idx = (train.y == k).nonzero().flatten()
            flags[tr_idx[suspect_side[k]]] = True
        a_finite = torch.nan_to_num(a, posinf=1e6)
        scores = a_finite[train.y] * torch.sigmoid((d_clean - d_susp) / 2)
        ctx.log("scan_J", j.tolist())
        ctx.log("scan_anomaly_index", a_finite.tolist())
        info = {"infected_classes": infected, "J": j.tolist(), "anomaly_index": a_finite.tolist(),
                "em_rounds": rounds, "mu_form": p.mu_form, "n_flagged": int(flags.sum())}
        return scores.float(), flags, info

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p = self.params
        scores, flags, info = self.detect(ctx)
        model = ctx.model
        if flags.any() and p.unlearn_epochs > 0:
            recipes.unlearn(model, ctx.train, flags.nonzero().flatten(), ctx.budget, ctx.generator,
                            epochs=p.unlearn_epochs, lr=p.unlearn_lr, batch_size=p.batch_size,
                            weight_decay=p.unlearn_weight_decay, nesterov=True, desc="scan unlearning")
            if p.relearn_epochs > 0:
                recipes.finetune(model, ctx.reserve, ctx.budget, ctx.generator,
                                 recipe=replace(recipes.FINETUNE, epochs=p.relearn_epochs), desc="scan relearn")
        return DefenseOutput(model, scores=scores, flags=flags, info=info)
