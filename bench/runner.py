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

import copy
import dataclasses
import json
import math
import platform
import subprocess
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
from bench.spec import RunSpec, derive_seed, stable_hash
from bench.store import atomic_torch_save, exclusive_lock


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


# -- artifact cache (locks and atomic writes are the store's) --------------------------------------
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
    with exclusive_lock(cache / f"{spec.model_id}.lock"):
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
                           # a clean cell's model is shared by every attack: no attacker's pipeline
                           transform=cell.attack.train_transform() if spec.poison_ratio > 0 else None,
                           desc=f"backdoor {spec.attack}")
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


def build_context(defense, cell: Cell, model: torch.nn.Module | None, checkpoint_cb=None,
                  spec: RunSpec | None = None) -> DefenseContext:
    """The defense's context for the run ``spec``, holding exactly what its class declares.

    The defense fields (defense, budget, reserve fraction) come from the run's ``spec``; runs
    always pass it, since a memoised cell serves every defense of the cell and ``cell.spec`` (the
    default, for tests that build a cell for one defense) is whichever run built it: a run's
    numbers must not depend on what ran before it in the process."""
    spec = spec or cell.spec
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


# -- running a defense (and reusing its output on clean cells) ------------------------------------
@dataclass
class DefenseRun:
    """What a defense produced, with its measured cost. ``checkpoints`` are the intermediate models
    it asked the evaluator to measure; ``artifact``/``cache_hit`` say whether the output was reused."""

    output: DefenseOutput
    logs: dict
    sample_logs: dict
    checkpoints: list
    epochs_equiv: float
    wall_s: float
    artifact: str | None = None
    cache_hit: bool = False


def clean_defense_id(spec: RunSpec) -> str:
    """Names a defense's output on a clean cell (ratio 0). There the defense is handed the same
    things whatever the attack (the unpoisoned training set, the shared clean model, the same
    reserve and seeds), so its output is computed once per (clean model, defense, params, budget)
    and every attack's clean cell only evaluates it against its own trigger."""
    return stable_hash({"model": spec.model_id, **{k: spec.hashed()[k] for k in RunSpec._DEFENSE_FIELDS}})


def _execute_defense(spec: RunSpec, defense, cell: Cell, bd_model) -> DefenseRun:
    snapshots: list = []
    ctx = build_context(defense, cell, bd_model, lambda tag, m: snapshots.append((tag, copy.deepcopy(m).cpu())),
                        spec=spec)
    t0 = time.time()
    with engine.measure_cost(len(cell.poisoned.data)) as meter:
        out: DefenseOutput = defense.run(ctx)
    return DefenseRun(out, ctx.logs, ctx.sample_logs, snapshots, meter.epochs_equiv, time.time() - t0)


def run_defense(spec: RunSpec, defense, cell: Cell, bd_model, cache_dir=None) -> DefenseRun:
    """Run the defense on the cell; on a clean cell, reuse (or store) its output in the artifact
    cache under :func:`clean_defense_id`, so A attacks' clean cells cost one defense run, not A.
    The reused record reports the cost measured when the output was computed. (``spec`` is the
    run's own: ``cell.spec`` is the spec that built the memoised cell, of any defense.)"""
    if spec.poison_ratio != 0 or spec.defense == "none":
        return _execute_defense(spec, defense, cell, bd_model)
    key = clean_defense_id(spec)
    folder = Path(cache_dir or default_cache_dir()) / "defended"
    path = folder / f"{key}.pt"
    with exclusive_lock(folder / f"{key}.lock"):
        if path.exists():
            try:
                blob = torch.load(path, weights_only=False)
                run = DefenseRun(**blob)   # the evaluator moves the model to its device
                run.artifact, run.cache_hit = path.name, True
                return run
            except Exception:
                path.unlink(missing_ok=True)
        run = _execute_defense(spec, defense, cell, bd_model)
        run.output.model.cpu()   # a device-independent artifact; the evaluator moves it back
        try:
            atomic_torch_save({f.name: getattr(run, f.name) for f in dataclasses.fields(run)}, path)
            run.artifact = path.name
        except Exception:   # an output that cannot be pickled is simply not reused
            path.unlink(missing_ok=True)
        return run


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
    run = run_defense(spec, defense, cell, bd_model, cache_dir)
    out, cost, wall = run.output, run.epochs_equiv, run.wall_s
    # the evaluator measures the intermediate models only now, after the defense has returned
    # (so test-set evaluations neither reach the defense nor count in its wall time)
    checkpoints = [{"tag": tag, **evaluate_model(m, cell.bundle.test, cell.triggered, cell.attack)}
                   for tag, m in run.checkpoints]
    if bd_meta is None:
        _, bd_meta = backdoored_model(cell, cache_dir)
    nodef = bd_meta["metrics"]
    if spec.defense == "none":  # the no-defense row: the backdoor training is its cost
        result, cost, wall = dict(nodef), bd_meta["epochs_equiv"], bd_meta["wall_s"]
    else:
        result = evaluate_model(out.model, cell.bundle.test, cell.triggered, cell.attack)
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
        "defense_artifact": run.artifact, "defense_cache_hit": run.cache_hit,
        "wall_s": wall, "epochs_equiv": cost, "total_wall_s": time.time() - t_start,
        "trainings": cost / max(1e-9, cell.train_config.epochs),
        **environment(), "status": "ok", "error": None,
    }
    diagnostics = {"logs": run.logs, "sample_logs": run.sample_logs, "checkpoints": checkpoints,
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
