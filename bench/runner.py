"""Execute one run spec: build the cell, get its backdoored model, run the defense, evaluate.

This is the unit the scheduler dispatches. It enforces the fair protocol by construction: the
defense context is built from the defense's declaration (:func:`build_context`), the defense runs
under a cost meter, and only afterwards does the evaluator look at the test sets and the ground
truth.

Backdoored models live in a content-addressed artifact cache (``<cache>/models/<cell_id>.pt``),
written atomically under a file lock, so every repair defense of a cell (in any process, on any
machine sharing the folder) reuses one training.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import math
import os
import platform
import subprocess
import tempfile
import time
import traceback
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from bench import engine, metrics
from bench.attack import AttackContext, PoisonedTrain, TriggeredTest
from bench.data import DatasetBundle, subset_bundle
from bench.datasets import default_cache_dir, load_dataset
from bench.defense import Budget, CellInfo, DefenseContext, DefenseOutput, private_copy
from bench.engine import TrainConfig
from bench.evaluate import evaluate_model
from bench.models import create_model
from bench.registry import ATTACKS, DEFENSES, build_params, params_to_dict
from bench.spec import RunSpec, derive_seed


def generator(seed: int, *tags) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *tags))


# -- cells ----------------------------------------------------------------------------------------
@dataclass
class Cell:
    """A (dataset, model, attack, ratio, seed) cell: data, poisoned set, triggered test set."""

    spec: RunSpec
    bundle: DatasetBundle
    attack: object
    poisoned: PoisonedTrain
    triggered: TriggeredTest
    train_config: TrainConfig
    nodef_metrics: dict | None = None

    def new_model(self, tag: str = "model") -> torch.nn.Module:
        torch.manual_seed(derive_seed(self.spec.seed, tag, self.spec.model))
        info = self.bundle.info
        return create_model(self.spec.model, self.bundle.num_classes, self.bundle.image_shape[-1],
                            info.get("mean", (0.5,) * 3), info.get("std", (0.5,) * 3))


def train_config_for(spec: RunSpec) -> TrainConfig:
    return build_params(TrainConfig, dict(spec.train), owner="train")


def load_bundle(spec: RunSpec, data_root=None, cache_dir=None) -> DatasetBundle:
    bundle = load_dataset(spec.dataset, data_root, cache_dir, **spec.dataset_params)
    bundle = subset_bundle(bundle, spec.n_train, spec.n_test, seed=0)
    if "mean" not in bundle.info:
        x = bundle.train.x.float().div(255)
        bundle.info["mean"] = x.mean((0, 2, 3)).tolist()
        bundle.info["std"] = x.std((0, 2, 3)).clamp_min(1e-3).tolist()
    return bundle


_CELL_MEMO: dict[str, Cell] = {}


def build_cell(spec: RunSpec, data_root=None, cache_dir=None) -> Cell:
    """Load data, poison it and build the triggered test set (memoised per process)."""
    key = spec.cell_id
    if key in _CELL_MEMO:
        return _CELL_MEMO[key]
    bundle = load_bundle(spec, data_root, cache_dir)
    attack = ATTACKS.create(spec.attack, **spec.attack_params)
    attack.check(bundle.num_classes, bundle.train.y, bundle.image_shape, spec.poison_ratio)
    cfg = train_config_for(spec)
    ctx = AttackContext(bundle.num_classes, bundle.image_shape, generator(spec.seed, "attack-prepare"),
                        train_config=cfg, budget_scale=spec.budget_scale,
                        cache_dir=str(Path(cache_dir or default_cache_dir()) / "attacks"))
    cell = Cell(spec, bundle, attack, None, None, cfg)  # type: ignore[arg-type]
    ctx.model_factory = lambda: cell.new_model("attack-surrogate")
    dev = engine.device()
    cell.poisoned = attack.poison(bundle.train, spec.poison_ratio, generator(spec.seed, "poison"), ctx, dev)
    cell.triggered = attack.triggered_test(bundle.test, dev)
    _CELL_MEMO.clear()  # keep one cell per process: they can be large
    _CELL_MEMO[key] = cell
    return cell


# -- artifact cache -------------------------------------------------------------------------------
@contextlib.contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def backdoored_model(cell: Cell, cache_dir=None) -> tuple[torch.nn.Module, dict]:
    """The cell's backdoored model (trained once, then loaded from the artifact cache), with its
    training cost and its no-defense metrics on this cell's test sets.

    The cache is keyed by ``spec.model_id``: clean cells (ratio 0) of different attacks share
    one model. The no-defense metrics depend on the cell's trigger, so they are evaluated per
    cell (memoised in the process)."""
    spec = cell.spec
    cache = Path(cache_dir or default_cache_dir()) / "models"
    path = cache / f"{spec.model_id}.pt"
    model = None
    with file_lock(cache / f"{spec.model_id}.lock"):
        if path.exists():
            try:
                blob = torch.load(path, weights_only=False)
                model = cell.new_model()
                model.load_state_dict(blob["state_dict"])
                meta = dict(blob["meta"], cache_hit=True)
            except Exception:
                path.unlink(missing_ok=True)
                model = None
        if model is None:
            model = cell.new_model()
            t0 = time.time()
            with engine.measure_cost(len(cell.poisoned.data)) as meter:
                engine.fit(model, cell.poisoned.data, cell.train_config, generator=generator(spec.seed, "train"),
                           transform=cell.attack.train_transform(), desc=f"backdoor {spec.attack}")
            meta = {"wall_s": time.time() - t0, "epochs_equiv": meter.epochs_equiv, "model_id": spec.model_id,
                    "cell": spec.cell}
            model.cpu()
            atomic_torch_save({"state_dict": model.state_dict(), "meta": meta}, path)
            meta = dict(meta, cache_hit=False)
    meta["artifact"] = path.name
    if cell.nodef_metrics is None:
        cell.nodef_metrics = evaluate_model(model, cell.bundle.test, cell.triggered, cell.attack)
    meta["metrics"] = cell.nodef_metrics
    return model, meta


# -- the defense context --------------------------------------------------------------------------
def reserve_indices(n_train: int, fraction: float, seed: int) -> torch.Tensor:
    """Seeded clean-reserve indices; smaller reserves are prefixes of larger ones."""
    k = math.floor(fraction * n_train)
    return torch.randperm(n_train, generator=generator(seed, "reserve"))[:k].sort().values


def build_context(defense, cell: Cell, model: torch.nn.Module | None,
                  checkpoint_cb=None) -> DefenseContext:
    """The defense's context, holding exactly what its class declares."""
    spec = cell.spec
    decl = defense.declaration()
    reserve = None
    if decl["needs_reserve"]:
        idx = reserve_indices(len(cell.bundle.train), defense.reserve_fraction(spec.reserve_fraction), spec.seed)
        reserve = cell.bundle.train.subset(idx)   # clean versions, true labels
        if not decl["reserve_labels"]:
            reserve = reserve.unlabeled()
    train = cell.poisoned.data if decl["needs_train"] else None
    return DefenseContext(
        defense, num_classes=cell.bundle.num_classes, image_shape=cell.bundle.image_shape,
        budget=Budget(spec.budget_scale), generator=generator(spec.seed, "defense", spec.defense),
        train_config=cell.train_config, seed=derive_seed(spec.seed, "defense-seed"),
        model_factory=lambda: cell.new_model("defense-model"), train=train,
        model=private_copy(model) if (decl["stage"] == "repair" and model is not None) else None,
        reserve=reserve, checkpoint_cb=checkpoint_cb)


