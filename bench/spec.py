"""Run specifications: what one run is, and the hashes that name it.

A :class:`RunSpec` fixes everything a run's numbers depend on (dataset and its subset sizes, model,
attack and parameters, poison ratio, defense and parameters, seed, training recipe, budget scale,
clean-reserve fraction). Its ``run_id`` is a hash of those fields, so the same spec always maps to
the same record, and ``cell_id`` hashes only the fields the backdoored model depends on, so every
repair defense of a cell shares one trained model. Where the data lives and which suite asked for
the run are not part of the hash.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields


def stable_hash(obj, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def derive_seed(seed: int, *tags) -> int:
    """A 63-bit seed derived from a run seed and tags (independent streams per purpose)."""
    return int(stable_hash([seed, *tags], 15), 16)


@dataclass(frozen=True)
class RunSpec:
    dataset: str
    model: str
    attack: str
    poison_ratio: float
    defense: str = "none"
    seed: int = 0
    attack_params: dict = field(default_factory=dict)
    defense_params: dict = field(default_factory=dict)
    dataset_params: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)          # TrainConfig overrides of the backdoor training
    budget_scale: float = 1.0
    reserve_fraction: float = 0.05
    n_train: int | None = None
    n_test: int | None = None
    suite: str = field(default="", compare=False)

    _NOT_HASHED = ("suite",)
    _DEFENSE_FIELDS = ("defense", "defense_params", "budget_scale", "reserve_fraction")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def hashed(self) -> dict:
        d = self.to_dict()
        for k in self._NOT_HASHED:
            d.pop(k, None)
        return d

    @property
    def run_id(self) -> str:
        return stable_hash(self.hashed())

    @property
    def cell(self) -> dict:
        """The fields the poisoned set and the backdoored model depend on. The budget scale is a
        defense field, except for attacks that train a surrogate or generator (``needs_model``):
        their poison depends on the attacker's scaled budget, so it names their cell too."""
        d = self.hashed()
        for k in self._DEFENSE_FIELDS:
            d.pop(k, None)
        if _attack_needs_model(self.attack):
            d["attack_budget_scale"] = self.budget_scale
        return d

    @property
    def cell_id(self) -> str:
        return stable_hash(self.cell)

    @property
    def model_id(self) -> str:
        """Names the trained (backdoored) model. A clean cell (ratio 0) trains on unpoisoned data,
        so its model does not depend on the attack: all clean cells of a (dataset, model, seed)
        share one training; the attack still decides the triggered test set."""
        d = self.cell
        if self.poison_ratio == 0:
            d["attack"], d["attack_params"] = "(clean)", {}
            d.pop("attack_budget_scale", None)
        return stable_hash(d)

    def label(self) -> str:
        """``dataset/model/attack@ratio/defense/seedN``; a defense's explicit parameters (other
        than its preset) follow its name, so two variants of one defense are told apart."""
        variant = {k: v for k, v in sorted(self.defense_params.items()) if k != "preset"}
        defense = self.defense + (f"({','.join(f'{k}={v}' for k, v in variant.items())})" if variant else "")
        return (f"{self.dataset}/{self.model}/{self.attack}@{self.poison_ratio:g}/"
                f"{defense}/seed{self.seed}")


def _attack_needs_model(name: str) -> bool:
    """Whether the attack trains a model to make its poison (unknown names: True, the safe side)."""
    try:
        from bench.registry import ATTACKS

        return bool(getattr(ATTACKS.get(name).obj, "needs_model", True))
    except Exception:
        return True
