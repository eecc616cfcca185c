"""Input-Aware Dynamic backdoor (IAD; Nguyen & Tran, NeurIPS 2020; BackdoorBox ``IAD``,
BackdoorBench ``inputaware``), as a data-poisoning attack.

IAD is *training-controlled*: the attacker trains a pattern
generator G and a mask network M together with a classifier. The suite's model is "poison the
training set once, then the victim trains with the standard engine", so IAD runs in the spec's two
phases, as the backdoor-toolbox's ``dynamic`` attack does:

* **Phase A (attacker side, in** :meth:`IAD.prepare` **).** All through :func:`bench.engine.fit`:
  1. mask pre-training of M alone, ``mask_epochs`` (paper 25) x budget, Adam lr 0.01, step decay
     at 40 % / 80 % (the paper's milestones 10 and 20 of 25), loss
     ``lambda_norm * mean(relu(M(x1) - mask_density)) + lambda_div * L_div``;
  2. joint training of the attacker's own classifier C (the cell's architecture) and G with M
     frozen: per batch ``floor(pratio * B)`` images carry their own trigger ``x + (G(x) - x) M(x)``
     with the target label, ``floor(cross_ratio * B)`` carry another image's pattern and mask and
     keep their label, the rest stay clean; loss ``CE + lambda_div * L_div(G)``.
  C is discarded; G and M are cached (``<cache>/iad/<key>.pt``, key = hash of the training
  tensors, architecture, recipe, parameters, seed and budget), so a second preparation loads them.
* **Phase B (the poisoned set).** ``floor(rate * N)`` images from all classes get their own
  trigger and the target label (dirty label); ``cover_rate`` (default 0.1) cross-trigger images get
  the pattern and mask of another training image (the next index) and keep their label. Test: every
  non-target test image gets its own generated trigger. The victim then trains on this static set
  with the suite's standard engine, like every other attack; the base :class:`~bench.attack.Attack`
  needed no change.

Choices where the spec leaves room:

* Triggers are applied in [0, 1] pixel space: ``x + (G(x) - x) * M(x)`` is an interpolation, and
  interpolation commutes with the per-channel affine normalisation, so this equals the spec's
  normalised-space formula. G outputs ``tanh(z) / (2 + 1e-7) + 0.5`` in [0, 1]; M outputs
  ``tanh(20 z - 10) / (2 + 1e-7) + 0.5``.
* The engine trains with one optimizer, so C and G share one Adam (``lr`` 1e-3, no weight decay)
  instead of the paper's SGD for C and Adam (0.01, betas 0.5/0.9) for G; the mask network uses
  Adam lr 0.01 with PyTorch's default betas. The joint training lasts ``train_epochs`` x budget;
  the default ``None`` means one standard training of the cell (its recipe's epochs), in place of
  the paper's 600 (BackdoorBox) epochs.
* ``L_div`` pairs each image with the next one in its batch (a rolled copy), the spec's vectorised
  form of "pairs of batches".
* The cross-trigger accuracy on the test set (true labels kept under another image's trigger) is
  reported as the extra metric ``cross_acc``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench import engine
from bench import surrogate as sg
from bench.attack import Attack, AttackConfigError, AttackParams
from bench.card import AttackCard
from bench.data import Split, to_float, to_uint8
from bench.engine import TrainConfig
from bench.registry import ATTACKS
from bench.spec import derive_seed


@dataclass
class IADParams(AttackParams):
    target: int = 1
    cover_rate: float = 0.1          # cross-trigger samples in the poisoned set (label kept)
    pratio: float = 0.1              # phase A: backdoored fraction of each batch
    cross_ratio: float = 0.1         # phase A: cross-trigger fraction of each batch
    mask_density: float = 0.032
    lambda_norm: float = 100.0
    lambda_div: float = 1.0
    mask_epochs: float = 25          # paper epochs of mask pre-training (scaled by the budget)
    mask_lr: float = 0.01
    train_epochs: float | None = None  # joint training epochs (None: the cell recipe's epochs), scaled
    lr: float = 1e-3                 # Adam for C and G together
    batch_size: int = 128
    width: int = 32                  # generator channels at the first level (paper 32)
    depth: int = 3                   # down/up-sampling steps (paper 3)

    def validate(self):
        super().validate()
        for name in ("pratio", "cross_ratio"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if self.pratio + self.cross_ratio >= 1:
            raise ValueError(f"pratio + cross_ratio must be below 1, got {self.pratio + self.cross_ratio}")
        if not 0 < self.mask_density < 1:
            raise ValueError(f"mask_density must be in (0, 1), got {self.mask_density}")
        if self.mask_epochs <= 0 or (self.train_epochs is not None and self.train_epochs <= 0):
            raise ValueError("mask_epochs and train_epochs must be positive")
        if self.lr <= 0 or self.mask_lr <= 0:
            raise ValueError("lr and mask_lr must be positive")
        if self.width < 1 or self.depth < 1 or self.batch_size < 2:
            raise ValueError("width and depth must be >= 1 and batch_size >= 2")


def _pattern(G: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(G(x).float()) / (2 + 1e-7) + 0.5


def _mask(M: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(20 * M(x).float() - 10) / (2 + 1e-7) + 0.5


def _rms(t: torch.Tensor) -> torch.Tensor:
    return (t.flatten(1).pow(2).mean(1) + 1e-12).sqrt()   # eps: finite gradient at 0


def _diversity(x1, x2, out1, out2) -> torch.Tensor:
    return (_rms(x1 - x2) / (_rms(out1 - out2) + 1e-7)).mean()


@ATTACKS.register
class IAD(Attack):
    """Input-aware dynamic backdoor: a trained generator's per-image pattern and mask."""

    card = AttackCard(name="iad", label="IAD", paper="Nguyen & Tran, NeurIPS 2020",
                      code="VinAIResearch/input-aware-backdoor-attack-release", label_mode="dirty",
                      needs_model=True)

    Params = IADParams
    trigger_name = "iad_generator"
    presets = {"meca": {"target": 1}, "backdoorbench": {"target": 0}}

    def __init__(self, params=None):
        super().__init__(params)
        self.G: nn.Module | None = None
        self.M: nn.Module | None = None
        self._train_x: torch.Tensor | None = None
        self.prep_info: dict = {}

    def check_extra(self, num_classes, image_shape):
        step = 2 ** self.params.depth
        if image_shape[-1] % step or image_shape[-2] % step:
            raise AttackConfigError(f"{self.name}: the generator downsamples {self.params.depth} times, so the "
                                    f"image side must be divisible by {step}; got {tuple(image_shape[-2:])}")

    def _nets(self, ctx, channels: int):
        p = self.params
        torch.manual_seed(derive_seed(sg.ctx_seed(ctx), "iad-generator"))
        G = sg.EncoderDecoder(channels, p.width, p.depth)
        torch.manual_seed(derive_seed(sg.ctx_seed(ctx), "iad-mask"))
        M = sg.EncoderDecoder(1, p.width, p.depth)
        return G, M

    def prepare(self, train, ctx) -> None:
        p = self.params
        sg.require_factory(ctx, self.name)
        self.check_extra(ctx.num_classes, train.image_shape)
        channels = train.image_shape[0]
        G, M = self._nets(ctx, channels)
        C = ctx.model_factory()
        joint_epochs = sg.scaled_epochs(ctx, p.train_epochs if p.train_epochs is not None else ctx.train_config.epochs)
        mask_cfg = TrainConfig(epochs=sg.scaled_epochs(ctx, p.mask_epochs), batch_size=p.batch_size, optimizer="adam",
                               lr=p.mask_lr, weight_decay=0.0, schedule="step", milestones=(0.4, 0.8),
                               drop_last=False)
        joint_cfg = TrainConfig(epochs=joint_epochs, batch_size=p.batch_size, optimizer="adam", lr=p.lr,
                                weight_decay=0.0, schedule="cosine")
        fields = {k: v for k, v in vars(p).items() if k != "cover_rate"}
        key = sg.artifact_key("iad", data=sg.data_digest(train), model=sg.model_signature(C), params=fields,
                              mask_cfg=mask_cfg, joint_cfg=joint_cfg, seed=sg.ctx_seed(ctx))

        def compute():
            def mask_loss(m, batch):
                x1, x2 = batch.x, batch.x.roll(1, 0)
                m1, m2 = _mask(m, x1), _mask(m, x2)
                norm = F.relu(m1 - p.mask_density).mean()
                return p.lambda_norm * norm + p.lambda_div * _diversity(x1, x2, m1, m2)

            engine.fit(M, train, mask_cfg, loss_fn=mask_loss, generator=sg.sub_generator(ctx, "iad-mask"),
                       desc="iad mask")
            frozen_m = engine.prepare_model(sg.Frozen(M))
            target = p.target

            def joint_loss(models, batch):
                clf, gen = models
                x, y = batch.x, batch.y
                b = len(x)
                nb, nc = int(p.pratio * b), int(p.cross_ratio * b)
                k = nb + nc
                x2 = x.roll(1, 0)[:k]
                with torch.no_grad():
                    m1 = _mask(frozen_m, x[:k])
                    m2 = _mask(frozen_m, x2)
                p1, p2 = _pattern(gen, x[:k]), _pattern(gen, x2)
                x_bd = x[:nb] + (p1[:nb] - x[:nb]) * m1[:nb]
                x_cross = x[nb:k] + (p2[nb:k] - x[nb:k]) * m2[nb:k]
                xs = torch.cat([x_bd.to(x.dtype), x_cross.to(x.dtype), x[k:]])
                ys = torch.cat([torch.full_like(y[:nb], target), y[nb:]])
                loss = F.cross_entropy(clf(xs).float(), ys)
                if k > 1:
                    loss = loss + p.lambda_div * _diversity(x[:k], x2, p1, p2)
                return loss

            res = engine.fit([C, G], train, joint_cfg, loss_fn=joint_loss,
                             generator=sg.sub_generator(ctx, "iad-joint"), desc="iad joint")
            return {"G": {k: v.detach().cpu() for k, v in G.state_dict().items()},
                    "M": {k: v.detach().cpu() for k, v in M.state_dict().items()},
                    "losses": res.losses}

        blob, loaded = sg.cached(ctx, "iad", key, compute)
        G.load_state_dict(blob["G"])
        M.load_state_dict(blob["M"])
        self.G = engine.prepare_model(sg.Frozen(G))
        self.M = engine.prepare_model(sg.Frozen(M))
        self._train_x = train.x
        self.prep_info = {"iad_cache_hit": loaded, "iad_joint_epochs": joint_epochs,
                          "iad_losses": [blob["losses"][0], blob["losses"][-1]] if blob["losses"] else []}

    # -- triggers ---------------------------------------------------------------------------------
    def pattern_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """G's pattern and M's mask for a float batch (on ``x``'s device)."""
        out = engine.map_batches(lambda xb, y, i: torch.cat([_pattern(self.G, xb), _mask(self.M, xb)], 1),
                                 Split(to_uint8(x).cpu(), None), batch_size=256)
        out = out.to(x.device, x.dtype)
        return out[:, :-1], out[:, -1:]

    @staticmethod
    def _blend(x, pattern, mask):
        return (x + (pattern - x) * mask).clamp(0, 1)

    def apply_poison(self, x, idx):
        return self._blend(x, *self.pattern_and_mask(x))

    def apply_cover(self, x, idx):
        other = to_float(self._train_x[(idx.cpu() + 1) % len(self._train_x)]).to(x.device)
        return self._blend(x, *self.pattern_and_mask(other))

    def cross_triggered(self, x_u8: torch.Tensor) -> torch.Tensor:
        """Each image with the trigger of the next one (uint8)."""
        x = to_float(x_u8)
        return to_uint8(self._blend(x, *self.pattern_and_mask(x.roll(1, 0))))

    def extra_metrics(self, predict, test):
        keep = self.test_candidates(test.y).nonzero().flatten()
        if len(keep) < 2 or self.G is None:
            return {}
        pred = predict(self.cross_triggered(test.x[keep]))
        return {"cross_acc": float((pred == test.y[keep]).float().mean())}

    def poison(self, train, ratio, generator, ctx=None, device=None):
        out = super().poison(train, ratio, generator, ctx, device)
        out.info.update(self.prep_info)
        return out
