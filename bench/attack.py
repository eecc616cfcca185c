"""The attack plug-in interface, and the ``clean`` no-attack.

An attack is a :class:`Attack` subclass registered in ``ATTACKS``. It describes a trigger; the base
class owns everything shared: validation, seeded selection of poison and cover samples
(``common.md``: ``n = floor(poison_ratio * N)``, one ``randperm``, cover = the next entries), chunked and
vectorised application of the trigger in [0, 1] pixel space with 8-bit re-quantisation, label
flipping for dirty-label attacks, and the triggered test set (true class != target; source
classes only for source-specific attacks) with the true labels kept for robust accuracy.

Subclasses implement at least :meth:`Attack.apply_poison` (the training-time trigger on a float
batch) and may override :meth:`apply_cover`, :meth:`apply_test`, :meth:`poison_candidates`,
:meth:`cover_candidates`, :meth:`test_candidates`, :meth:`prepare` (build resolution-dependent
triggers, train surrogates) and :meth:`extra_metrics`.

Poisoned samples keep their positions in the training tensors (nothing is appended or sorted) and
are stored as uint8 exactly like clean ones, so neither order nor off-grid values reveal them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch

from bench.budget import Budget
from bench.card import AttackCard, bind_card
from bench.data import Split, to_float, to_uint8
from bench.registry import ATTACKS

CHUNK = 4096


class AttackConfigError(ValueError):
    """An attack's settings that cannot work on the given data (refused before any training)."""


@dataclass
class AttackParams:
    """Parameters every attack has. ``target`` is the attacker's target class. ``cap_to_class``
    (clean-label attacks): a ratio asking for more images than the target class holds poisons the
    whole class instead of being refused (the record's ``n_poison`` says how many)."""

    target: int = 1
    cover_rate: float = 0.0
    cap_to_class: bool = False

    def validate(self):
        if not 0.0 <= self.cover_rate < 1.0:
            raise ValueError(f"cover_rate must be in [0, 1), got {self.cover_rate}")


@dataclass
class AttackContext:
    """What an attack may use to prepare itself (surrogate models, generators)."""

    num_classes: int
    image_shape: tuple[int, int, int]
    generator: torch.Generator
    model_factory: Callable[[], torch.nn.Module] | None = None
    train_config: object | None = None
    budget: Budget = field(default_factory=Budget)   # the attacker's share of the papers' budgets
    cache_dir: str | None = None


@dataclass
class PoisonedTrain:
    """The training set as the victim receives it, with the ground truth the evaluator keeps."""

    data: Split
    poison_mask: torch.Tensor
    cover_mask: torch.Tensor
    info: dict = field(default_factory=dict)


@dataclass
class TriggeredTest:
    """Triggered test images (non-target classes only; TaCT: source classes) and true labels."""

    x: torch.Tensor
    y_true: torch.Tensor
    target: int | None
    index: torch.Tensor


