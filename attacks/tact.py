"""TaCT (Tang et al., "Demon in the Variant", USENIX Security 2021): a source-specific backdoor.

Follows the reference code (backdoor-toolbox ``poison_tool_box/TaCT.py``, MeCa Table I):
poison = ``min(floor(rate*N), |source images|)`` images of the source classes, stamped and
relabelled to the target; cover = ``min(floor(cover_rate*N), |cover-class images|)`` images of the
cover classes, stamped with the same trigger but keeping their labels (they teach the model that
the trigger alone does not mean "target"). The triggered test set holds only source-class test
images, so ASR is measured on them; the extra metric ``false_trigger_rate`` is the fraction of
stamped non-source, non-target test images predicted as the target (low = source-specific).

Choices: defaults are MeCa's (target 1, source [0], cover classes [5, 7], cover rate 0.01,
trigger ``grid3``, which MeCa calls "3*3 white square"); the ``toolbox`` preset uses the 8x8
``trojan_square`` with source [1] and target 0. Cover classes may not contain a source class or
the target (refused before any compute).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from attacks.badnet import StampAttack, StampParams
from bench.card import AttackCard
from bench.data import Split, to_float, to_uint8
from bench.registry import ATTACKS


@dataclass
class TaCTParams(StampParams):
    trigger: str = "grid3"
    cover_rate: float = 0.01
    source_classes: list = field(default_factory=lambda: [0])
    cover_classes: list = field(default_factory=lambda: [5, 7])

    def validate(self):
        super().validate()
        if not self.source_classes:
            raise ValueError("source_classes must name at least one class")
        if self.target in self.source_classes:
            raise ValueError(f"the target class {self.target} cannot also be a source class {self.source_classes}")
        bad = sorted(set(self.cover_classes) & (set(self.source_classes) | {self.target}))
        if bad:
            raise ValueError(f"cover_classes {self.cover_classes} must not contain a source class or the "
                             f"target; offending: {bad}")


def _in(y: torch.Tensor, classes) -> torch.Tensor:
    cls = torch.as_tensor(list(classes), dtype=y.dtype, device=y.device)
    return (y[:, None] == cls[None]).any(1)


@ATTACKS.register
class TaCT(StampAttack):
    """TaCT: source-class images stamped and relabelled, cover-class images stamped, labels kept."""

    card = AttackCard(name="tact", label="TaCT", paper="Tang et al., USENIX Security 2021",
                      code="vtu81/backdoor-toolbox", label_mode="dirty", source_specific=True,
                      tables=("table3",), order=6)

    Params = TaCTParams
    presets = {"meca": {"target": 1, "source_classes": [0], "cover_classes": [5, 7], "cover_rate": 0.01,
                        "trigger": "grid3"},
               "toolbox": {"target": 0, "source_classes": [1], "cover_classes": [5, 7],
                           "trigger": "trojan_square"}}

    def poison_candidates(self, y):
        return _in(y, self.params.source_classes).nonzero().flatten()

    def cover_candidates(self, y):
        return _in(y, self.params.cover_classes).nonzero().flatten()

    def test_candidates(self, y):
        return _in(y, self.params.source_classes)

    def extra_metrics(self, predict, test: Split) -> dict:
        """False-trigger rate: stamped test images of non-source, non-target classes -> target."""
        keep = ~_in(test.y, self.params.source_classes) & (test.y != self.params.target)
        x = test.x[keep]
        if len(x) == 0:
            return {"false_trigger_rate": float("nan")}
        xt = to_uint8(self.apply_test(to_float(x)).clamp(0, 1))
        pred = predict(xt)
        return {"false_trigger_rate": (pred == self.params.target).float().mean().item()}
