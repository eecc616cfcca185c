"""Adaptive-Patch (Qi et al., ICLR 2023, same paper as Adaptive-Blend): k weak patch triggers,
one per poisoned or cover image, and a stronger combination at test time.

Follows the reference code (backdoor-toolbox ``poison_tool_box/adaptive_patch.py``
and ``config.py``; MeCa Table I "Firefox*4", 5 % poison, 1 % cover, target 1). Poison
(``floor(rate*N)``, all classes, label := target) and cover (the next ``floor(cover_rate*N)`` of the
same permutation, label kept) are each sorted by index and split into k contiguous, nearly equal
blocks (``tid = (arange(n)*k)//n``, the toolbox rule); image block j gets
``x + alpha_j * m_j * (p_j - x)``. The test trigger applies every test trigger in order, each
with its test alpha, to every non-target test image.

Choices: the ``meca`` preset (the default) reads "Firefox*4" as the toolbox's commented-out
configuration: the four quadrants ``firefox_split_1..4`` at alpha 1 for training and all four at
alpha 1 (the whole logo) for testing. The ``toolbox`` preset is the CIFAR-10 ``config.py`` list:
train ``phoenix5`` 0.5, ``firefox_badge`` 0.2, ``grid4`` 0.5, ``trojan_square`` 0.3; test
``phoenix5x2`` then ``grid4`` at alpha 1. Each trigger entry is a catalogue name or the path of a
32-px (or image-sized) canvas whose mask is "any channel > 0".
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.attack import Attack, AttackConfigError, AttackParams
from bench.card import AttackCard
from bench.registry import ATTACKS
from bench.triggers import DEFAULT_SEED, build_trigger, stamp, trigger_label

SPLITS = [f"firefox_split_{q}" for q in (1, 2, 3, 4)]


@dataclass
class AdaptivePatchParams(AttackParams):
    cover_rate: float = 0.01
    train_triggers: list = field(default_factory=lambda: list(SPLITS))
    train_alphas: list = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    test_triggers: list = field(default_factory=lambda: list(SPLITS))
    test_alphas: list = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    trigger_seed: int = DEFAULT_SEED

    def validate(self):
        super().validate()
        for kind in ("train", "test"):
            names, alphas = getattr(self, f"{kind}_triggers"), getattr(self, f"{kind}_alphas")
            if not names:
                raise ValueError(f"{kind}_triggers must list at least one trigger")
            if len(names) != len(alphas):
                raise ValueError(f"{kind}_triggers has {len(names)} entries but {kind}_alphas has {len(alphas)}")
            if any(not 0.0 < a <= 1.0 for a in alphas):
                raise ValueError(f"{kind}_alphas must be in (0, 1], got {alphas}")


@ATTACKS.register
class AdaptivePatch(Attack):
    """Adaptive-Patch: one of k patch triggers per poison/cover image; all of them at test time."""

    card = AttackCard(name="adaptive_patch", label="AdaptivePatch", paper="Qi et al., ICLR 2023",
                      code="vtu81/backdoor-toolbox", label_mode="dirty", tables=("table3",), order=8)

    Params = AdaptivePatchParams
    presets = {"meca": {"target": 1, "cover_rate": 0.01, "train_triggers": list(SPLITS),
                        "train_alphas": [1.0] * 4, "test_triggers": list(SPLITS), "test_alphas": [1.0] * 4},
               "toolbox": {"target": 0, "cover_rate": 0.006,
                           "train_triggers": ["phoenix5", "firefox_badge", "grid4", "trojan_square"],
                           "train_alphas": [0.5, 0.2, 0.5, 0.3],
                           "test_triggers": ["phoenix5x2", "grid4"], "test_alphas": [1.0, 1.0]}}

    def __init__(self, params=None):
        super().__init__(params)
        p = self.params
        label = lambda names: "+".join(trigger_label(n, p.trigger_seed) for n in names)  # noqa: E731
        self.trigger_name = f"train[{label(p.train_triggers)}] test[{label(p.test_triggers)}]"
        self.train_set: list = []
        self.test_set: list = []
        self._tid = torch.empty(0, dtype=torch.long)

    def _build(self, names, image_shape):
        return [build_trigger(n, tuple(image_shape[-2:]), kind="patch", seed=self.params.trigger_seed)
                for n in names]

    def check_extra(self, num_classes, image_shape):
        self._build(self.params.train_triggers, image_shape)
        self._build(self.params.test_triggers, image_shape)

    def prepare(self, train, ctx):
        self.train_set = self._build(self.params.train_triggers, train.image_shape)
        self.test_set = self._build(self.params.test_triggers, train.image_shape)

    @staticmethod
    def assign(n: int, k: int) -> torch.Tensor:
        """The toolbox assignment of k triggers to n sorted images: contiguous, nearly equal blocks."""
        return torch.arange(n) * k // max(1, n)

    def select(self, y, ratio, generator):
        poison, cover = super().select(y, ratio, generator)
        k = len(self.params.train_triggers)
        tid = torch.full((len(y),), -1, dtype=torch.long)
        for part in (poison, cover):
            if len(part):
                tid[part.sort().values] = self.assign(len(part), k)
        self._tid = tid
        return poison, cover

    def trigger_ids(self, idx: torch.Tensor) -> torch.Tensor:
        """Which training trigger each dataset index carries (-1: none)."""
        return self._tid[idx.cpu()]

    def apply_poison(self, x, idx):
        tid = self.trigger_ids(idx).to(x.device)
        if (tid < 0).any():
            raise AttackConfigError(f"{self.name}: images without an assigned trigger (call poison(), "
                                    f"which selects the samples, before applying the trigger)")
        out = x.clone()
        for j, (trig, alpha) in enumerate(zip(self.train_set, self.params.train_alphas)):
            sel = tid == j
            if sel.any():
                out[sel] = stamp(x[sel], trig.pattern, trig.mask, alpha)
        return out

    def apply_test(self, x):
        for trig, alpha in zip(self.test_set, self.params.test_alphas):
            x = stamp(x, trig.pattern, trig.mask, alpha)
        return x
