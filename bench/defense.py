"""The defense plug-in interface, the fair-protocol context, and the ``none`` defense.

A defense is a :class:`Defense` subclass registered in ``DEFENSES``. Its class attributes declare
what it is and what it needs:

* ``stage``: ``"repair"`` (gets the cell's backdoored model) or ``"train"`` (trains from scratch on
  the poisoned training set, with ``ctx.new_model()`` and the cell's ``ctx.train_config``);
* ``needs_train``: a repair defense that also wants the poisoned training set (DBR, SCAn, NT-ML);
  train-stage defenses always get it;
* ``needs_reserve`` and ``reserve_labels``: the clean reserve (clean versions of a seeded fraction
  of the training set), with or without labels;
* ``detects``: it returns per-sample scores and/or flags over the training set;
* ``starts_from_victim``: a train-stage defense whose first phase is the cell's standard training
  gets the cell's backdoored model (``ctx.model``) in its place, and is charged that training.

:meth:`Defense.run` receives a :class:`DefenseContext` and returns a :class:`DefenseOutput`.

**Fair protocol.** The context is built from the declaration and holds nothing else: never the
test sets, the ground-truth poison or cover masks, the attack's target or source class, the true
poison ratio or the attack's name. Reading any of those raises :class:`ProtocolError` naming the
rule, and so does reading an undeclared input. Choices a defense makes (epochs, pruning amounts,
thresholds) are therefore made on data it was handed. Knowledge a paper assumes but a defender
lacks goes through explicit ``oracle_*`` parameters, off by default, recorded with the run.

Diagnostics: ``ctx.log(key, value)`` stores scalars or arrays for the reports;
``ctx.log_sample_scores(key, scores)`` stores a per-training-sample array that the evaluator later
pairs with the ground truth (e.g. MeCa's KL histograms); ``ctx.checkpoint(tag, model)`` asks the
evaluator to measure an intermediate model (e.g. MeCa's ACC/ASR per enhancement round). Nothing
computed from test data ever flows back into the defense: both calls return None.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn

from bench.budget import Budget
from bench.card import NO_DEFENSE, DefenseCard, bind_card
from bench.data import Split, reserve_size
from bench.engine import TrainConfig
from bench.registry import DEFENSES


class ProtocolError(PermissionError):
    """A defense asked for something the fair protocol does not hand it."""


class DefenseConfigError(ValueError):
    """Defense settings that cannot work on the given cell (refused before any compute)."""


@dataclass
class CellInfo:
    """What a defense may know about a cell before running (for :meth:`Defense.check`):
    ``n_train`` images in the (poisoned) training set, and a clean reserve of ``reserve_size``
    images carved out of the original ``n_train + reserve_size`` (its fraction of that total is
    ``reserve_fraction``; a defense may use a prefix of it, never more)."""

    num_classes: int
    image_shape: tuple[int, int, int]
    n_train: int
    model_name: str
    reserve_fraction: float
    reserve_size: int | None = None

    @property
    def n_total(self) -> int:
        """The training subset before the reserve was carved out."""
        return self.n_train + (self.reserve_size or 0)

    def reserve_images(self, fraction: float) -> int:
        """Reserve images a defense asking for ``fraction`` of the training data gets."""
        return reserve_size(self.n_total, fraction)


def cell_model_or_none(cell: CellInfo) -> nn.Module | None:
    """A fresh model of the cell's architecture, for checks of its structure before any compute
    (e.g. that a pruning defense finds its layer); None when the model name does not resolve,
    since the runner's own checks report that."""
    from bench.models import create_model

    try:
        return create_model(cell.model_name, cell.num_classes, cell.image_shape[-1])
    except Exception:
        return None


@dataclass
class DefenseOutput:
    """A defense's result: the final model and, if it detects, per-sample scores and/or flags
    over the training set (higher score = more likely poison)."""

    model: nn.Module
    scores: torch.Tensor | None = None
    flags: torch.Tensor | None = None
    info: dict = field(default_factory=dict)


