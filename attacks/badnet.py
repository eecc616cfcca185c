"""BadNet (Gu et al., "BadNets", 2017): a fixed patch stamped on a random subset, dirty label.

Follows the reference code (backdoor-toolbox ``poison_tool_box/badnet.py``): ``floor(rate*N)``
images drawn from all classes (the target class included) get the 3x3 black/white grid ``grid3``
in the bottom-right corner (rows/cols 29-31 of the 32-px canvas, nearest-scaled to other sizes,
mask over all 9 pixels, alpha 1) and the target label. The test trigger is the same stamp.

This module also holds :class:`StampAttack`, the masked-stamp family (``x + alpha*m*(p - x)``)
that Trojan, TaCT and PhysicalBA reuse with other triggers.

Choices: MeCa writes "3*3 white square" but ran the toolbox default, the grid, so the default is
``grid3`` (``white3`` is available). ``trigger`` takes a catalogue name (``bench/triggers.py``) or
the path of a 32-px (or image-sized) canvas PNG, with an optional ``mask_file``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.attack import Attack, AttackParams
from bench.card import AttackCard
from bench.registry import ATTACKS
from bench.triggers import DEFAULT_SEED, build_trigger, stamp, trigger_label


@dataclass
class StampParams(AttackParams):
    """A masked stamp: catalogue trigger name or image path, optional mask file, opacity."""

    trigger: str = "grid3"
    mask_file: str | None = None
    alpha: float = 1.0
    trigger_seed: int = DEFAULT_SEED

    def validate(self):
        super().validate()
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not isinstance(self.trigger, str) or not self.trigger:
            raise ValueError(f"trigger must be a trigger name or an image path, got {self.trigger!r}")


class StampAttack(Attack):
    """Base of the patch-stamp attacks: builds ``self.trigger`` at the image size and stamps it."""

    Params = StampParams
    file_kind = "patch"   # how a user trigger file is fitted (see bench.triggers.load_trigger_file)

    def __init__(self, params=None):
        super().__init__(params)
        self.trigger_name = trigger_label(self.params.trigger, self.params.trigger_seed)
        self.trigger = None

    def _build(self, image_shape):
        p = self.params
        return build_trigger(p.trigger, tuple(image_shape[-2:]), kind=self.file_kind,
                             mask_path=p.mask_file, seed=p.trigger_seed)

    def check_extra(self, num_classes, image_shape):
        self._build(image_shape)   # raises TriggerError / TriggerFileError with the reason

    def prepare(self, train, ctx):
        self.trigger = self._build(train.image_shape)

    def apply_poison(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return stamp(x, self.trigger.pattern, self.trigger.mask, self.params.alpha)


@dataclass
class BadNetParams(StampParams):
    trigger: str = "grid3"


@ATTACKS.register
class BadNet(StampAttack):
    """BadNet: 3x3 black/white grid in the bottom-right corner, alpha 1, dirty label."""

    card = AttackCard(name="badnet", label="BadNet", paper="Gu et al., BadNets, 2017",
                      code="vtu81/backdoor-toolbox", label_mode="dirty", tables=("table2",), order=1)

    Params = BadNetParams
    presets = {"meca": {"target": 1, "trigger": "grid3"},
               "toolbox": {"target": 0, "trigger": "grid3"},
               "backdoorbench": {"target": 0, "trigger": "white3"}}
