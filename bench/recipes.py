"""Training recipes shared by several defenses, built on the engine (no plug-in owns a loop).

* :func:`finetune`: the FineTuning baseline's recipe (Liu et al., RAID 2018, as BackdoorBox and
  BackdoorBench run it), also the repair phase of Fine-Pruning, CLP, CutMix and SCAn+FT: all
  layers, CE, crop + flip, SGD lr 0.01, momentum 0.9, wd 5e-4, batch 128, cosine to 0, 10 paper
  epochs scaled by the suite's budget.
* :func:`unlearn`: gradient ascent on the cross-entropy of a set of (suspected poison) samples,
  as ABL, SCAn+FT and DBR do.
* :func:`train_from_scratch`: a fresh model trained with the cell's standard recipe (train-stage
  defenses: MeCa's clean model, ABL's second phase).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import engine
from bench.data import Split
from bench.defense import Budget
from bench.engine import Batch, TrainConfig

FINETUNE = TrainConfig(epochs=10, batch_size=128, optimizer="sgd", lr=0.01, momentum=0.9,
                       weight_decay=5e-4, schedule="cosine", augment=True)


def finetune(model: nn.Module, data: Split, budget: Budget, generator: torch.Generator, *,
             recipe: TrainConfig = FINETUNE, indices: torch.Tensor | None = None,
             loss_fn=None, desc: str = "fine-tune") -> nn.Module:
    """Fine-tune all layers on ``data`` with ``recipe`` (epochs scaled by the budget)."""
    cfg = replace(recipe, epochs=budget.epochs(recipe.epochs))
    engine.fit(model, data, cfg, generator=generator, indices=indices, loss_fn=loss_fn, desc=desc)
    return model


def ascent_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Negative cross-entropy: minimising it unlearns the batch's labels."""
    return -F.cross_entropy(model(batch.x), batch.y)


def unlearn(model: nn.Module, data: Split, indices: torch.Tensor, budget: Budget,
            generator: torch.Generator, *, epochs: float = 5, lr: float = 5e-4, batch_size: int = 128,
            augment: bool = False, optimizer: str = "sgd", weight_decay: float = 5e-4,
            nesterov: bool = False, desc: str = "unlearn") -> nn.Module:
    """Gradient ascent on CE over ``data[indices]`` (ABL's unlearning: SGD lr 5e-4, 5 epochs;
    ABL's official code also uses weight decay 1e-4 and Nesterov momentum)."""
    if len(indices) == 0:
        return model
    cfg = TrainConfig(epochs=budget.epochs(epochs), batch_size=batch_size, optimizer=optimizer, lr=lr,
                      momentum=0.9, nesterov=nesterov, weight_decay=weight_decay, schedule="constant",
                      augment=augment)
    engine.fit(model, data, cfg, loss_fn=ascent_loss, generator=generator, indices=indices, desc=desc)
    return model


def train_from_scratch(model: nn.Module, data: Split, recipe: TrainConfig, generator: torch.Generator,
                       *, indices: torch.Tensor | None = None, desc: str = "train") -> nn.Module:
    """Train ``model`` with the cell's standard recipe (the defense budget does not shrink it: the
    suite already sized ``recipe`` for the cell)."""
    engine.fit(model, data, recipe, generator=generator, indices=indices, desc=desc)
    return model
