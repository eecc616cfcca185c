"""The run record: its fields, its JSON form and the tidy table's columns.

A record is one JSON object per run (``results/records/<run_id>.json``), the truth every report
is rebuilt from. This module owns what a record holds (:data:`REQUIRED_FIELDS`, the tidy
:data:`COLUMNS` and their types), how it is written (:func:`dumps_record`: sorted keys, NaN and
infinities as ``null``, tensors as lists) and how it becomes one tidy row (:func:`flatten`). The
store reads and writes records through it; the reports read the tidy columns it names.

Fields of an ``ok`` record, by group:

* identity: ``run_id``, ``cell_id``, ``suite``, ``spec`` (the whole run spec), the axes lifted from
  it (dataset, model, attack, poison_ratio, target, defense, seed), ``salt_id`` (fingerprint of
  the results folder's secret salt: records of one folder share it);
* metrics (fractions): ``acc``, ``asr``, ``ra``, ``acc_nodef``, ``asr_nodef``, ``der``, detection
  ``tpr``/``fpr``/``precision``/``auroc``/``flagged``, attack extras in ``extra``;
* protocol and audit: ``arch_ok`` (the returned model loaded into the cell's architecture),
  ``isolation`` (how the defense process was isolated), ``oracle`` (oracle parameters used);
* data: ``n_train`` (images the victim trained on), ``reserve_size`` (clean reserve carved out
  before poisoning), ``n_test``, ``n_poison``, ``n_cover``, ``data_fingerprint``;
* cost: ``wall_s`` and ``epochs_equiv`` of the defense (of the backdoor training for ``none``),
  ``trainings``, ``phases`` (each training phase's optimiser steps and epochs), ``total_wall_s``,
  ``cpu_s`` (CPU seconds of the whole run: the evaluator's and its defense process's, the latter
  also alone as ``defense_cpu_s``); the budget (``budget_scale``, ``budget_min_steps``);
* ``miniature``: true for a run of ``run --miniature`` (shrunken sizes, possibly generated stand-in
  data: its numbers measure nothing; the flag is part of the spec, so its run id is its own);
* provenance: artifacts and cache hits, device, ``compute_dtype`` (``bf16`` under bfloat16 autocast:
  CUDA by default, the CPU with ``run --cpu-bf16``; else ``fp32``), host, library and code versions, plug-in code
  hashes (``plugin_code``), timestamps, ``status`` and ``error``.
"""
from __future__ import annotations

import json
import math

REQUIRED_FIELDS = ("run_id", "spec", "status", "dataset", "model", "attack", "defense", "seed")

COLUMNS = ["run_id", "suite", "dataset", "model", "attack", "poison_ratio", "target", "defense", "seed",
           "acc", "asr", "ra", "acc_nodef", "asr_nodef", "der", "tpr", "fpr", "precision", "auroc",
           "flagged", "arch_ok", "wall_s", "epochs_equiv", "trainings", "total_wall_s", "cpu_s", "defense_cpu_s",
           "status", "error", "attack_params", "defense_params", "dataset_params", "train", "budget_scale",
           "budget_min_steps", "miniature", "reserve_fraction", "n_train", "reserve_size", "n_test", "n_poison",
           "n_cover", "oracle", "cell_id", "salt_id", "isolation", "backdoor_artifact",
           "backdoor_cache_hit", "defense_artifact", "defense_cache_hit", "data_fingerprint", "device",
           "compute_dtype", "host", "code_version", "plugin_code", "versions", "started_at", "finished_at", "phases",
           "extra", "defense_info"]
FLOAT_COLUMNS = ("poison_ratio", "acc", "asr", "ra", "acc_nodef", "asr_nodef", "der", "tpr", "fpr",
                 "precision", "auroc", "wall_s", "epochs_equiv", "trainings", "total_wall_s", "cpu_s", "defense_cpu_s",
                 "budget_scale", "reserve_fraction", "started_at", "finished_at")
INT_COLUMNS = ("seed", "target", "n_train", "reserve_size", "n_test", "n_poison", "n_cover", "flagged",
               "budget_min_steps")
JSON_COLUMNS = ("attack_params", "defense_params", "dataset_params", "train", "oracle", "versions",
                "extra", "defense_info", "phases", "plugin_code")
_FROM_SPEC = ("suite", "dataset", "model", "attack", "poison_ratio", "defense", "seed", "dataset_params",
              "train", "reserve_fraction", "attack_params", "defense_params", "n_train", "n_test")


def spec_budget(spec: dict) -> dict:
    """The budget of a spec dict (``{"scale", "min_steps"}``), also for records written before the
    budget became one object (``budget_scale``)."""
    budget = spec.get("budget")
    if isinstance(budget, dict):
        return {"scale": budget.get("scale", 1.0), "min_steps": budget.get("min_steps", 0)}
    return {"scale": spec.get("budget_scale", 1.0), "min_steps": 0}


def json_default(o):
    import torch

    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


def _finite(v):
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def dumps_record(record: dict) -> str:
    """The record's JSON text (sorted keys; NaN/inf as null; tensors as lists)."""
    return json.dumps(_finite(record), indent=1, sort_keys=True, default=json_default)


def flatten(rec: dict) -> dict:
    """One tidy row from a record: spec fields lifted, nested values as JSON strings."""
    spec = rec.get("spec") or {}
    row = {c: rec.get(c) for c in COLUMNS}
    for k in _FROM_SPEC:
        if row.get(k) in (None, "") and k in spec:
            row[k] = spec[k]
    budget = spec_budget(spec)
    if row.get("budget_scale") is None:
        row["budget_scale"] = budget["scale"]
    if row.get("budget_min_steps") is None:
        row["budget_min_steps"] = budget["min_steps"]
    row["miniature"] = bool(rec.get("miniature", spec.get("miniature", False)))
    if row.get("target") is None:
        row["target"] = (spec.get("attack_params") or {}).get("target")
    for k in JSON_COLUMNS:
        v = row.get(k)
        row[k] = None if v is None else json.dumps(v, sort_keys=True, default=str)
    return row
