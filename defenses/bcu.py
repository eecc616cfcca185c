"""BCU: backdoor cleansing with unlabeled data (repair).

Paper: Pang, Sun, Ling, Chen, "Backdoor Cleansing with Unlabeled Data", CVPR 2023, arXiv
2211.12044. Official code: luluppang/BCU, ``defense/ft/distillation_dropout_increase.py`` run with
``run/run_defense.sh`` and ``config/defense/ft/cifar10.yaml``. Only the abstract was readable; the
settings follow that code. No label is used anywhere.

1. **Adaptive layer-wise re-initialisation.** A fresh model of the same architecture is built;
   every weight and bias of a non-normalisation layer of the student is, element-wise, the
   backdoored teacher's value with probability 1 - p and the fresh value with probability p
   (Bernoulli mask, kept values not rescaled). Normalisation layers (weights, biases, running
   statistics) are copied from the teacher. p by group, the official run line
   (``--layerwise_ratio``): stem 0.01, layer1 0.01, layer2 0.03, layer3 0.09, layer4 0.27, final
   linear 0.10. A block's 1x1 shortcut conv belongs to its stage; the code skips names containing
   ``bn`` or ``shortcut.1``, the suite skips by module type (every ``_NormBase``, ``GroupNorm``,
   ``LayerNorm``).
2. **Distillation** on the unlabeled images: loss = KL(softmax(t / T_e) || softmax(s / T_e)),
   batch mean, no T^2 factor, no CE term (the code's pseudo-label CE is computed but never added),
   T_e = 1 + 3 (e + 1) / E in epoch e = 0..E-1 (rising to 4 in the last epoch). Teacher frozen in
   eval mode; student in train mode. SGD on all student parameters, lr 0.01, momentum 0.9, weight
   decay 5e-4, batch 256, E = 100 epochs, one cosine over the run (the code's CosineAnnealingLR
   with T_max 100 stepped per epoch; the engine steps it per batch).
3. **Output:** the student after the last epoch (the code only logs the best test accuracy).

Choices (where the code leaves a setting open):

* Data: the suite's clean reserve (default 5%) with the labels dropped (``reserve_labels =
  False``), for parity with the other defenses; the official CIFAR-10 run uses a held-out 10%
  (``reserve_fraction=0.1`` reproduces that amount). Augmentation: the cell's standard one (the
  code flips only on CIFAR-10).
* Fresh initialisation: ``fresh_init="kaiming_fan_out"`` (default) re-draws every conv weight of
  the fresh model Kaiming-normal (fan_out, ReLU), as the code's model does; linear layers keep
  PyTorch's default. ``"default"`` keeps the suite model's own initialisation.
* Groups: models with ``layer1``..``layer4`` stages (the ResNets) use them, with the stem and
  anything else outside the stages in group 0; for other models (MobileNetV2, the small CNNs,
  timm models) the first weight layer is the stem, the remaining feature layers (convs and
  other parametrised non-normalisation modules, in registration order) form four consecutive
  groups of (near) equal layer count, and the classifier (``model.classifier``) is the last group.
* Budget: E = ``ctx.budget.epochs(100)``; the temperature schedule uses the scaled E (so it still
  rises from about 1 to 4), as does the cosine.
* The Bernoulli masks are drawn from the run's generator (``ctx.generator``), the fresh model is
  ``ctx.new_model()`` (seeded by the run), so the run is a pure function of its spec.

Diagnostics: the fraction of re-initialised elements per group (``bcu/reinit_fraction``) and the
temperature schedule.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from bench import engine
from bench.card import CostPhase, DefenseCard
from bench.defense import Defense, DefenseConfigError, DefenseContext, DefenseOutput
from bench.distill import cell_augmentation, distillation_loss
from bench.engine import Batch, TrainConfig
from bench.registry import DEFENSES, require_positive

GROUPS = ("stem", "layer1", "layer2", "layer3", "layer4", "linear")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


@dataclass
class BCUParams:
    layerwise_ratio: tuple[float, ...] = (0.01, 0.01, 0.03, 0.09, 0.27, 0.10)
    epochs: float = 100
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    t_start: float = 1.0      # T_e = t_start + (t_end - t_start) (e + 1) / E
    t_end: float = 4.0
    fresh_init: str = "kaiming_fan_out"   # kaiming_fan_out | default
    reserve_fraction: float | None = None  # None: the suite's reserve (5%); official CIFAR-10: 0.1

    def __post_init__(self):
        self.layerwise_ratio = tuple(float(r) for r in self.layerwise_ratio)

    def validate(self):
        if len(self.layerwise_ratio) != len(GROUPS):
            raise ValueError(f"layerwise_ratio needs {len(GROUPS)} values ({', '.join(GROUPS)}), "
                             f"got {len(self.layerwise_ratio)}")
        if any(not 0 <= r <= 1 for r in self.layerwise_ratio):
            raise ValueError(f"layerwise_ratio values are probabilities in [0, 1], got {self.layerwise_ratio}")
        require_positive(self, "epochs", "lr", "t_start", "t_end")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.fresh_init not in ("kaiming_fan_out", "default"):
            raise ValueError(f"fresh_init must be 'kaiming_fan_out' or 'default', got '{self.fresh_init}'")
        if self.reserve_fraction is not None and not 0 < self.reserve_fraction < 1:
            raise ValueError(f"reserve_fraction must be in (0, 1), got {self.reserve_fraction}")


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that hold parameters of their own and are not normalisation layers, in order."""
    return [(n, m) for n, m in model.named_modules()
            if not isinstance(m, _NORMS) and any(True for _ in m.parameters(recurse=False))]


