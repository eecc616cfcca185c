"""The compute budget of a suite: one object, validated once, carried by the run spec.

A suite affords a fraction of each method's paper budget. :class:`Budget` holds that fraction
(``scale``, relative to the cell's standard training: 1.0 = the papers' full epoch counts) and a
floor that every defense obeys alike (``min_steps``: no training phase of a defense takes fewer
optimiser steps, whatever the scale; 0 = no floor). A scaled epoch count is at least one epoch
(``min_epochs``, 1 for every suite; only a miniature run, :mod:`bench.miniature`, lowers it so that
a phase may be a single optimiser step). The run spec carries it (``RunSpec.budget``),
the attack context (surrogates, generators) and the defense context carry the same object, and the
engine applies the floor to every training phase a defense runs (:func:`bench.engine.fit` reads it
through :func:`bench.engine.step_floor`), recording the steps each phase actually took.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


class BudgetError(ValueError):
    """A budget that cannot be used (refused before any compute)."""


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
        return float(min(full, max(minimum, round(full * self.scale, 3))))

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
