"""Blend (Chen et al., "Targeted backdoor attacks on deep learning systems using data poisoning",
2017): a full-image picture blended at low opacity, dirty label.

Follows the reference code (backdoor-toolbox ``poison_tool_box/blend.py``): ``floor(rate*N)``
images from all classes become ``(1 - alpha_train) * x + alpha_train * k`` with label := target;
the test trigger is ``(1 - alpha_test) * x + alpha_test * k`` (``alpha_test`` defaults to
``alpha_train``), on every non-target test image.

Choices: the HelloKitty picture cannot be shipped, so the default trigger is the procedural
``kitty`` cartoon (``bench/triggers.py``); ``trigger`` = path of any RGB image (e.g. the toolbox's
``hellokitty_32.png`` or BackdoorBench's ``hello_kitty.jpeg``) replaces it, resized bilinearly with
antialias to the data size; ``noise`` (Chen et al.'s random pattern) is also available. No mask is
used (whole image). The recorded trigger name says which picture was used.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.attack import Attack, AttackParams
from bench.card import AttackCard
from bench.registry import ATTACKS
from bench.triggers import DEFAULT_SEED, build_trigger, trigger_label


@dataclass
class BlendParams(AttackParams):
    trigger: str = "kitty"
    alpha_train: float = 0.2
    alpha_test: float | None = None      # None: same as alpha_train
    trigger_seed: int = DEFAULT_SEED     # for the ``noise`` trigger

    def validate(self):
        super().validate()
        for name in ("alpha_train", "alpha_test"):
            a = getattr(self, name)
            if a is not None and not 0.0 < a <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {a}")
        if not isinstance(self.trigger, str) or not self.trigger:
            raise ValueError(f"trigger must be a trigger name or an image path, got {self.trigger!r}")

    @property
    def test_alpha(self) -> float:
        return self.alpha_train if self.alpha_test is None else self.alpha_test


class BlendImageAttack(Attack):
    """Base for attacks that blend a full-frame picture ``k`` (Blend, Adaptive-Blend)."""

    def __init__(self, params=None):
        super().__init__(params)
        self.trigger_name = trigger_label(self.params.trigger, self.params.trigger_seed)
        self.image = None

    def _build(self, image_shape):
        return build_trigger(self.params.trigger, tuple(image_shape[-2:]), kind="full",
                             seed=self.params.trigger_seed).pattern

    def check_extra(self, num_classes, image_shape):
        self._build(image_shape)

    def prepare(self, train, ctx):
        self.image = self._build(train.image_shape)

    def blend(self, x: torch.Tensor, alpha: float) -> torch.Tensor:
        return torch.lerp(x, self.image.to(x.device, x.dtype).unsqueeze(0).expand_as(x), alpha)

    def apply_test(self, x):
        return self.blend(x, self.params.test_alpha)


@ATTACKS.register
class Blend(BlendImageAttack):
    """Blend: the whole image blended with a picture (procedural ``kitty``) at alpha 0.2."""

    card = AttackCard(name="blend", label="Blend", paper="Chen et al., 2017",
                      code="vtu81/backdoor-toolbox", label_mode="dirty", tables=("table2",), order=2)

    Params = BlendParams
    presets = {"meca": {"target": 1, "alpha_train": 0.2},
               "toolbox": {"target": 0, "alpha_train": 0.2},
               "backdoorbench": {"target": 0, "alpha_train": 0.2, "alpha_test": 0.2}}

    def apply_poison(self, x, idx):
        return self.blend(x, self.params.alpha_train)
