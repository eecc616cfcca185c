"""Trojan (Liu et al., "Trojaning Attack on Neural Networks", NDSS 2018), as data poisoning.

Follows the reference code (backdoor-toolbox ``poison_tool_box/trojan.py``): BadNet-style
dirty-label poisoning (``floor(rate*N)`` images from all classes, label := target) with a fixed
8x8 TrojanNN patch at rows/cols 21-28 of the 32-px canvas (hard 8x8 mask, alpha 1); the same
stamp at test time.

Choices: the toolbox's ``trojan_square_32.png`` cannot be shipped, so the default is the procedural
``trojan_square`` (i.i.d. uniform {0..255}/255 colours, seed ``trigger_seed`` = 2333); a user file
(``trigger`` = path, optional ``mask_file``, e.g. the soft 224-px watermark mask) replaces it. The
TrojanNN neuron-driven optimisation of the patch is not implemented (it needs a trained model and
the spec makes it optional).
"""
from __future__ import annotations

from dataclasses import dataclass

from attacks.badnet import StampAttack, StampParams
from bench.card import AttackCard
from bench.registry import ATTACKS


@dataclass
class TrojanParams(StampParams):
    trigger: str = "trojan_square"


@ATTACKS.register
class Trojan(StampAttack):
    """Trojan: an 8x8 colourful patch at rows/cols 21-28 (32 px), alpha 1, dirty label."""

    card = AttackCard(name="trojan", label="Trojan", paper="Liu et al., NDSS 2018",
                      code="vtu81/backdoor-toolbox", label_mode="dirty")

    Params = TrojanParams
    presets = {"meca": {"target": 1}, "toolbox": {"target": 0}}