class Attack:
    """Base class of attack plug-ins. See the module docstring."""

    Params: ClassVar[type] = AttackParams
    label_mode: ClassVar[str] = "dirty"          # dirty | clean (poison keeps its own label)
    needs_model: ClassVar[bool] = False          # trains a surrogate or generator in prepare()
    source_specific: ClassVar[bool] = False      # ASR counted on source-class images only
    trigger_name: ClassVar[str] = ""
    card: ClassVar[AttackCard | None] = None     # the plug-in's declaration (bench.card); sets the above
    name: ClassVar[str] = "attack"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        bind_card(cls, AttackCard)   # a subclass's card sets the class attributes above

    def __init__(self, params=None):
        self.params = params if params is not None else self.Params()
        self._prepared_for: tuple | None = None

    # -- hooks for subclasses -------------------------------------------------------------------
    def prepare(self, train: Split, ctx: AttackContext) -> None:
        """Build triggers for the image size (and train what the attack needs)."""

    def apply_poison(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Training-time trigger on a float batch in [0, 1]; ``idx`` are dataset indices."""
        raise NotImplementedError

    def apply_cover(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Trigger for cover samples (label kept); defaults to the poison trigger."""
        return self.apply_poison(x, idx)

    def apply_test(self, x: torch.Tensor) -> torch.Tensor:
        """Test-time trigger; defaults to the poison trigger."""
        return self.apply_poison(x, torch.full((len(x),), -1, dtype=torch.long))

    def poison_candidates(self, y: torch.Tensor) -> torch.Tensor:
        """Indices that may be poisoned: all (dirty label) or the target class (clean label)."""
        if self.label_mode == "clean":
            return (y == self.params.target).nonzero().flatten()
        return torch.arange(len(y))

    def cover_candidates(self, y: torch.Tensor) -> torch.Tensor:
        return torch.arange(len(y))

    def test_candidates(self, y: torch.Tensor) -> torch.Tensor:
        """Boolean mask of test images that enter the triggered test set."""
        return y != self.params.target

    def extra_metrics(self, predict: Callable[[torch.Tensor], torch.Tensor], test: Split) -> dict:
        """Attack-specific metrics (e.g. PhysicalBA's physical ASR) from a predict function."""
        return {}

    def train_transform(self) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
        """A transform ``(x, generator) -> x`` that the attacker's training pipeline applies to every
        float batch after the standard augmentation, during the backdoor training only (PhysicalBA's
        physical transforms). None (the default): no extra transform."""
        return None

    # -- validation -----------------------------------------------------------------------------
    def check(self, num_classes: int, labels: torch.Tensor | None, image_shape, poison_ratio: float) -> None:
        """Refuse settings that cannot work, before any compute."""
        p = self.params
        if not (0.0 <= poison_ratio < 1.0) or math.isnan(poison_ratio):
            raise AttackConfigError(f"{self.name}: poison ratio must be 0 (a clean cell) or in (0, 1), got {poison_ratio}")
        if not 0 <= p.target < num_classes:
            raise AttackConfigError(f"{self.name}: target class {p.target} does not exist "
                                    f"(the dataset has classes 0..{num_classes - 1})")
        for cls in getattr(p, "source_classes", ()) or ():
            if not 0 <= cls < num_classes:
                raise AttackConfigError(f"{self.name}: source class {cls} does not exist "
                                        f"(the dataset has classes 0..{num_classes - 1})")
        for cls in getattr(p, "cover_classes", ()) or ():
            if not 0 <= cls < num_classes:
                raise AttackConfigError(f"{self.name}: cover class {cls} does not exist "
                                        f"(the dataset has classes 0..{num_classes - 1})")
        if labels is not None and poison_ratio > 0:
            n_want = math.floor(poison_ratio * len(labels))
            cand = self.poison_candidates(labels)
            # with ``cap_to_class`` a clean-label attack poisons the whole class instead (select caps)
            if self.label_mode == "clean" and n_want > len(cand) and not p.cap_to_class:
                raise AttackConfigError(
                    f"{self.name}: a clean-label poison ratio of {poison_ratio} asks for {n_want} images, but the "
                    f"target class {p.target} holds only {len(cand)} of {len(labels)} training images "
                    f"(max poison ratio {len(cand) / len(labels):.4f})")
            if n_want < 1:
                raise AttackConfigError(f"{self.name}: poison ratio {poison_ratio} of {len(labels)} training "
                                        f"images poisons no image at all")
        self.check_extra(num_classes, image_shape)

    def check_extra(self, num_classes: int, image_shape) -> None:
        """Attack-specific checks (trigger files, image size)."""

    # -- framework ------------------------------------------------------------------------------
    def ensure_prepared(self, train: Split, ctx: AttackContext) -> None:
        key = (tuple(train.image_shape), ctx.num_classes)
        if self._prepared_for != key:
            self.prepare(train, ctx)
            self._prepared_for = key

    def select(self, y: torch.Tensor, poison_ratio: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Seeded poison and cover indices (disjoint)."""
        n = len(y)
        if poison_ratio <= 0:
            empty = torch.empty(0, dtype=torch.long)
            return empty, empty
        cand = self.poison_candidates(y)
        n_p = min(math.floor(poison_ratio * n), len(cand))
        perm = cand[torch.randperm(len(cand), generator=generator)]
        poison = perm[:n_p]
        n_c = math.floor(self.params.cover_rate * n)
        cover_cand = self.cover_candidates(y)
        if len(cover_cand) and n_c:
            taken = torch.zeros(n, dtype=torch.bool)
            taken[poison] = True
            same_pool = len(cover_cand) == len(cand) and bool((cover_cand == cand).all())
            if same_pool:
                cover = perm[n_p:n_p + n_c]
            else:
                cover_cand = cover_cand[~taken[cover_cand]]
                cover = cover_cand[torch.randperm(len(cover_cand), generator=generator)[:n_c]]
        else:
            cover = torch.empty(0, dtype=torch.long)
        return poison, cover

    def _apply_chunked(self, x_u8: torch.Tensor, idx: torch.Tensor,
                       fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device) -> None:
        for start in range(0, len(idx), CHUNK):
            part = idx[start:start + CHUNK]
            batch = to_float(x_u8[part].to(device))
            x_u8[part] = to_uint8(fn(batch, part.to(device)).clamp(0, 1)).to(x_u8.device)

    def poison(self, train: Split, poison_ratio: float, generator: torch.Generator,
               ctx: AttackContext | None = None, device=None) -> PoisonedTrain:
        """The poisoned training set (positions kept, uint8), with poison and cover masks."""
        if train.y is None:
            raise AttackConfigError(f"{self.name}: poisoning needs a labelled training set")
        ctx = ctx or AttackContext(int(train.y.max()) + 1, train.image_shape, generator)
        self.ensure_prepared(train, ctx)
        device = device or torch.device("cpu")
        poison, cover = self.select(train.y, poison_ratio, generator)
        x = train.x.clone()
        y = train.y.clone()
        if len(poison):
            self._apply_chunked(x, poison, self.apply_poison, device)
            if self.label_mode == "dirty":
                y[poison] = self.params.target
        if len(cover):
            self._apply_chunked(x, cover, self.apply_cover, device)
        pm = torch.zeros(len(y), dtype=torch.bool)
        pm[poison] = True
        cm = torch.zeros(len(y), dtype=torch.bool)
        cm[cover] = True
        info = {"n_poison": int(len(poison)), "n_cover": int(len(cover)),
                "effective_ratio": len(poison) / len(y), "trigger": self.trigger_name}
        return PoisonedTrain(Split(x, y), pm, cm, info)

    def triggered_test(self, test: Split, device=None) -> TriggeredTest:
        """Triggered test images whose true class qualifies, with true labels (uint8)."""
        keep = self.test_candidates(test.y).nonzero().flatten()
        x = test.x[keep].clone()
        device = device or torch.device("cpu")
        for start in range(0, len(keep), CHUNK):
            sl = slice(start, start + CHUNK)
            x[sl] = to_uint8(self.apply_test(to_float(x[sl].to(device))).clamp(0, 1)).cpu()
        return TriggeredTest(x, test.y[keep].clone(), self.params.target, keep)


@dataclass
class CleanParams:
    """The no-attack has no parameters."""


@ATTACKS.register
class NoAttack(Attack):
    """No attack: the training set is left as it is and there is no triggered test set (ASR is
    undefined). Use it for pure clean-accuracy baselines; a clean cell of a real attack (poison
    ratio 0) instead keeps that attack's trigger so the chance-level ASR is measured."""

    card = AttackCard(name="clean", label="Clean", label_mode="none")
    Params = CleanParams

    def check(self, num_classes, labels, image_shape, poison_ratio):
        if poison_ratio != 0:
            raise AttackConfigError(f"clean: the no-attack takes poison ratio 0, got {poison_ratio}")

    def apply_poison(self, x, idx):
        return x

    def select(self, y, poison_ratio, generator):
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty

    def triggered_test(self, test, device=None):
        empty = test.x[:0]
        return TriggeredTest(empty, test.y[:0], None, torch.empty(0, dtype=torch.long))