_FORBIDDEN = {
    "test": "the test set", "test_set": "the test set", "triggered_test": "the triggered test set",
    "poison_mask": "the ground-truth poison mask", "cover_mask": "the ground-truth cover mask",
    "poison_index": "the ground-truth poison indices", "target": "the attack's target class",
    "source": "the attack's source class", "source_classes": "the attack's source classes",
    "poison_ratio": "the true poison ratio", "ratio": "the true poison ratio",
    "attack": "the attack (its name, trigger or parameters)", "attack_name": "the attack's name",
    "trigger": "the attack's trigger", "clean_train": "the clean training set",
}


def hands_model(declaration: dict) -> bool:
    """Whether a declaration is handed the cell's backdoored model: a repair defense's, or a
    train-stage defense's that starts from it."""
    return declaration.get("stage") == "repair" or bool(declaration.get("starts_from_victim"))


class DefenseContext:
    """Everything a defense is handed, and nothing else (see the module docstring)."""

    __slots__ = ("_defense", "_train", "_model", "_reserve", "num_classes", "image_shape", "budget",
                 "generator", "train_config", "_model_factory", "_logs", "_sample_logs",
                 "_checkpoint_cb", "seed")

    def __init__(self, defense: "Defense", *, num_classes: int, image_shape, budget: Budget,
                 generator: torch.Generator, train_config: TrainConfig, seed: int,
                 model_factory: Callable[[], nn.Module], train: Split | None = None,
                 model: nn.Module | None = None, reserve: Split | None = None,
                 checkpoint_cb: Callable[[str, nn.Module], None] | None = None):
        self._defense = defense
        self._train, self._model, self._reserve = train, model, reserve
        self.num_classes, self.image_shape, self.budget = num_classes, tuple(image_shape), budget
        self.generator, self.train_config, self.seed = generator, train_config, seed
        self._model_factory = model_factory
        self._logs: dict[str, Any] = {}
        self._sample_logs: dict[str, torch.Tensor] = {}
        self._checkpoint_cb = checkpoint_cb

    # -- declared inputs ------------------------------------------------------------------------
    def _undeclared(self, what: str, flag: str) -> ProtocolError:
        return ProtocolError(f"fair protocol: defense '{self._defense.name}' did not declare {flag}, "
                             f"so it is not handed {what}")

    @property
    def train(self) -> Split:
        """The poisoned training set (images and given labels), in its original order."""
        if self._train is None:
            raise self._undeclared("the poisoned training set", "needs_train = True")
        return self._train

    @property
    def model(self) -> nn.Module:
        """A private copy of the backdoored model (repair defenses, and train-stage defenses that
        start from it)."""
        if self._model is None:
            raise self._undeclared("the backdoored model", "stage = 'repair' (or, training, starts_from_victim)")
        return self._model

    @property
    def reserve(self) -> Split:
        """The clean reserve (clean versions of a seeded part of the training set)."""
        if self._reserve is None:
            raise self._undeclared("a clean reserve", "needs_reserve = True")
        return self._reserve

    def new_model(self) -> nn.Module:
        """A freshly initialised model of the cell's architecture (seeded by the run)."""
        return self._model_factory()

    # -- diagnostics ----------------------------------------------------------------------------
    def log(self, key: str, value: Any) -> None:
        """Record a diagnostic (number, list, tensor) for the reports."""
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
        if key in self._logs and isinstance(self._logs[key], list) and not isinstance(value, list):
            self._logs[key].append(value)
        else:
            self._logs[key] = value

    def log_sample_scores(self, key: str, scores: torch.Tensor) -> None:
        """Record one value per training sample; the evaluator pairs it with the ground truth."""
        self._sample_logs[key] = scores.detach().float().cpu()

    def checkpoint(self, tag: str, model: nn.Module) -> None:
        """Have the evaluator measure an intermediate model (returns nothing to the defense)."""
        if self._checkpoint_cb is not None:
            self._checkpoint_cb(tag, model)

    @property
    def logs(self) -> dict:
        return self._logs

    @property
    def sample_logs(self) -> dict:
        return self._sample_logs

    # -- the rule -------------------------------------------------------------------------------
    def __getattr__(self, name: str):
        if name in _FORBIDDEN:
            raise ProtocolError(
                f"fair protocol: a defense is never handed {_FORBIDDEN[name]} ('{name}'); only the "
                f"evaluator sees it, after the defense has returned. A method that needs it must take "
                f"it as an explicit oracle_* parameter, off by default")
        raise AttributeError(f"DefenseContext has no attribute '{name}'")

    def __setattr__(self, name, value):
        if name in _FORBIDDEN:
            raise ProtocolError(f"fair protocol: '{name}' cannot be placed in a defense context")
        object.__setattr__(self, name, value)


