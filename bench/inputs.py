"""The defense's inputs: exactly what its declaration asks for, built from a cell.

:func:`defense_inputs` builds the message an isolated defense process receives (copies, as data):
the poisoned training set if it declared ``needs_train`` (or trains from scratch), the backdoored
model's weights if it repairs, a prefix of the cell's clean reserve of the fraction it asked for
(with or without labels), the model architecture, the cell's recipe, the budget, and its seeds,
derived with the evaluator's salt. :func:`build_context` makes the same
:class:`~bench.defense.DefenseContext` in the current process, for plug-in unit tests only; runs
always go through :mod:`bench.isolation`.
"""
from __future__ import annotations

import copy
import dataclasses

import torch

from bench.budget import Budget
from bench.cell import Cell
from bench.data import Split
from bench.defense import CellInfo, DefenseConfigError, DefenseContext, hands_model
from bench.spec import RunSpec


def cell_info(cell: Cell) -> CellInfo:
    """The cell's public facts: what a defense may know before it runs."""
    b = cell.bundle
    return CellInfo(b.num_classes, b.image_shape, cell.n_train, cell.spec.model, cell.spec.reserve_fraction,
                    len(cell.reserve))


def reserve_for(cell: Cell, fraction: float, labels: bool) -> Split:
    """The first ``floor(fraction * N)`` images of the cell's clean reserve (N: the training
    subset before the reserve was carved out), with or without labels."""
    info = cell_info(cell)
    n = info.reserve_images(fraction)
    if not 0 < n <= len(cell.reserve):
        raise DefenseConfigError(f"a clean reserve of {fraction:g} of the training data is {n} images; the "
                                 f"cell reserves {len(cell.reserve)} ({cell.spec.reserve_fraction:g})")
    part = cell.reserve.subset(torch.arange(n))
    return part if labels else part.unlabeled()


def defense_seeds(cell: Cell, spec: RunSpec) -> dict:
    """The defense's seeds: derived from the run seed and the salt, so it cannot walk them back."""
    s = cell.seeds
    return {"generator_seed": s.seed("defense", spec.defense, "generator"),
            "seed": s.seed("defense", spec.defense, "seed"),
            "model_seed": s.seed("model-init", "defense-model", spec.model)}


def defense_inputs(cell: Cell, spec: RunSpec, declaration: dict, model: torch.nn.Module | None) -> dict:
    """The message for an isolated defense: its declared inputs as copies (see the module doc)."""
    train = cell.poisoned.data if declaration.get("needs_train") else None
    reserve = None
    if declaration.get("needs_reserve"):
        reserve = reserve_for(cell, float(declaration["reserve_fraction"]), bool(declaration.get("reserve_labels")))
    return {
        "train_x": None if train is None else train.x, "train_y": None if train is None else train.y,
        "reserve_x": None if reserve is None else reserve.x, "reserve_y": None if reserve is None else reserve.y,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if (hands_model(declaration) and model is not None) else None,
        "architecture": cell.architecture.to_dict(),
        "train_config": dataclasses.asdict(cell.train_config),
        "budget": spec.budget.to_dict(),
        **defense_seeds(cell, spec),
    }


def build_context(defense, cell: Cell, model: torch.nn.Module | None, checkpoint_cb=None,
                  spec: RunSpec | None = None) -> DefenseContext:
    """An in-process context holding what the defense declares (plug-in unit tests only)."""
    spec = spec or cell.spec
    decl = defense.declaration()
    reserve = None
    if decl["needs_reserve"]:
        reserve = reserve_for(cell, defense.reserve_fraction(spec.reserve_fraction), decl["reserve_labels"])
    seeds = defense_seeds(cell, spec)
    return DefenseContext(
        defense, num_classes=cell.bundle.num_classes, image_shape=cell.bundle.image_shape,
        budget=Budget.from_value(spec.budget), generator=torch.Generator().manual_seed(seeds["generator_seed"]),
        train_config=cell.train_config, seed=seeds["seed"],
        model_factory=lambda: cell.architecture.build(seeds["model_seed"]),
        train=cell.poisoned.data.clone() if decl["needs_train"] else None,
        model=copy.deepcopy(model) if (hands_model(decl) and model is not None) else None,
        reserve=reserve, checkpoint_cb=checkpoint_cb)
