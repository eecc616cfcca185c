"""A defense's declared training cost, phase by phase, and the engine's arithmetic that counts it.

A defense card may say what the defense trains (:attr:`bench.card.DefenseCard.cost_phases`): a
tuple of :class:`CostPhase`, one per training phase, each naming where its numbers come from (a
Params field, the cell's standard recipe, the suite's budget) rather than restating them. From
that declaration and a cell's sizes, :func:`phase_costs` counts the optimiser steps and the images
each phase will process with the same arithmetic as :func:`bench.engine.fit` (epochs scaled by
:meth:`bench.budget.Budget.epochs`, the budget's step floor, the last short batch of an epoch), so
:mod:`bench.estimate` can price a suite before anything runs and no framework module names a
plug-in.

What is counted is what the engine's cost meter counts (``epochs_equiv`` in the records): every
image of a training step, and every image of a gradient pass over the data (``kind="grad"``,
e.g. MeCa's KL-consistency scoring). Forward-only passes (evaluation, feature extraction, pruning
searches) are not counted. ``weight`` is the compute of one counted image relative to one
standard training pass (two models trained together: 2); it changes the time estimate only.

Numbers a defense only knows at run time (how many samples it flags, an early stop) are declared
as a share or an upper bound and said so in the card's comments: the result is an estimate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from bench.budget import Budget

STANDARD = "standard"
"""The cell's standard (backdoor) training recipe: its epochs (unscaled) or its batch size."""

CLASSES = "classes"
"""``repeat``: once per class of the dataset (e.g. a trigger inversion per class)."""

DATA = ("train", "reserve")
KINDS = ("fit", "grad")


class CostError(ValueError):
    """A cost declaration that cannot be right (refused when the card is made)."""


Number = (int, float)