@dataclass
class NoParams:
    """No parameters."""


class _class_or_instance_method:
    """Like ``classmethod``, but bound to the instance when called on one."""

    def __init__(self, func):
        self.__func__ = func
        self.__doc__ = func.__doc__

    def __get__(self, obj, owner=None):
        target = obj if obj is not None else owner
        return lambda *a, **k: self.__func__(target, *a, **k)


class Defense:
    """Base class of defense plug-ins (see the module docstring)."""

    Params: ClassVar[type] = NoParams
    stage: ClassVar[str] = "repair"            # repair | train
    needs_train: ClassVar[bool] = False        # repair defenses that also read the poisoned set
    needs_reserve: ClassVar[bool] = False
    reserve_labels: ClassVar[bool] = True
    detects: ClassVar[bool] = False
    starts_from_victim: ClassVar[bool] = False   # train stage: the victim stands for its standard training
    card: ClassVar[DefenseCard | None] = None     # the plug-in's declaration (bench.card); sets the above
    name: ClassVar[str] = "defense"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        bind_card(cls, DefenseCard)   # a subclass's card sets the class attributes above

    def __init__(self, params=None):
        self.params = params if params is not None else self.Params()

    @_class_or_instance_method
    def declaration(cls) -> dict:
        """What the defense is handed. Called on an instance, instance attributes win, so a
        defense whose needs depend on its params (e.g. CLP needs the reserve only when it
        repairs) sets ``self.needs_reserve`` in ``__init__``."""
        return {"stage": cls.stage, "needs_train": cls.needs_train or cls.stage == "train",
                "needs_reserve": cls.needs_reserve, "reserve_labels": cls.reserve_labels,
                "detects": cls.detects, "starts_from_victim": cls.stage == "train" and cls.starts_from_victim}

    def reserve_fraction(self, suite_fraction: float) -> float:
        """The reserve fraction this defense uses (its ``reserve_fraction`` param, else the suite's)."""
        own = getattr(self.params, "reserve_fraction", None)
        return suite_fraction if own is None else own

    def check(self, cell: CellInfo) -> None:
        """Refuse settings that cannot work on this cell, before any compute."""
        if self.declaration()["needs_reserve"]:
            frac = self.reserve_fraction(cell.reserve_fraction)
            n = cell.reserve_images(frac)
            if not 0 < frac < 1 or n < 1:
                raise DefenseConfigError(
                    f"{self.name}: a clean reserve fraction of {frac} gives {n} of {cell.n_total} training "
                    f"images; it must be in (0, 1) and give at least one image")
            if cell.reserve_size is not None and frac > cell.reserve_fraction + 1e-12:
                raise DefenseConfigError(
                    f"{self.name}: asks for a clean reserve of {frac:g} of the training data, but the cell "
                    f"reserves {cell.reserve_fraction:g} (the reserve is carved out before poisoning); "
                    f"raise the suite's reserve_fraction to at least {frac:g}")

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        raise NotImplementedError


@DEFENSES.register
class NoDefense(Defense):
    """No defense: the backdoored model as it is (the "No Defense" column)."""

    card = DefenseCard(name=NO_DEFENSE, label="No Defense", stage="repair",
                       tables=("table2", "table3", "table6", "table7"), order=0, cost_phases=())

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        return DefenseOutput(ctx.model)
