"""``clp``: data-free Channel Lipschitzness-based Pruning.

Follows Zheng, Tang, Li and Liu, "Data-free backdoor removal based on channel Lipschitzness"
(ECCV 2022) and its official code (rkteddy/channel-Lipschitzness-based-pruning, function ``CLP``),
which BackdoorBench ``clp`` copies.

1. Every BatchNorm2d is paired with the Conv2d that feeds it (:func:`bench.pruning.conv_bn_pairs`).
2. For each output channel k, UCLC_k = the largest singular value of the conv kernel of channel k
   as an (in_channels / groups, kh * kw) matrix times |gamma_k| / sqrt(running_var_k) (BN scale
   folded in, no eps, float32, as the official code).
3. Per layer, channels with UCLC_k > mean + u * std (unbiased std) are pruned: their BN weight and
   bias are set to 0 (running statistics untouched), so the channel outputs exactly 0.
4. u = 3 (official ``test.py``; BackdoorBench's cifar/gtsrb configs). No data is used.
5. ``repair_epochs`` > 0 (default 0, pure CLP): then the defense also declares the clean reserve
   and fine-tunes on it with the shared FineTuning recipe (:func:`bench.recipes.finetune`, lr
   0.01, cosine, crop + flip, epochs scaled by the budget). The MeCa preset (``preset="meca"``)
   sets ``repair_epochs`` to FineTuning's 10, since MeCa V-A5 "repairs the model for n epochs".

Choices:

* pairing (``pairing``): ``"dataflow"`` (default) pairs a BN with the conv whose output tensor is
  the BN's input in one traced forward, which is the conv the BN normalises; a BN fed by anything
  else (pre-activation ResNets) is skipped with a warning and listed in ``info``. ``"order"`` is
  the official rule (the conv registered just before the BN). On the suite's ResNets,
  MobileNetV2 and small CNNs (conv -> BN everywhere, shortcut convs included) both give the same
  pairs. A pair whose channel counts differ is skipped with a warning (the peers have no check).
* during the repair the pruned channels are kept at zero by a persistent 0/1 mask on the BN's
  output (:func:`bench.pruning.set_channel_mask`): fine-tuning cannot revive them (their gamma and
  beta also get zero gradient, so they stay at 0).
* u is never picked from test results (BackdoorBench's u sweep over test ACC/ASR is for reporting
  only); a u sweep belongs in an ablation suite.

Outputs (``info``): u, the pairing, pruned channel indices per layer, the total pruned.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from bench.card import CostPhase, DefenseCard
from bench.defense import (CellInfo, Defense, DefenseConfigError, DefenseContext, DefenseOutput,
                           cell_model_or_none)
from bench.pruning import channel_lipschitz, conv_bn_pairs, mask_from_pruned, set_channel_mask
from bench.recipes import FINETUNE, finetune
from bench.registry import DEFENSES


@dataclass
class CLPParams:
    u: float = 3.0
    pairing: str = "dataflow"               # dataflow | order (official)
    repair_epochs: float = 0                # 0 = pure, data-free CLP
    reserve_fraction: float | None = None   # only used when repair_epochs > 0

    def validate(self):
        if self.pairing not in ("dataflow", "order"):
            raise ValueError(f"pairing must be 'dataflow' or 'order', got '{self.pairing}'")
        if self.repair_epochs < 0:
            raise ValueError(f"repair_epochs must be >= 0, got {self.repair_epochs}")
        if self.reserve_fraction is not None and not 0 < self.reserve_fraction < 1:
            raise ValueError(f"reserve_fraction must be in (0, 1), got {self.reserve_fraction}")


def clp_scores(model, image_shape, pairing: str = "dataflow"):
    """[(conv_name, bn_name, bn, UCLC per channel)] and the unpaired BN names."""
    pairs, unpaired = conv_bn_pairs(model, image_shape, pairing)
    return [(cn, bn_name, bn, channel_lipschitz(conv, bn)) for cn, conv, bn_name, bn in pairs], unpaired


@torch.no_grad()
def clp_prune(model, image_shape, u: float = 3.0, pairing: str = "dataflow", keep_masked: bool = False):
    """Prune in place; returns {bn_name: pruned indices} and the unpaired BN names."""
    scored, unpaired = clp_scores(model, image_shape, pairing)
    pruned = {}
    for _, bn_name, bn, lips in scored:
        thr = lips.mean() + u * lips.std()
        idx = torch.where(lips > thr)[0]
        pruned[bn_name] = idx.tolist()
        if len(idx):
            bn.weight[idx.to(bn.weight.device)] = 0
            bn.bias[idx.to(bn.bias.device)] = 0
            if keep_masked:
                set_channel_mask(bn, mask_from_pruned(bn.num_features, idx))
    return pruned, unpaired


@DEFENSES.register
class CLP(Defense):
    """Data-free pruning of channels with an outlying Lipschitz upper bound (ECCV 2022)."""

    card = DefenseCard(name="clp", label="CLP", paper="Zheng et al., ECCV 2022",
                       code="rkteddy/channel-Lipschitzness-based-pruning", stage="repair",
                       needs_reserve=False, cost="~0 trainings (data-free)", tables=("table2", "table3"),
                       order=4,   # needs_reserve: the class default; __init__ sets it from repair_epochs
                       cost_phases=(CostPhase("repair", data="reserve", epochs="repair_epochs",
                                              batch_size=FINETUNE.batch_size),))

    Params = CLPParams
    presets = {"meca": {"repair_epochs": 10}}

    def __init__(self, params=None):
        super().__init__(params)
        self.needs_reserve = self.params.repair_epochs > 0   # the reserve only for the repair

    def check(self, cell: CellInfo) -> None:
        super().check(cell)
        model = cell_model_or_none(cell)
        if model is None:   # an unknown model is reported by the runner's own checks
            return
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pairs, _ = conv_bn_pairs(model, cell.image_shape, self.params.pairing)
        if not pairs:
            raise DefenseConfigError(
                f"clp: model '{cell.model_name}' has no BatchNorm2d fed by a Conv2d "
                f"(pairing '{self.params.pairing}'); CLP needs conv-then-BN layers")

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p = self.params
        model = ctx.model
        pruned, unpaired = clp_prune(model, ctx.image_shape, p.u, p.pairing, keep_masked=p.repair_epochs > 0)
        total = sum(len(v) for v in pruned.values())
        ctx.log("pruned", total)
        if p.repair_epochs > 0:
            finetune(model, ctx.reserve, ctx.budget, ctx.generator,
                     recipe=replace(FINETUNE, epochs=p.repair_epochs), desc="clp-repair")
        return DefenseOutput(model, info={"u": p.u, "pairing": p.pairing, "pruned_total": total,
                                          "pruned": {k: v for k, v in pruned.items() if v},
                                          "layers": len(pruned), "unpaired_bn": unpaired,
                                          "repaired": p.repair_epochs > 0})
