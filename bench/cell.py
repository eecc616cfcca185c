"""A cell: its data, its clean reserve, its poisoned training set and its backdoored model.

A cell is (dataset + subset sizes, model, attack + params, poison ratio, seed, recipe, reserve
fraction). Building one (:func:`build_cell`) follows the fair protocol's order:

1. load the dataset (decoded-tensor cache) and take the seeded, class-balanced subsets;
2. **carve out the clean reserve first**: a seeded ``floor(reserve_fraction * N)`` of the training
   images, kept clean and labelled, never poisoned, never a cover sample, and not part of what the
   victim trains on (smaller reserves a defense asks for are prefixes of it);
3. poison the rest (the victim's training set) and build the triggered test set.

Every draw comes from :class:`bench.protocol.Seeds` (run seed + the results folder's secret salt).
The backdoored model is trained once per cell and kept in the artifact cache
(``<cache>/models/<model_id>-<salt_id>.pt`` with JSON metadata that holds costs, never the cell's
target or ratio); clean cells (ratio 0) of different attacks share one model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import artifacts, engine
from bench.attack import AttackContext, PoisonedTrain, TriggeredTest
from bench.data import DatasetBundle, Split, reserve_size, subset_bundle
from bench.datasets import default_cache_dir, load_dataset
from bench.engine import TrainConfig
from bench.evaluate import evaluate_model
from bench.models import create_model
from bench.protocol import Seeds, salt_id
from bench.registry import ATTACKS, build_params
from bench.spec import RunSpec


@dataclass(frozen=True)
class Architecture:
    """Everything needed to build a fresh model of a cell (plain data: it crosses processes)."""

    name: str
    num_classes: int
    image_size: int
    mean: tuple
    std: tuple

    def build(self, seed: int | None = None) -> torch.nn.Module:
        if seed is not None:
            torch.manual_seed(seed)
        return create_model(self.name, self.num_classes, self.image_size, self.mean, self.std)

    def to_dict(self) -> dict:
        return {"name": self.name, "num_classes": self.num_classes, "image_size": self.image_size,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Architecture":
        return cls(d["name"], int(d["num_classes"]), int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]))


@dataclass
class Cell:
    """A built cell. ``reserve`` is the clean reserve (carved out before poisoning); ``poisoned``
    is the victim's training set with the ground truth only the evaluator reads."""

    spec: RunSpec
    salt: str
    bundle: DatasetBundle
    attack: object
    reserve: Split
    poisoned: PoisonedTrain
    triggered: TriggeredTest
    train_config: TrainConfig
    architecture: Architecture
    nodef_metrics: dict | None = None

    @property
    def seeds(self) -> Seeds:
        return Seeds(self.spec.seed, self.salt)

    @property
    def salt_id(self) -> str:
        return salt_id(self.salt)

    @property
    def n_train(self) -> int:
        """Images the victim trains on (the training subset minus the reserve)."""
        return len(self.poisoned.data)

    def new_model(self, tag: str = "model") -> torch.nn.Module:
        return self.architecture.build(self.seeds.seed("model-init", tag, self.spec.model))


def train_config_for(spec: RunSpec) -> TrainConfig:
    return build_params(TrainConfig, dict(spec.train), owner="train")


def load_bundle(spec: RunSpec, data_root=None, cache_dir=None) -> DatasetBundle:
    """The dataset at the spec's subset sizes, with its normalisation statistics."""
    bundle = load_dataset(spec.dataset, data_root, cache_dir, **spec.dataset_params)
    bundle = subset_bundle(bundle, spec.n_train, spec.n_test, seed=0)
    if "mean" not in bundle.info:
        x = bundle.train.x.float().div(255)
        bundle.info["mean"] = x.mean((0, 2, 3)).tolist()
        bundle.info["std"] = x.std((0, 2, 3)).clamp_min(1e-3).tolist()
    return bundle


def split_reserve(n_train: int, fraction: float, seeds: Seeds) -> tuple[torch.Tensor, torch.Tensor]:
    """``(reserve, rest)`` indices: a seeded reserve of ``floor(fraction * n)`` positions, in draw
    order (a smaller reserve is a prefix), and the remaining positions in their original order."""
    perm = torch.randperm(n_train, generator=seeds.generator("reserve"))
    k = reserve_size(n_train, fraction)
    return perm[:k], perm[k:].sort().values