def layer_groups(model: nn.Module) -> dict[str, int]:
    """Map each weight layer's name to its group: 0 stem, 1-4 stages, 5 classifier."""
    layers = weight_layers(model)
    head = getattr(model, "classifier", None)
    net = getattr(model, "net", model)
    prefix = "net." if net is not model else ""
    out: dict[str, int] = {}
    body = []
    for name, mod in layers:
        if head is not None and mod is head:
            out[name] = 5
        else:
            body.append(name)
    if all(hasattr(net, f"layer{k}") for k in range(1, 5)):
        for name in body:
            stage = next((k for k in range(1, 5) if name.startswith(f"{prefix}layer{k}.")), 0)
            out[name] = stage
    elif body:
        out[body[0]] = 0
        for k, chunk in enumerate(np.array_split(np.arange(1, len(body)), 4), start=1):
            for i in chunk:
                out[body[int(i)]] = k
    return out


def fresh_model(ctx: DefenseContext, init: str, generator: torch.Generator) -> nn.Module:
    """A freshly initialised model of the cell's architecture (optionally Kaiming fan-out convs)."""
    fresh = ctx.new_model()
    if init == "kaiming_fan_out":
        for m in fresh.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=generator)
    return fresh


@torch.no_grad()
def layerwise_reinit(teacher: nn.Module, fresh: nn.Module, ratios, generator: torch.Generator
                     ) -> tuple[nn.Module, dict[str, float]]:
    """The student: the teacher's weights, each element replaced by the fresh model's with the
    probability of its layer's group; normalisation layers and buffers copied from the teacher.
    Returns the student and the realised fraction of replaced elements per group."""
    student = copy.deepcopy(teacher)
    groups = layer_groups(student)
    fresh_mods = dict(fresh.named_modules())
    replaced = [0] * len(GROUPS)
    total = [0] * len(GROUPS)
    for name, mod in weight_layers(student):
        k = groups[name]
        src = fresh_mods.get(name)
        if src is None:
            raise DefenseConfigError(f"bcu: the fresh model has no layer '{name}'")
        fresh_params = dict(src.named_parameters(recurse=False))
        for pname, param in mod.named_parameters(recurse=False):
            new = fresh_params[pname].detach().to(param.device, param.dtype)
            keep = torch.bernoulli(torch.full(param.shape, 1.0 - ratios[k]), generator=generator).to(param.device)
            param.copy_(param * keep.to(param.dtype) + new * (1 - keep.to(param.dtype)))
            replaced[k] += int((keep == 0).sum())
            total[k] += keep.numel()
    return student, {g: (replaced[i] / total[i] if total[i] else float("nan")) for i, g in enumerate(GROUPS)}


def rising_temperature(t_start: float, t_end: float, epochs: float):
    """T_e = t_start + (t_end - t_start) (e + 1) / E for the engine's epoch e (E = ceil(epochs))."""
    n = max(1, math.ceil(epochs))

    def temperature(batch: Batch) -> float:
        return t_start + (t_end - t_start) * min(batch.epoch + 1, n) / n

    return temperature


@DEFENSES.register
class BCU(Defense):
    """BCU: layer-wise weight re-initialisation and distillation from the backdoored model on unlabeled data."""

    card = DefenseCard(name="bcu", label="BCU", paper="Pang et al., CVPR 2023 (arXiv 2211.12044)",
                       code="luluppang/BCU", stage="repair", needs_reserve=True, reserve_labels=False,
                       order=11,   # distillation: the frozen teacher's forward pass weighs about 1/3
                       cost_phases=(CostPhase("distillation", data="reserve", epochs="epochs",
                                              batch_size="batch_size", weight=4 / 3),))

    Params = BCUParams

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p = self.params
        teacher = ctx.model
        fresh = fresh_model(ctx, p.fresh_init, ctx.generator)
        if not layer_groups(teacher):
            raise DefenseConfigError("bcu: the model has no weight layers to re-initialise")
        student, fractions = layerwise_reinit(teacher, fresh, p.layerwise_ratio, ctx.generator)
        del fresh
        ctx.log("bcu/reinit_fraction", fractions)

        engine.prepare_model(teacher)
        teacher.eval()
        for q in teacher.parameters():
            q.requires_grad_(False)
        epochs = ctx.budget.epochs(p.epochs)
        temperature = rising_temperature(p.t_start, p.t_end, epochs)
        n = max(1, math.ceil(epochs))
        ctx.log("bcu/temperatures", [p.t_start + (p.t_end - p.t_start) * (e + 1) / n for e in range(n)])
        cfg = TrainConfig(epochs=epochs, batch_size=p.batch_size, optimizer="sgd", lr=p.lr, momentum=p.momentum,
                          weight_decay=p.weight_decay, schedule="cosine", **cell_augmentation(ctx.train_config))
        engine.fit(student, ctx.reserve, cfg, loss_fn=distillation_loss(teacher, temperature),
                   generator=ctx.generator, desc="bcu distil")
        return DefenseOutput(student, info={"reinit_fraction": fractions, "epochs": epochs})
