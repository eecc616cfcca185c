"""The outcome of a run: the returned model restored, the evaluation, the record.

Only here, after the defense's process has returned, are the test sets and the ground truth
looked at: :func:`restore_model` rebuilds the returned weights in the cell's architecture (a
model that does not fit is refused; a different class that fits is marked ``arch_ok = False``),
:func:`make_record` evaluates clean accuracy, ASR and robust accuracy (:mod:`bench.evaluate`),
detection against the poison mask (:mod:`bench.metrics`), and writes the fields that
:mod:`bench.record` defines; :func:`failed_record` is the record of a run that raised.
"""
from __future__ import annotations

import platform
import subprocess
import time
import traceback
from functools import lru_cache
from pathlib import Path

import torch

from bench import engine, metrics
from bench.cell import Cell
from bench.evaluate import evaluate_model
from bench.registry import params_to_dict
from bench.spec import RunSpec, plugin_code


class ArchitectureError(RuntimeError):
    """The defense returned a model that does not load into the cell's architecture."""


def restore_model(cell: Cell, weights: dict) -> tuple[torch.nn.Module, bool]:
    """``(model, arch_ok)``: the returned weights loaded strictly into a fresh model of the cell's
    architecture; ``arch_ok`` is False when the returned class was another one. Channel masks of
    the framework's pruning (:func:`bench.pruning.set_channel_mask`, ``*.channel_mask`` buffers)
    are part of the architecture a defense may return, and are put back first."""
    from bench.pruning import set_channel_mask

    model = cell.architecture.build()
    expected = f"{type(model).__module__}.{type(model).__qualname__}"
    try:
        for key, mask in weights["state"].items():
            if key.endswith(".channel_mask"):
                set_channel_mask(model.get_submodule(key[: -len(".channel_mask")]), mask)
        model.load_state_dict(weights["state"], strict=True)
    except (RuntimeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ArchitectureError(
            f"the defense returned a model that is not of the cell's architecture ({cell.spec.model}, "
            f"{expected}; got {weights.get('class')}): {str(exc).splitlines()[0]}") from exc
    return model, weights.get("class") == expected


@lru_cache(maxsize=1)
def _installation() -> dict:
    """What does not change within a process: library and code versions, host (git is slow)."""
    import numpy
    import timm
    import torchvision

    try:
        code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        code = "unknown"
    return {"versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "timm": timm.__version__,
                         "numpy": numpy.__version__},
            "code_version": code, "host": platform.node()}


def environment() -> dict:
    """Where and how this run computed: the installation, and the runtime as it is now (device,
    torch threads, compute dtype), which a worker may change between runs."""
    dev = engine.device()
    return {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else f"cpu ({platform.processor() or platform.machine()})",
            **_installation(), "threads": torch.get_num_threads(), "compute_dtype": engine.compute_dtype(dev)}


def _identity(spec: RunSpec) -> dict:
    return {"run_id": spec.run_id, "cell_id": spec.cell_id, "suite": spec.suite, "spec": spec.to_dict(),
            "dataset": spec.dataset, "model": spec.model, "attack": spec.attack,
            "poison_ratio": spec.poison_ratio, "defense": spec.defense, "seed": spec.seed,
            "budget_scale": spec.budget.scale, "budget_min_steps": spec.budget.min_steps,
            "miniature": spec.miniature,
            "plugin_code": {"attack": plugin_code("attack", spec.attack),
                            "defense": plugin_code("defense", spec.defense)}}


def make_record(spec: RunSpec, cell: Cell, run: dict, bd_meta: dict, *, isolation: str,
                t_start: float) -> tuple[dict, dict]:
    """Evaluate a finished defense run and return ``(record, diagnostics)``. ``run`` is the defense
    process's result (or, for ``none``, the backdoored model's), with ``model`` already restored."""
    nodef = bd_meta["metrics"]
    if spec.defense == "none":   # the no-defense row: the backdoor training is its cost
        result, cost, wall, phases = dict(nodef), bd_meta["epochs_equiv"], bd_meta["wall_s"], bd_meta.get("phases")
    else:
        result = evaluate_model(run["model"], cell.bundle.test, cell.triggered, cell.attack)
        cost, wall, phases = run["epochs_equiv"], run["wall_s"], run.get("phases")
    checkpoints = [{"tag": tag, **evaluate_model(m, cell.bundle.test, cell.triggered, cell.attack)}
                   for tag, m in run.get("checkpoints", [])]
    scores, flags = run.get("scores"), run.get("flags")
    det = metrics.detection_metrics(cell.poisoned.poison_mask, flags, scores) \
        if (flags is not None or scores is not None) else {}
    defense_params = run.get("defense_params", spec.defense_params)
    record = {
        **_identity(spec), "salt_id": cell.salt_id, "isolation": isolation if spec.defense != "none" else None,
        "target": getattr(cell.attack.params, "target", None),
        "attack_params": params_to_dict(cell.attack.params), "defense_params": defense_params,
        "oracle": {k: v for k, v in defense_params.items() if k.startswith("oracle_")},
        "acc": result["acc"], "asr": result["asr"], "ra": result["ra"],
        "acc_nodef": nodef["acc"], "asr_nodef": nodef["asr"],
        "der": metrics.der(result["acc"], result["asr"], nodef["acc"], nodef["asr"]),
        "tpr": det.get("tpr"), "fpr": det.get("fpr"), "precision": det.get("precision"),
        "auroc": det.get("auroc"), "flagged": det.get("flagged"), "arch_ok": run.get("arch_ok", True),
        "extra": {k: v for k, v in result.items() if k not in ("acc", "asr", "ra")},
        "defense_info": run.get("info", {}),
        "n_train": cell.n_train, "reserve_size": len(cell.reserve), "n_test": len(cell.bundle.test),
        "n_poison": cell.poisoned.info["n_poison"], "n_cover": cell.poisoned.info["n_cover"],
        "trigger": cell.poisoned.info.get("trigger", ""), "data_fingerprint": cell.bundle.fingerprint,
        "backdoor_artifact": bd_meta["artifact"], "backdoor_cache_hit": bd_meta["cache_hit"],
        "defense_artifact": run.get("artifact"), "defense_cache_hit": run.get("cache_hit", False),
        "wall_s": wall, "epochs_equiv": cost, "phases": phases, "total_wall_s": time.time() - t_start,
        "defense_cpu_s": None if run.get("cache_hit") else run.get("cpu_s"),
        "trainings": cost / max(1e-9, cell.train_config.epochs),
        **environment(), "status": "ok", "error": None,
    }
    diagnostics = {"logs": run.get("logs", {}), "sample_logs": run.get("sample_logs", {}),
                   "checkpoints": checkpoints, "scores": None if scores is None else scores.float(),
                   "flags": None if flags is None else flags.bool(),
                   "poison_mask": cell.poisoned.poison_mask, "cover_mask": cell.poisoned.cover_mask}
    return record, diagnostics


def failed_record(spec: RunSpec, exc: BaseException, wall_s: float) -> dict:
    tb = getattr(exc, "remote_traceback", "") or "".join(traceback.format_exception(exc))
    error_type = getattr(exc, "remote_type", None) or type(exc).__name__
    return {**_identity(spec), "status": "failed", "error": f"{error_type}: {exc}",
            "arch_ok": False if isinstance(exc, ArchitectureError) else None,
            "traceback": tb[-4000:], "wall_s": wall_s, **environment()}