_MEMO: dict[tuple, Cell] = {}


def build_cell(spec: RunSpec, data_root=None, cache_dir=None, salt: str | None = None) -> Cell:
    """Load, carve the reserve, poison (memoised per process: one cell at a time)."""
    salt = salt if salt is not None else default_salt(cache_dir)
    key = (spec.cell_id, salt)
    if key in _MEMO:
        return _MEMO[key]
    _MEMO.clear()  # one cell per process: they can be large
    seeds = Seeds(spec.seed, salt)
    bundle = load_bundle(spec, data_root, cache_dir)
    reserve_idx, victim_idx = split_reserve(len(bundle.train), spec.reserve_fraction, seeds)
    victim = bundle.train.subset(victim_idx)
    attack = ATTACKS.create(spec.attack, **spec.attack_params)
    attack.check(bundle.num_classes, victim.y, bundle.image_shape, spec.poison_ratio)
    info = bundle.info
    arch = Architecture(spec.model, bundle.num_classes, bundle.image_shape[-1],
                        tuple(info.get("mean", (0.5,) * 3)), tuple(info.get("std", (0.5,) * 3)))
    cfg = train_config_for(spec)
    ctx = AttackContext(bundle.num_classes, bundle.image_shape, seeds.generator("attack-prepare"),
                        train_config=cfg, budget=spec.budget,
                        cache_dir=str(Path(cache_dir or default_cache_dir()) / "attacks" / salt_id(salt)))
    ctx.model_factory = lambda: arch.build(seeds.seed("model-init", "attack-surrogate", spec.model))
    dev = engine.device()
    poisoned = attack.poison(victim, spec.poison_ratio, seeds.generator("poison"), ctx, dev)
    cell = Cell(spec, salt, bundle, attack, bundle.train.subset(reserve_idx), poisoned,
                attack.triggered_test(bundle.test, dev), cfg, arch)
    _MEMO[key] = cell
    return cell


def clear_memo() -> None:
    _MEMO.clear()


def default_salt(cache_dir=None) -> str:
    """The salt for runs started outside a results folder (tests, notebooks): ``$BENCH_SALT`` or
    the cache folder's own salt file."""
    from bench.protocol import folder_salt

    return folder_salt(Path(cache_dir or default_cache_dir()))


# -- the backdoored model -------------------------------------------------------------------------
def model_key(spec: RunSpec, salt: str) -> str:
    """The artifact key of a spec's backdoored model under a salt (clean cells share one model)."""
    return f"{spec.model_id}-{salt_id(salt)}"


def models_folder(cache_dir=None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "models"


def backdoored_model(cell: Cell, cache_dir=None) -> tuple[torch.nn.Module, dict]:
    """The cell's backdoored model (trained once, then loaded from the artifact cache), with its
    training cost and its no-defense metrics on this cell's test sets (evaluated per cell: the
    trigger differs between the clean cells that share a model)."""
    spec = cell.spec

    def train():
        model = cell.new_model()
        t0 = time.time()
        with engine.measure_cost(cell.n_train) as meter:
            engine.fit(model, cell.poisoned.data, cell.train_config, generator=cell.seeds.generator("train"),
                       # a clean cell's model is shared by every attack: no attacker's pipeline
                       transform=None if spec.is_clean else cell.attack.train_transform(),
                       desc=f"backdoor {spec.attack}")
        meta = {"wall_s": time.time() - t0, "epochs_equiv": meter.epochs_equiv, "phases": meter.phases}
        return {k: v.cpu() for k, v in model.state_dict().items()}, meta

    key = model_key(spec, cell.salt)
    state, meta, hit = artifacts.cached(models_folder(cache_dir), key, train)
    model = cell.new_model()
    model.load_state_dict(state)
    meta = dict(meta, cache_hit=hit, artifact=f"{key}.pt")
    if cell.nodef_metrics is None:
        cell.nodef_metrics = evaluate_model(model, cell.bundle.test, cell.triggered, cell.attack)
    meta["metrics"] = cell.nodef_metrics
    return model, meta


def wait_for_model(spec: RunSpec, cache_dir, salt: str) -> None:
    """Block while another process trains this spec's backdoored model."""
    artifacts.wait_for(models_folder(cache_dir), model_key(spec, salt))
