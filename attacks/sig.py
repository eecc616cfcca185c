"""SIG (Barni, Kallas & Tondi, ICIP 2019): a horizontal sinusoid added to target-class images,
clean label.

Follows the reference code (backdoor-toolbox ``poison_tool_box/SIG.py``): the signal
``v[i, j] = delta * sin(2*pi*j*freq/W)`` (constant down each column, same in the 3 channels) is
added and clipped, ``x' = clip(x + v, 0, 1)``. Only target-class training images are poisoned,
``n = floor(rate*N)`` of them (the base class refuses a rate above what the class holds, unless
``cap_to_class``: then the whole class, ``n = min(floor(rate*N), |class|)`` as the spec and the
toolbox do; the ``meca`` preset sets it, since MeCa's 5 % on CIFAR-100 and Tiny-ImageNet is the
whole target class, 1 % and 0.5 %), and their labels are unchanged. The test trigger adds the same signal (``delta_test``, default
``delta``) to every non-target test image.

Choices: ``delta`` is given as a fraction of the pixel range (30/255 toolbox/MeCa; the
``backdoorbench`` preset uses 40/255). Values are rounded to 8 bits after clipping (the base
class's re-quantisation), not floored as BackdoorBench does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.attack import Attack, AttackConfigError, AttackParams
from bench.card import AttackCard
from bench.registry import ATTACKS


@dataclass
class SIGParams(AttackParams):
    delta: float = 30 / 255
    freq: float = 6.0
    delta_test: float | None = None

    def validate(self):
        super().validate()
        for name in ("delta", "delta_test"):
            d = getattr(self, name)
            if d is not None and not 0.0 < d <= 1.0:
                raise ValueError(f"{name} must be in (0, 1] (a fraction of the pixel range), got {d}")
        if self.freq <= 0:
            raise ValueError(f"freq must be positive, got {self.freq}")


def sig_signal(width: int, delta: float, freq: float, device=None) -> torch.Tensor:
    """The (1, 1, 1, W) sinusoid ``delta * sin(2*pi*j*freq/W)``."""
    j = torch.arange(width, dtype=torch.float64, device=device)
    return (delta * torch.sin(2 * math.pi * freq * j / width)).float().view(1, 1, 1, width)


@ATTACKS.register
class SIG(Attack):
    """SIG: clean-label; target-class images get a horizontal sinusoid (delta 30/255, 6 periods)."""

    card = AttackCard(name="sig", label="SIG", paper="Barni, Kallas & Tondi, ICIP 2019",
                      code="vtu81/backdoor-toolbox", label_mode="clean", tables=("table2",), order=3)

    Params = SIGParams
    trigger_name = "sig"
    presets = {"meca": {"target": 1, "delta": 30 / 255, "freq": 6.0, "cap_to_class": True},
               "toolbox": {"target": 0, "delta": 30 / 255, "freq": 6.0},
               "backdoorbench": {"target": 0, "delta": 40 / 255, "freq": 6.0}}

    def check_extra(self, num_classes, image_shape):
        if image_shape[-1] < 2 * self.params.freq:
            raise AttackConfigError(f"{self.name}: {self.params.freq} periods do not fit in an image "
                                    f"{image_shape[-1]} px wide")

    def _add(self, x, delta):
        return (x + sig_signal(x.shape[-1], delta, self.params.freq, x.device)).clamp_(0, 1)

    def apply_poison(self, x, idx):
        return self._add(x, self.params.delta)

    def apply_test(self, x):
        d = self.params.delta if self.params.delta_test is None else self.params.delta_test
        return self._add(x, d)
