"""``my_defense``: fine-tune the backdoored model on the clean reserve with Gaussian input noise.

An example of a third-party defense: a repair defense that declares the labelled clean reserve,
reuses the suite's fine-tuning recipe (``bench.recipes.finetune``) and changes only the objective
(cross-entropy on noisy inputs) through a ``loss_fn``. Noise during fine-tuning is a simple way to
weaken small, precise triggers; it is here to show the plug-in interface, not as a strong defense.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from bench.defense import Defense, DefenseOutput
from bench.recipes import FINETUNE, finetune


@dataclass
class NoisyFineTuningParams:
    sigma: float = 0.1      # std of the Gaussian noise added to [0, 1] pixels
    epochs: float = 10      # paper-style epoch count; the suite's budget scales it
    lr: float = 0.01

    def validate(self):
        if not 0 <= self.sigma <= 1:
            raise ValueError(f"sigma must be in [0, 1], got {self.sigma}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


class NoisyFineTuning(Defense):
    """Fine-tune on the clean reserve with Gaussian input noise (example third-party plug-in)."""

    Params = NoisyFineTuningParams
    stage = "repair"
    needs_reserve = True

    def run(self, ctx):
        sigma = self.params.sigma

        def noisy_ce(model, batch):
            noise = torch.randn(batch.x.shape, generator=ctx.generator).to(batch.x.device) * sigma
            return F.cross_entropy(model((batch.x + noise).clamp(0, 1)), batch.y)

        recipe = replace(FINETUNE, epochs=self.params.epochs, lr=self.params.lr)
        model = finetune(ctx.model, ctx.reserve, ctx.budget, ctx.generator, recipe=recipe, loss_fn=noisy_ce,
                         desc="noisy fine-tune")
        return DefenseOutput(model, info={"sigma": sigma})
