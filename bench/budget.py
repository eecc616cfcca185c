"""The compute budget of a suite: one object, validated once, carried by the run spec.

A suite affords a fraction of each method's paper budget. :class:`Budget` holds that fraction
(``scale``, relative to the cell's standard training: 1.0 = the papers' full epoch counts) and a
floor that every defense obeys alike (``min_steps``: no training phase of a defense takes fewer
optimiser steps, whatever the scale, unless its paper budget is smaller still: the floor lifts a
phase at most to the steps of its paper's own epoch count, :meth:`Budget.phase_steps`; 0 = no
floor). The floor undoes the scale's starvation, it never runs a method beyond its paper: ABL's
unlearning (5 epochs of gradient ascent on its 1 % isolated set, 20 steps on all of CIFAR-10)
lifted to a 300-step floor ascended 75 epochs and left every model at chance (10 % ACC, measured
on ``cifar10-cpu-paper``, its ACC 81 % before unlearning). A scaled epoch count is at least one epoch
(``min_epochs``, 1 for every suite; only a miniature run, :mod:`bench.miniature`, lowers it so that
a phase may be a single optimiser step). The run spec carries it (``RunSpec.budget``),
the attack context (surrogates, generators) and the defense context carry the same object, and the
engine applies the floor to every training phase a defense runs (:func:`bench.engine.fit` reads the
budget through :func:`bench.engine.step_floor`), recording the steps each phase actually took.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


class BudgetError(ValueError):
    """A budget that cannot be used (refused before any compute)."""


class PhaseEpochs(float):
    """A phase's scaled epoch count (what :meth:`Budget.epochs` returns: a float like any other)
    that remembers its paper's count (``paper``), so that the step floor lifts the phase up to, and
    never beyond, its paper budget. Arithmetic on it gives a plain float, which the floor takes for
    an unscaled count (:meth:`Budget.phase_steps`): pass the count to ``TrainConfig`` as it is."""

    def __new__(cls, value: float, paper: float | None = None):
        obj = super().__new__(cls, value)
        obj.paper = float(value) if paper is None else float(paper)
        return obj

    def __reduce__(self):
        return (PhaseEpochs, (float(self), self.paper))


@dataclass(frozen=True)
class Budget:
    """How much of the papers' budgets a suite affords (see the module docstring)."""

    scale: float = 1.0
    min_steps: int = 0
    min_epochs: float = 1.0   # the least a scaled epoch count becomes (a miniature budget: below one)

    def __post_init__(self):
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) \
                or not math.isfinite(self.scale) or self.scale <= 0:
            raise BudgetError(f"budget scale must be a positive number, got {self.scale!r}")
        if isinstance(self.min_steps, bool) or not isinstance(self.min_steps, int) or self.min_steps < 0:
            raise BudgetError(f"budget min_steps must be a non-negative integer, got {self.min_steps!r}")
        if isinstance(self.min_epochs, bool) or not isinstance(self.min_epochs, (int, float)) \
                or not math.isfinite(self.min_epochs) or self.min_epochs <= 0:
            raise BudgetError(f"budget min_epochs must be a positive number, got {self.min_epochs!r}")
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "min_epochs", float(self.min_epochs))

    def epochs(self, full: float, minimum: float = 1.0) -> float:
        """``full`` paper epochs scaled by the suite, at least ``minimum`` (never above full). A
        budget whose ``min_epochs`` is below one (a miniature run's) lowers that minimum to it."""
        minimum = min(minimum, self.min_epochs)
        return PhaseEpochs(min(full, max(minimum, round(full * self.scale, 3))), paper=full)

    def phase_steps(self, epochs: float, per_epoch: int) -> int:
        """The optimiser steps of a training phase of ``epochs`` epochs of ``per_epoch`` steps: the
        scaled count (at least one step), lifted by the floor to ``min_steps`` but never beyond the
        steps of the phase's paper epochs: ``epochs.paper`` when ``epochs`` came from
        :meth:`epochs`; any other count is a phase the budget does not scale (DBR's one epoch per
        round, a standard training), which runs its own count. The engine
        (:func:`bench.engine.fit`) and the cost estimate (:func:`bench.cost.fit_passes`) both
        count with it."""
        steps = max(1, round(epochs * per_epoch))
        if steps >= self.min_steps:
            return steps
        paper = getattr(epochs, "paper", epochs)
        return max(steps, min(self.min_steps, round(paper * per_epoch)))

    def count(self, full: int, minimum: int = 1) -> int:
        """A paper's iteration count (PGD steps, rounds) scaled the same way, at least ``minimum``
        (never above full)."""
        return int(min(full, max(minimum, round(full * self.scale))))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_value(cls, value) -> "Budget":
        """A Budget from a Budget, a dict (``{"scale": .., "min_steps": ..}``) or a bare scale."""
        if isinstance(value, Budget):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"scale", "min_steps", "min_epochs"})
            if unknown:
                raise BudgetError(f"unknown budget key(s) {unknown} (known: scale, min_steps, min_epochs)")
            return cls(**value)
        return cls(scale=value)
