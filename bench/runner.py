"""Execute one run spec: build the cell, run the defense in its own process, evaluate, record.

This is the unit the scheduler dispatches, in three steps, each owned by a module:

1. :mod:`bench.cell`: the cell's data, its clean reserve (carved out before poisoning), the
   poisoned training set, the triggered test set, and the backdoored model (artifact cache);
2. :mod:`bench.inputs` and :mod:`bench.isolation`: the defense runs in a separate process that is
   handed exactly its declared inputs, as copies; nothing of the cell is reachable from there;
3. :mod:`bench.outcome`: after the defense has returned, its model is restored in the cell's
   architecture and evaluated, and the record is made (:mod:`bench.record` defines its fields).

A defense's output on a clean cell (ratio 0) does not depend on the attack, so it is computed once
per (clean model, defense, params, budget, salt) and reused by every attack's clean cell
(:func:`clean_defense_id`, in the artifact cache's ``defended/`` folder).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from bench import artifacts, engine
from bench.cell import Cell, backdoored_model, build_cell
from bench.datasets import default_cache_dir
from bench.defense import DefenseConfigError, hands_model
from bench.inputs import build_context, cell_info, defense_inputs  # noqa: F401 - build_context: plug-in tests
from bench.isolation import run_isolated
from bench.outcome import failed_record, make_record, restore_model  # noqa: F401 - failed_record: dispatch
from bench.registry import DEFENSES
from bench.spec import RunSpec, stable_hash


def clean_defense_id(spec: RunSpec, salt_id: str = "") -> str:
    """Names a defense's output on a clean cell: there the defense is handed the same things
    whatever the attack (the unpoisoned training set, the shared clean model, the same reserve
    and seeds), so its output is computed once and each attack's clean cell only evaluates it."""
    d = spec.hashed()
    return stable_hash({"model": spec.model_id, "salt": salt_id, **{k: d[k] for k in RunSpec._DEFENSE_FIELDS},
                        "code": d["code"]["defense"]})


def _defense_request(spec: RunSpec, cell: Cell) -> dict:
    entry = DEFENSES.get(spec.defense)
    rt = engine.runtime()
    info = cell_info(cell)
    module = getattr(entry.obj, "__module__", None)
    if module == "__main__":
        raise DefenseConfigError(
            f"defense '{spec.defense}' is defined in __main__; a defense runs in a process of its own, "
            f"which imports the module that defines it: move it into a module file on the Python path")
    return {"defense": {"name": spec.defense, "params": dict(spec.defense_params), "module": module},
            "sys_path": [p for p in sys.path if p],
            "cell": {"num_classes": info.num_classes, "image_shape": list(info.image_shape),
                     "n_train": info.n_train, "model_name": info.model_name,
                     "reserve_fraction": info.reserve_fraction, "reserve_size": info.reserve_size},
            "runtime": {"device": str(engine.device()), "amp": rt.amp, "cpu_amp": rt.cpu_amp,
                        "channels_last": rt.channels_last,
                        "compile": rt.compile, "progress": rt.progress, "threads": torch.get_num_threads()}}


def run_defense(spec: RunSpec, cell: Cell, cache_dir=None, isolation: str = "process",
                hide: tuple[str, ...] = ()) -> tuple[dict, dict | None]:
    """The defense's result (data from its process: weights, scores, logs, cost) and, if the
    backdoored model was needed, its metadata. Clean cells reuse a cached output. A train-stage
    defense that starts from the backdoored model is charged its training (:func:`charge_victim`)."""
    bd: dict = {}

    def provide(declaration: dict) -> dict:
        model = None
        if hands_model(declaration):
            model, bd["meta"] = backdoored_model(cell, cache_dir)
            bd["starts_from_victim"] = declaration.get("stage") == "train"
        return defense_inputs(cell, spec, declaration, model)

    def compute():
        res = run_isolated(_defense_request(spec, cell), provide, mode=isolation, hide=hide)
        if bd.get("starts_from_victim"):
            res = charge_victim(res, bd["meta"])
        return res, {"wall_s": res["wall_s"], "epochs_equiv": res["epochs_equiv"], "defense": spec.defense}

    if not spec.is_clean:
        return compute()[0], bd.get("meta")
    key = clean_defense_id(spec, cell.salt_id)
    res, _, hit = artifacts.cached(Path(cache_dir or default_cache_dir()) / "defended", key, compute)
    return dict(res, artifact=f"{key}.pt", cache_hit=hit), bd.get("meta")


def charge_victim(res: dict, bd_meta: dict) -> dict:
    """A train-stage defense's result charged with the standard training it started from (the
    cell's backdoored model): its passes, its wall time, and its phases first, each marked
    ``"charged"`` (what the defense would have trained itself; done once per cell instead)."""
    charged = [{**ph, "phase": f"{ph['phase']} (charged: the cell's backdoored model)", "charged": True}
               for ph in bd_meta.get("phases") or []]
    return {**res, "epochs_equiv": res["epochs_equiv"] + bd_meta["epochs_equiv"],
            "wall_s": res["wall_s"] + bd_meta["wall_s"], "phases": charged + list(res.get("phases") or [])}


def _private_folders(data_root, cache_dir) -> list[str]:
    """Folders a defense process must not be pointed to (hidden in its environment, and under
    tmpfs with ``isolation="namespace"``)."""
    from bench.datasets import default_data_root

    return [str(Path(p).resolve()) for p in (data_root or default_data_root(), cache_dir or default_cache_dir())]


def execute(spec: RunSpec, data_root=None, cache_dir=None, *, salt: str | None = None,
            isolation: str = "process", hide: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """Run one spec. Returns (record, diagnostics). Raises on failure (the scheduler records it)."""
    t_start = time.time()
    cell = build_cell(spec, data_root, cache_dir, salt)
    hide = tuple(dict.fromkeys([*hide, *_private_folders(data_root, cache_dir)]))
    if spec.defense == "none":
        model, bd_meta = backdoored_model(cell, cache_dir)
        return make_record(spec, cell, {"model": model}, bd_meta, isolation=isolation, t_start=t_start)
    run, bd_meta = run_defense(spec, cell, cache_dir, isolation, hide)
    run = dict(run)
    run["model"], run["arch_ok"] = restore_model(cell, run["model"])
    run["checkpoints"] = [(c["tag"], restore_model(cell, c)[0]) for c in run.get("checkpoints", [])]
    if bd_meta is None:   # a training-time defense: the cell's no-defense numbers, fetched now
        _, bd_meta = backdoored_model(cell, cache_dir)
    return make_record(spec, cell, run, bd_meta, isolation=isolation, t_start=t_start)
