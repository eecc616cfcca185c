"""PhysicalBA (Li et al., "Backdoor attack in the physical world", ICLR-W 2021): a stamped patch
made robust to physical capture by random flips, colour jitter and affine warps during training.

Follows the reference code (BackdoorBox ``core/attacks/PhysicalBA.py``; MeCa Table I
"Firefox", 5 %, target 1): ``floor(rate*N)`` images from all classes get the Firefox logo in the
top-right corner (alpha 1, hard mask) and label := target. During the backdoor training every
sample (``phys_on = "all"``, BackdoorBox; ``"none"`` switches it off) goes through
``T_phys`` = horizontal flip (p 0.5), brightness and contrast jitter (factors U[0.8, 1.2]) and a
random affine (rotation U[-10, 10] deg, translation up to 10 % in whole pixels, scale U[0.8, 0.9],
nearest, zero fill), after the standard crop/flip augmentation; batched, per-sample random.
ASR (the suite's reported number) is the digital one: stamp only, every non-target test image.
``asr_physical`` (extra metric) is the same triggered set with one seeded draw of ``T_phys`` per
image, the same draw for every evaluation of the cell.

Choices where the spec is unsure:
* the trigger default is the procedural ``firefox_badge`` (a user ``firefox_corner_32.png`` may be
  given as ``trigger``);
* ``T_phys`` acts during the attacker's (backdoor) training through the attack's
  ``train_transform`` hook; defenses that retrain from scratch use their own recipe without it.
  The spec's "poisoned samples only" variant is not offered (the hook sees no batch indices);
* ColorJitter is applied in a fixed order, brightness then contrast (torchvision randomises it);
  the contrast mean is the per-image mean of 0.299R + 0.587G + 0.114B after the brightness step;
* translations are drawn like torchvision (``round(U[-t*W, t*W])`` pixels).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attacks.badnet import StampAttack, StampParams
from bench.card import AttackCard
from bench.data import Split, to_float, to_uint8
from bench.registry import ATTACKS


@dataclass
class PhysicalBAParams(StampParams):
    trigger: str = "firefox_badge"
    phys_on: str = "all"                 # all | none
    p_flip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    degrees: float = 10.0
    translate: tuple = (0.1, 0.1)
    scale: tuple = (0.8, 0.9)

    def validate(self):
        super().validate()
        if self.phys_on not in ("all", "none"):
            raise ValueError(f"phys_on must be 'all' or 'none', got '{self.phys_on}'")
        if not 0 <= self.p_flip <= 1:
            raise ValueError(f"p_flip must be in [0, 1], got {self.p_flip}")
        if not (0 <= self.brightness < 1 and 0 <= self.contrast < 1):
            raise ValueError("brightness and contrast jitter must be in [0, 1)")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        if len(self.translate) != 2 or not all(0 <= t <= 1 for t in self.translate):
            raise ValueError(f"translate must be two fractions in [0, 1], got {self.translate}")


def _uniform(n, lo, hi, g):
    return lo + (hi - lo) * torch.rand(n, generator=g)


def physical_transform(x: torch.Tensor, g: torch.Generator, p: PhysicalBAParams) -> torch.Tensor:
    """One random draw of T_phys per image of a float batch (B, 3, H, W) in [0, 1]."""
    b, _, h, w = x.shape
    dev = x.device
    flip = (torch.rand(b, generator=g) < p.p_flip).to(dev)
    bright = _uniform(b, 1 - p.brightness, 1 + p.brightness, g).to(dev, x.dtype).view(b, 1, 1, 1)
    contr = _uniform(b, 1 - p.contrast, 1 + p.contrast, g).to(dev, x.dtype).view(b, 1, 1, 1)
    angle = _uniform(b, -p.degrees, p.degrees, g) * math.pi / 180
    tx = torch.round(_uniform(b, -p.translate[0] * w, p.translate[0] * w, g))
    ty = torch.round(_uniform(b, -p.translate[1] * h, p.translate[1] * h, g))
    sc = _uniform(b, p.scale[0], p.scale[1], g)
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    x = (x * bright).clamp(0, 1)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean((1, 2)).view(b, 1, 1, 1)
    x = (contr * x + (1 - contr) * grey).clamp(0, 1)
    # inverse affine in normalised coordinates: input = D^-1 R(-a)/s D (out - 2t/size)
    cos, sin = torch.cos(angle) / sc, torch.sin(angle) / sc
    m00, m01, m10, m11 = cos, sin, -sin, cos
    theta = torch.stack([
        torch.stack([m00, m01 * h / w, -(m00 * tx + m01 * ty) * 2 / w], 1),
        torch.stack([m10 * w / h, m11, -(m10 * tx + m11 * ty) * 2 / h], 1)], 1).to(dev, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


@ATTACKS.register
class PhysicalBA(StampAttack):
    """PhysicalBA: Firefox logo top-right, dirty label, trained under random physical transforms."""

    card = AttackCard(name="physicalba", label="PhysicalBA", paper="Li et al., ICLR-W 2021",
                      code="THUYimingLi/BackdoorBox", label_mode="dirty", tables=("table2",), order=5)

    Params = PhysicalBAParams
    presets = {"meca": {"target": 1, "trigger": "firefox_badge", "phys_on": "all"},
               "backdoorbox": {"target": 1, "trigger": "white3", "phys_on": "all"}}

    def __init__(self, params=None):
        super().__init__(params)
        self._phys_seed = 0

    def prepare(self, train, ctx):
        super().prepare(train, ctx)
        self._phys_seed = int(torch.randint(0, 2 ** 62, (1,), generator=ctx.generator))

    def train_transform(self):
        p = self.params
        if p.phys_on == "none":
            return None
        return lambda x, g: physical_transform(x, g, p)

    def extra_metrics(self, predict, test: Split) -> dict:
        """``asr_physical``: stamped non-target test images under one seeded draw of T_phys each."""
        keep = test.y != self.params.target
        if not keep.any():
            return {"asr_physical": float("nan")}
        g = torch.Generator().manual_seed(self._phys_seed)
        preds = []
        xs = test.x[keep]
        for start in range(0, len(xs), 1024):
            xb = self.apply_test(to_float(xs[start:start + 1024]))
            preds.append(predict(to_uint8(physical_transform(xb, g, self.params).clamp(0, 1))))
        pred = torch.cat(preds)
        return {"asr_physical": (pred == self.params.target).float().mean().item()}
