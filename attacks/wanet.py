"""WaNet (Nguyen & Tran, "WaNet - Imperceptible Warping-based Backdoor Attack", ICLR 2021),
static poisoned-set version with noise-mode cover samples.

Follows the reference code (backdoor-toolbox ``poison_tool_box/WaNet.py``, MeCa Table I):
a smooth warping field is built once from the attack's seeded generator: ``ins ~ U(-1,1)`` of shape
(1,2,k,k), normalised by its mean absolute value, upsampled bicubically to (H,W) and added to the
identity grid as ``grid = clamp((identity + s*noise/H)*grid_rescale, -1, 1)``. Poisoned images
(``floor(rate*N)`` from all classes) are ``grid_sample(x, grid)`` (bilinear, zero padding,
align_corners=True) with label := target; cover images (the next ``floor(cover_rate*N)`` entries of
the same permutation) are warped with ``grid + eps/H`` (``eps ~ U(-1,1)``, clamped) and keep their
labels ("noise mode"). The test trigger is the plain warp (no noise).

Choices: ``cover_noise = "shared"`` (toolbox/MeCa: one eps drawn after the grid, used for every
cover image) is the default; ``per_sample`` draws an eps per cover image, from a generator reseeded
per chunk with (attack seed, first index of the chunk), so the same cell always gets the same noise.
The grid and noise are fixed per run seed (drawn from the attack-preparation generator). The warped
images are re-quantised to 8 bits like every poisoned image (allowed by ``common.md``; it perturbs
the warp by at most 0.5/255 per pixel). ``grid_rescale`` multiplies as in the reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.attack import Attack, AttackConfigError, AttackParams
from bench.card import AttackCard
from bench.registry import ATTACKS


@dataclass
class WaNetParams(AttackParams):
    cover_rate: float = 0.05
    k: int = 4
    s: float = 0.5
    grid_rescale: float = 1.0
    cover_noise: str = "shared"          # shared | per_sample

    def validate(self):
        super().validate()
        if self.k < 2:
            raise ValueError(f"k (control-grid size) must be >= 2, got {self.k}")
        if self.s < 0:
            raise ValueError(f"s (warping strength) must be >= 0, got {self.s}")
        if self.grid_rescale <= 0:
            raise ValueError(f"grid_rescale must be positive, got {self.grid_rescale}")
        if self.cover_noise not in ("shared", "per_sample"):
            raise ValueError(f"cover_noise must be 'shared' or 'per_sample', got '{self.cover_noise}'")


def warping_grid(h: int, w: int, k: int, s: float, rescale: float, generator: torch.Generator) -> torch.Tensor:
    """The WaNet sampling grid (1, H, W, 2), (x, y) order, values in [-1, 1]."""
    ins = torch.rand(1, 2, k, k, generator=generator) * 2 - 1
    ins = ins / ins.abs().mean()
    noise = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    ys = torch.linspace(-1, 1, h)
    xs = torch.linspace(-1, 1, w)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    identity = torch.stack((xx, yy), dim=-1).unsqueeze(0)
    return ((identity + s * noise / h) * rescale).clamp(-1, 1)


def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    g = grid.to(x.device, x.dtype)
    if g.shape[0] == 1 and len(x) != 1:
        g = g.expand(len(x), -1, -1, -1)
    return F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=True)


@ATTACKS.register
class WaNet(Attack):
    """WaNet: a fixed smooth warp (k 4, s 0.5), dirty label, noise-mode cover samples (5 %)."""

    card = AttackCard(name="wanet", label="WaNet", paper="Nguyen & Tran, ICLR 2021",
                      code="vtu81/backdoor-toolbox", label_mode="dirty", tables=("table2",), order=4)

    Params = WaNetParams
    trigger_name = "wanet_warp"
    presets = {"meca": {"target": 1, "cover_rate": 0.05, "k": 4, "s": 0.5, "cover_noise": "shared"},
               "toolbox": {"target": 0, "cover_rate": 0.1, "k": 4, "s": 0.5, "cover_noise": "shared"},
               "backdoorbench": {"target": 0, "cover_rate": 0.2, "k": 4, "s": 0.5, "cover_noise": "per_sample"}}

    def __init__(self, params=None):
        super().__init__(params)
        self.grid = None
        self.noise = None
        self._noise_seed = 0

    def check_extra(self, num_classes, image_shape):
        h, w = image_shape[-2:]
        if h < self.params.k or w < self.params.k:
            raise AttackConfigError(f"{self.name}: images of {h}x{w} px are smaller than the k={self.params.k} "
                                    f"control grid")

    def prepare(self, train, ctx):
        h, w = train.image_shape[-2:]
        g = ctx.generator
        self.grid = warping_grid(h, w, self.params.k, self.params.s, self.params.grid_rescale, g)
        self.noise = torch.rand(1, h, w, 2, generator=g) * 2 - 1
        self._noise_seed = int(torch.randint(0, 2 ** 62, (1,), generator=g))

    def apply_poison(self, x, idx):
        return warp(x, self.grid)

    def apply_cover(self, x, idx):
        h = x.shape[-2]
        if self.params.cover_noise == "shared":
            eps = self.noise
        else:
            g = torch.Generator().manual_seed(self._noise_seed + int(idx[0]) if len(idx) else self._noise_seed)
            eps = torch.rand(len(x), *self.grid.shape[1:], generator=g) * 2 - 1
        grid2 = (self.grid + eps / h).clamp(-1, 1)
        return warp(x, grid2)

    def apply_test(self, x):
        return warp(x, self.grid)
