"""Adaptive-Blend (Qi et al., "Revisiting the Assumption of Latent Separability for Backdoor
Defenses", ICLR 2023): a blended picture shown in random pieces at training time, plus cover samples.

Follows the reference code (backdoor-toolbox ``poison_tool_box/adaptive_blend.py``;
MeCa Table I: 5 % poison, 1 % cover, alpha 0.2, target 1). The trigger picture ``k`` (procedural
``kitty`` or a user image, as for Blend) is cut into a ``g x g`` grid (``g = sqrt(pieces)`` = 4);
every poison and cover image gets its own random piece mask with ``round(mask_rate*pieces)`` = 8
pieces hidden, and becomes ``x + alpha_train * M * (k - x)``. Poison (``floor(rate*N)``, all classes)
is relabelled to the target; cover (the next ``floor(cover_rate*N)`` entries of the same
permutation) keeps its label. The test trigger is the full picture at ``alpha_test``.

Choices: ``alpha_test`` defaults to ``alpha_train`` (MeCa gives no value; the ``toolbox`` preset
uses 0.15/0.2). Piece masks are drawn from a generator reseeded per chunk with (attack seed, first
index of the chunk), so the same cell always gets the same masks. Height and width must be
divisible by ``g`` (refused otherwise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attacks.blend import BlendImageAttack, BlendParams
from bench.attack import AttackConfigError
from bench.card import AttackCard
from bench.registry import ATTACKS
from bench.triggers import piece_masks, stamp


@dataclass
class AdaptiveBlendParams(BlendParams):
    cover_rate: float = 0.01
    pieces: int = 16
    mask_rate: float = 0.5

    def validate(self):
        super().validate()
        if self.pieces < 1 or math.isqrt(self.pieces) ** 2 != self.pieces:
            raise ValueError(f"pieces must be a perfect square (4, 16, 64, ...), got {self.pieces}")
        if not 0.0 <= self.mask_rate < 1.0:
            raise ValueError(f"mask_rate must be in [0, 1), got {self.mask_rate}")

    @property
    def masked(self) -> int:
        return round(self.mask_rate * self.pieces)


@ATTACKS.register
class AdaptiveBlend(BlendImageAttack):
    """Adaptive-Blend: partial (8 of 16 pieces) kitty blend at alpha 0.2, 1 % cover samples."""

    card = AttackCard(name="adaptive_blend", label="AdaptiveBlend", paper="Qi et al., ICLR 2023",
                      code="vtu81/backdoor-toolbox", label_mode="dirty", tables=("table3",), order=7)

    Params = AdaptiveBlendParams
    presets = {"meca": {"target": 1, "cover_rate": 0.01, "alpha_train": 0.2, "alpha_test": 0.2},
               "toolbox": {"target": 0, "cover_rate": 0.003, "alpha_train": 0.15, "alpha_test": 0.2}}

    def __init__(self, params=None):
        super().__init__(params)
        self._mask_seed = 0

    def check_extra(self, num_classes, image_shape):
        g = math.isqrt(self.params.pieces)
        h, w = image_shape[-2:]
        if h % g or w % g:
            raise AttackConfigError(f"{self.name}: {self.params.pieces} pieces need the image height and width "
                                    f"divisible by {g}, got {h}x{w}")
        super().check_extra(num_classes, image_shape)

    def prepare(self, train, ctx):
        super().prepare(train, ctx)
        self._mask_seed = int(torch.randint(0, 2 ** 62, (1,), generator=ctx.generator))

    def masks_for(self, idx: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The piece masks (B, 1, H, W) of the images ``idx`` (fixed per cell)."""
        g = torch.Generator().manual_seed(self._mask_seed + (int(idx[0]) if len(idx) else 0))
        return piece_masks(len(idx), h, w, self.params.pieces, self.params.masked, g)

    def apply_poison(self, x, idx):
        m = self.masks_for(idx, *x.shape[-2:]).to(x.device, x.dtype)
        return stamp(x, self.image, m, self.params.alpha_train)