@dataclass(frozen=True)
class CostPhase:
    """One training phase of a defense.

    * ``what``: a short name (``"isolation"``, ``"fine-tune"``);
    * ``data``: ``"train"`` (the poisoned training set the victim trained on) or ``"reserve"``
      (the defense's clean reserve);
    * ``fraction``: the part of ``data`` the phase trains on: a number, a Params field name, or
      ``"1-<field>"`` (what is left after that share, e.g. ABL's clean phase); sizes are
      ``int(fraction * N)`` as the defenses compute them;
    * ``limit``: at most this many images (a number or a Params field; ``None``: no cap);
    * ``epochs``: paper epochs (a number or a Params field), scaled by the suite's budget when
      ``scaled``; or ``"standard"``: the cell's standard training's epochs, unscaled;
    * ``batch_size``: a number, a Params field, or ``"standard"`` (the cell recipe's);
    * ``repeat``: how often the phase runs: a number, a Params field or ``"classes"``; with
      ``repeat_scaled`` the count is paper epochs scaled by the budget (at least 1, rounded, as
      DBR's unlearn/relearn rounds);
    * ``passes``: images the cost meter counts per image drawn (2 when every batch is paired
      with a second batch, as MeCa's enhancement);
    * ``weight``: compute of one counted image relative to a standard training pass (time only);
    * ``kind``: ``"fit"`` (an engine training phase: the step floor applies) or ``"grad"``
      (``epochs`` gradient passes over the data without optimiser steps: no floor, no scaling);
    * ``when``: the phase runs only when these Params fields have these values.

    A phase whose epochs or repeat resolve to 0, or whose data is empty, costs nothing.
    """

    what: str
    data: str = "train"
    fraction: float | str = 1.0
    limit: int | str | None = None
    epochs: float | str = 1.0
    scaled: bool = True
    batch_size: int | str = STANDARD
    repeat: int | str = 1
    repeat_scaled: bool = False
    passes: float = 1.0
    weight: float = 1.0
    kind: str = "fit"
    when: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.what, str) or not self.what:
            raise CostError(f"a cost phase needs a name, got {self.what!r}")
        if self.data not in DATA:
            raise CostError(f"cost phase '{self.what}': data must be one of {', '.join(DATA)}, got {self.data!r}")
        if self.kind not in KINDS:
            raise CostError(f"cost phase '{self.what}': kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("fraction", "epochs", "batch_size", "repeat"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise CostError(f"cost phase '{self.what}': {name} must be a number or a Params field name, "
                                f"got {v!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, (int, str))):
            raise CostError(f"cost phase '{self.what}': limit must be a number, a Params field name or None")
        for name in ("passes", "weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, Number) or not v > 0:
                raise CostError(f"cost phase '{self.what}': {name} must be a positive number, got {v!r}")
        if not isinstance(self.when, Mapping):
            raise CostError(f"cost phase '{self.what}': when must map Params fields to values")
        object.__setattr__(self, "when", MappingProxyType(dict(self.when)))

    def fields(self) -> set[str]:
        """The Params fields this phase reads (checked against the plug-in's Params)."""
        out = set(self.when)
        for v in (self.fraction, self.limit, self.epochs, self.batch_size, self.repeat):
            if isinstance(v, str) and v not in (STANDARD, CLASSES):
                out.add(v[2:] if v.startswith("1-") else v)
        return out


@dataclass(frozen=True)
class CellSizes:
    """What a phase's size depends on: the cell and the defense's share of it."""

    n_train: int            # images the victim trained on (the training set a defense is handed)
    reserve: int            # images of the defense's clean reserve (0 when it gets none)
    num_classes: int
    epochs: float           # the standard training's epochs
    batch_size: int         # the standard training's batch size
    budget: Budget


@dataclass(frozen=True)
class PhaseCost:
    what: str
    steps: int              # optimiser steps (0 for gradient passes)
    images: int             # images the cost meter counts
    weight: float = 1.0

    @property
    def work(self) -> float:
        """Images in units of standard training passes (for time)."""
        return self.images * self.weight


def fit_passes(n: int, batch_size: int, epochs: float, budget: Budget | None = None) -> tuple[int, int]:
    """``(steps, images)`` of one :func:`bench.engine.fit` call on ``n`` images: ``ceil(n / b)``
    steps per epoch (b = min(batch_size, n); the last batch of an epoch is short), ``round(epochs x
    steps per epoch)`` steps, at least 1, lifted by the ``budget``'s floor as the engine lifts them
    (:meth:`Budget.phase_steps`)."""
    if n <= 0 or epochs <= 0:
        return 0, 0
    bs = min(int(batch_size), n)
    per_epoch = math.ceil(n / bs)
    steps = (budget or Budget()).phase_steps(epochs, per_epoch)
    full, rest = divmod(steps, per_epoch)
    return steps, full * n + rest * bs


def _value(params, v, what: str, name: str):
    if not isinstance(v, str):
        return v
    if not hasattr(params, v):
        raise CostError(f"cost phase '{what}': {name} names '{v}', which the defense's Params do not have")
    return getattr(params, v)


def _size(phase: CostPhase, params, sizes: CellSizes) -> int:
    n = sizes.n_train if phase.data == "train" else sizes.reserve
    frac = phase.fraction
    if isinstance(frac, str) and frac.startswith("1-"):
        m = n - int(float(_value(params, frac[2:], phase.what, "fraction")) * n)
    else:
        f = float(_value(params, frac, phase.what, "fraction"))
        m = n if f >= 1 else int(f * n)
    limit = _value(params, phase.limit, phase.what, "limit")
    if limit is not None:
        m = min(m, int(limit))
    return max(0, m)


def phase_cost(phase: CostPhase, params, sizes: CellSizes) -> PhaseCost | None:
    """The steps and images of one declared phase for a defense's ``params`` on a cell (None when
    the phase does not run: its ``when`` does not hold, or its epochs or repeat are 0)."""
    if any(getattr(params, k, object()) != v for k, v in phase.when.items()):
        return None
    m = _size(phase, params, sizes)
    if phase.epochs == STANDARD:
        epochs = float(sizes.epochs)
    else:
        epochs = float(_value(params, phase.epochs, phase.what, "epochs") or 0)
        if phase.scaled and phase.kind == "fit" and epochs > 0:
            epochs = sizes.budget.epochs(epochs)
    if phase.repeat == CLASSES:
        repeat = sizes.num_classes
    else:
        repeat = float(_value(params, phase.repeat, phase.what, "repeat") or 0)
        repeat = max(1, round(sizes.budget.epochs(repeat))) if phase.repeat_scaled and repeat > 0 else int(repeat)
    if m <= 0 or epochs <= 0 or repeat <= 0:
        return None
    if phase.kind == "grad":
        steps, images = 0, round(epochs * m)
    else:
        bs = sizes.batch_size if phase.batch_size == STANDARD else int(_value(params, phase.batch_size,
                                                                              phase.what, "batch_size"))
        steps, images = fit_passes(m, bs, epochs, sizes.budget)
    return PhaseCost(phase.what, steps * repeat, round(images * phase.passes) * repeat, phase.weight)


def phase_costs(phases, params, sizes: CellSizes) -> list[PhaseCost]:
    """:func:`phase_cost` of every declared phase that runs."""
    return [c for c in (phase_cost(p, params, sizes) for p in phases) if c is not None]
