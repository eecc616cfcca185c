"""``fine_pruning``: prune the channels that stay dormant on clean data, then fine-tune.

Follows Liu, Dolan-Gavitt and Garg, "Fine-Pruning: defending against backdooring attacks on deep
neural networks" (RAID 2018) and the authors' script (kangliucn/Fine-pruning-defense), compared
with BackdoorBench ``fp`` and BackdoorBox ``Pruning``.

1. **Layer** (``layer``): ``"auto"`` = the model's last convolutional stage, the outermost module
   whose output is the last feature maps (ResNets: ``layer4`` after its final ReLU; MobileNetV2:
   ``head_conv``, the last 1x1 conv + BN + ReLU6; small CNNs: ``layer3``; timm CNNs likewise, see
   :mod:`bench.pruning`). Any dotted module path of the network can be named instead; a name the
   model does not have is refused in :meth:`FinePruning.check` before any compute.
2. **Activation**: each channel's mean over all reserve images (eval mode, no augmentation) and
   all spatial positions of that layer's output.
3. **Order**: increasing mean activation (dormant first). Pruning is a persistent 0/1 mask on the
   layer's output (:func:`bench.pruning.set_channel_mask`) that stays applied during fine-tuning
   and evaluation.
4. **How many**: grow the pruned set by ceil(``step`` * C) channels at a time (BackdoorBench's
   ``once_prune_ratio`` 0.01) and stop at the first step whose reserve accuracy falls below
   (1 - ``acc_drop``) times the unpruned model's (BackdoorBench ``acc_ratio`` 0.1); the last set
   that passed is kept. Choice: "keep the largest set that passes" is read as "stop at the first
   failure" (BackdoorBench's loop and the paper's "prune until accuracy falls below a level"),
   and at least one channel always survives. Only the reserve is used (never test data). For the
   last stage, the layer output is computed once and only ``forward_head`` reruns per step; for
   another layer the masked model reruns on the reserve per step. ``prune_ratio`` (a fixed
   fraction in [0, 1)) replaces the search: floor(ratio * C) channels, BackdoorBox-style.
5. **Fine-tune** (``finetune``, default on) with the shared FineTuning recipe
   (:func:`bench.recipes.finetune`: SGD 0.01, cosine, 10 paper epochs x budget, crop + flip),
   mask kept.

Choices: the reserve is the clean reserve of the suite (``reserve_fraction`` overrides it); its
accuracy is optimistic (the model saw these images in training), so the rule prunes more than a
held-out set would (accepted, recorded via ``info``). The MeCa preset (``preset="meca"``) is
BackdoorBox's ``Pruning`` as MeCa V-A5 words it: ``layer2``, 20% of its channels, no fine-tuning
(best guess, the numbers are lost in the paper's text). MobileNetV2 has no ``layer2``: name a
module of ``layers`` (e.g. ``layers.6``) there.

Outputs (``info``): layer, channel count, pruned count and indices, reserve accuracy per step.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from bench import engine, metrics
from bench.card import CostPhase, DefenseCard
from bench.data import Split
from bench.defense import CellInfo, Defense, DefenseContext, DefenseOutput, cell_model_or_none
from bench.pruning import (last_stage_name, layer_outputs, mask_from_pruned, mean_channel_activation,
                           prune_step_count, resolve_layer, set_channel_mask)
from bench.recipes import FINETUNE, finetune
from bench.registry import DEFENSES


@dataclass
class FinePruningParams:
    layer: str = "auto"                    # last conv stage, or a dotted module path ("layer2")
    prune_ratio: float | None = None       # fixed fraction instead of the accuracy-driven search
    step: float = 0.01                     # search step, fraction of the channels
    acc_drop: float = 0.10                 # largest relative drop of reserve accuracy allowed
    finetune: bool = True
    finetune_epochs: float = 10            # FineTuning recipe epochs (paper), scaled by the budget
    reserve_fraction: float | None = None  # None: the suite's reserve fraction

    def validate(self):
        if self.prune_ratio is not None and not 0 <= self.prune_ratio < 1:
            raise ValueError(f"prune_ratio must be in [0, 1), got {self.prune_ratio}")
        if not 0 < self.step <= 1:
            raise ValueError(f"step must be in (0, 1], got {self.step}")
        if not 0 <= self.acc_drop < 1:
            raise ValueError(f"acc_drop must be in [0, 1), got {self.acc_drop}")
        if self.finetune_epochs <= 0:
            raise ValueError(f"finetune_epochs must be positive, got {self.finetune_epochs}")
        if self.reserve_fraction is not None and not 0 < self.reserve_fraction < 1:
            raise ValueError(f"reserve_fraction must be in (0, 1), got {self.reserve_fraction}")
        if not self.layer:
            raise ValueError("layer must be 'auto' or a module name")


@DEFENSES.register
class FinePruning(Defense):
    """Prune dormant channels of the last conv stage on the clean reserve, then fine-tune (RAID 2018)."""

    card = DefenseCard(name="fine_pruning", label="FinePruning", paper="Liu, Dolan-Gavitt & Garg, RAID 2018",
                       code="kangliucn/Fine-pruning-defense", stage="repair", needs_reserve=True,
                       cost="~0.01 trainings", tables=("table2", "table3"), order=2,
                       cost_phases=(CostPhase("fine-tune", data="reserve", epochs="finetune_epochs",
                                              batch_size=FINETUNE.batch_size, when={"finetune": True}),))

    Params = FinePruningParams
    presets = {"meca": {"layer": "layer2", "prune_ratio": 0.2, "finetune": False}}

    def check(self, cell: CellInfo) -> None:
        super().check(cell)
        model = cell_model_or_none(cell)
        if model is None:   # an unknown model is reported by the runner's own checks
            return
        resolve_layer(model, self.params.layer, cell.image_shape)

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p = self.params
        model, reserve = ctx.model, ctx.reserve
        engine.prepare_model(model)
        name, layer = resolve_layer(model, p.layer, ctx.image_shape)
        act = mean_channel_activation(model, layer, reserve)
        channels = len(act)
        order = torch.argsort(act, stable=True)        # dormant first
        info = {"layer": name, "channels": channels}
        if p.prune_ratio is not None:
            k = int(p.prune_ratio * channels)
        else:
            k, steps = self.search(model, name, layer, order, reserve, ctx.image_shape)
            info["search"] = steps
            ctx.log("reserve_acc_per_step", [s["reserve_acc"] for s in steps])
        pruned = order[:k].sort().values
        set_channel_mask(layer, mask_from_pruned(channels, pruned))
        info.update(pruned=int(k), pruned_fraction=k / channels, pruned_channels=pruned.tolist())
        ctx.log("pruned", int(k))
        if p.finetune:
            recipe = replace(FINETUNE, epochs=p.finetune_epochs)
            finetune(model, reserve, ctx.budget, ctx.generator, recipe=recipe, desc="fine-pruning")
        return DefenseOutput(model, info=info)

    def search(self, model, name, layer, order, reserve: Split, image_shape):
        """Grow the pruned set in steps until reserve accuracy drops too far (see docstring)."""
        p = self.params
        channels = len(order)
        y = reserve.y
        if name == last_stage_name(model, image_shape):     # cache the maps, rerun the head only
            maps = layer_outputs(model, layer, reserve)
            head = model.net.forward_head if hasattr(model, "net") else model.forward_head
            dev = engine.device()

            @torch.no_grad()
            def accuracy(mask):
                m = mask.to(dev).view(1, -1, 1, 1)
                preds = [head(maps[i:i + 512].to(dev) * m).argmax(1).cpu() for i in range(0, len(maps), 512)]
                return metrics.clean_accuracy(torch.cat(preds), y)
        else:                                               # intermediate layer: rerun the model
            def accuracy(mask):
                set_channel_mask(layer, mask)
                return metrics.clean_accuracy(engine.predict(model, reserve), y)

        base = accuracy(torch.ones(channels))
        floor = (1 - p.acc_drop) * base
        steps = [{"pruned": 0, "reserve_acc": base}]
        best, stride = 0, prune_step_count(channels, p.step)
        k = stride
        while k < channels:
            acc = accuracy(mask_from_pruned(channels, order[:k]))
            steps.append({"pruned": k, "reserve_acc": acc})
            if acc < floor:
                break
            best = k
            k += stride
        if "channel_mask" in layer._buffers:               # leave no search mask behind
            set_channel_mask(layer, torch.ones(channels))
        return best, steps