# -- one run --------------------------------------------------------------------------------------
def validate_spec(spec: RunSpec, bundle: DatasetBundle | None = None) -> None:
    """Check names and parameters without training (raises with a specific message)."""
    ATTACKS.create(spec.attack, **spec.attack_params)
    defense = DEFENSES.create(spec.defense, **spec.defense_params)
    train_config_for(spec)
    if bundle is not None:
        attack = ATTACKS.create(spec.attack, **spec.attack_params)
        attack.check(bundle.num_classes, bundle.train.y, bundle.image_shape, spec.poison_ratio)
        defense.check(CellInfo(bundle.num_classes, bundle.image_shape, len(bundle.train), spec.model,
                               spec.reserve_fraction))


@lru_cache(maxsize=1)
def environment() -> dict:
    import numpy
    import timm
    import torchvision

    try:
        code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or "unknown"
    except Exception:
        code = "unknown"
    dev = engine.device()
    return {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "timm": timm.__version__,
                         "numpy": numpy.__version__},
            "code_version": code, "host": platform.node()}


def execute(spec: RunSpec, data_root=None, cache_dir=None) -> tuple[dict, dict]:
    """Run one spec. Returns (record, diagnostics). Raises on failure (the scheduler records it)."""
    t_start = time.time()
    cell = build_cell(spec, data_root, cache_dir)
    defense = DEFENSES.create(spec.defense, **spec.defense_params)
    defense.check(CellInfo(cell.bundle.num_classes, cell.bundle.image_shape, len(cell.bundle.train),
                           spec.model, spec.reserve_fraction))
    # A training-time defense does not use the backdoored model: it runs first and the cell's
    # no-defense numbers are fetched afterwards (the scheduler runs it beside the backdoor job).
    train_stage = defense.declaration()["stage"] == "train"
    bd_model, bd_meta = (None, None) if train_stage else backdoored_model(cell, cache_dir)
    checkpoints: list[dict] = []

    def checkpoint_cb(tag: str, model: torch.nn.Module) -> None:
        m = copy.deepcopy(model)
        checkpoints.append({"tag": tag, **evaluate_model(m, cell.bundle.test, cell.triggered, cell.attack)})

    ctx = build_context(defense, cell, bd_model, checkpoint_cb)
    t0 = time.time()
    with engine.measure_cost(len(cell.poisoned.data)) as meter:
        out: DefenseOutput = defense.run(ctx)
    defense_wall = time.time() - t0
    if bd_meta is None:
        _, bd_meta = backdoored_model(cell, cache_dir)
    nodef = bd_meta["metrics"]
    if spec.defense == "none":  # the no-defense row: the backdoor training is its cost
        result, cost, wall = dict(nodef), bd_meta["epochs_equiv"], bd_meta["wall_s"]
    else:
        result = evaluate_model(out.model, cell.bundle.test, cell.triggered, cell.attack)
        cost, wall = meter.epochs_equiv, defense_wall
    det = metrics.detection_metrics(cell.poisoned.poison_mask, out.flags, out.scores) \
        if (out.flags is not None or out.scores is not None) else {}
    record = {
        "run_id": spec.run_id, "cell_id": spec.cell_id, "suite": spec.suite, "spec": spec.to_dict(),
        "dataset": spec.dataset, "model": spec.model, "attack": spec.attack,
        "poison_ratio": spec.poison_ratio, "target": getattr(cell.attack.params, "target", None),
        "defense": spec.defense, "seed": spec.seed,
        "attack_params": params_to_dict(cell.attack.params), "defense_params": params_to_dict(defense.params),
        "oracle": {k: v for k, v in params_to_dict(defense.params).items() if k.startswith("oracle_")},
        "acc": result["acc"], "asr": result["asr"], "ra": result["ra"],
        "acc_nodef": nodef["acc"], "asr_nodef": nodef["asr"],
        "der": metrics.der(result["acc"], result["asr"], nodef["acc"], nodef["asr"]),
        "tpr": det.get("tpr"), "fpr": det.get("fpr"), "precision": det.get("precision"),
        "auroc": det.get("auroc"), "flagged": det.get("flagged"),
        "extra": {k: v for k, v in result.items() if k not in ("acc", "asr", "ra")},
        "defense_info": out.info,
        "n_train": len(cell.bundle.train), "n_test": len(cell.bundle.test),
        "n_poison": cell.poisoned.info["n_poison"], "n_cover": cell.poisoned.info["n_cover"],
        "trigger": cell.poisoned.info.get("trigger", ""),
        "data_fingerprint": cell.bundle.fingerprint,
        "backdoor_artifact": bd_meta["artifact"], "backdoor_cache_hit": bd_meta["cache_hit"],
        "wall_s": wall, "epochs_equiv": cost, "total_wall_s": time.time() - t_start,
        "trainings": cost / max(1e-9, cell.train_config.epochs),
        **environment(), "status": "ok", "error": None,
    }
    diagnostics = {"logs": ctx.logs, "sample_logs": ctx.sample_logs, "checkpoints": checkpoints,
                   "scores": None if out.scores is None else out.scores.detach().float().cpu(),
                   "flags": None if out.flags is None else out.flags.detach().bool().cpu(),
                   "poison_mask": cell.poisoned.poison_mask, "cover_mask": cell.poisoned.cover_mask}
    return record, diagnostics


def failed_record(spec: RunSpec, exc: BaseException, wall_s: float) -> dict:
    return {"run_id": spec.run_id, "cell_id": spec.cell_id, "suite": spec.suite, "spec": spec.to_dict(),
            "dataset": spec.dataset, "model": spec.model, "attack": spec.attack,
            "poison_ratio": spec.poison_ratio, "defense": spec.defense, "seed": spec.seed,
            "status": "failed", "error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(exc))[-4000:], "wall_s": wall_s,
            **environment()}


def json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


def dumps_record(record: dict) -> str:
    def clean(v):
        if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(record), indent=1, sort_keys=True, default=json_default)
