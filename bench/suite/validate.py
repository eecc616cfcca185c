"""Checking an expanded grid before the first job starts, and listing every problem at once.

:func:`validate` runs, without training anything:

1. names and parameters: every distinct attack, defense and dataset is built once through its
   registry (unknown names with suggestions, parameters its params dataclass refuses), the
   standard recipe (``[train]``/``[budget]``) once per distinct value, every model name looked up;
2. numbers: poison ratios in [0, 1) and reserve fractions in [0, 1) (the budget is checked when
   the run spec is built, the suite's ``[budget]`` table when it is parsed);
3. data: every distinct dataset (and subset) is loaded once, so that missing or corrupt files are
   named before compute;
4. cells: each attack's and each defense's own check on each cell it will run on (a clean-label
   ratio above what the target class holds, a reserve too small for a defense, ...).

Validation writes nothing: datasets are decoded in memory when their cache entry is missing
(``load_dataset(write_cache=False)``), so a refused suite leaves the results and cache folders as
they were. A plug-in is only ever called after its registry has accepted the name: ``create``
resolves the name (refusing objects that are not of the registry's kind) before building anything.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from bench.registry import ATTACKS, DATASETS, DEFENSES, MODELS, ParamsError, Registry, UnknownNameError
from bench.spec import RunSpec


def _fmt(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, (UnknownNameError, ParamsError)) else f"{type(exc).__name__}: {exc}"


def _key(name: str, params: dict) -> tuple[str, str]:
    """A hashable identity of a plug-in name with its parameters."""
    return name, json.dumps(params, sort_keys=True, default=str)


def _dataset_key(s: RunSpec) -> tuple:
    return (*_key(s.dataset, s.dataset_params), s.n_train, s.n_test)


def _distinct(specs: list[RunSpec], key) -> dict:
    """The first spec of each distinct ``key(spec)``, in the specs' order."""
    out: dict = {}
    for s in specs:
        out.setdefault(key(s), s)
    return out


@dataclass
class _Checks:
    """The problems found so far and what was built for the cell checks."""

    problems: list[str] = field(default_factory=list)
    attacks: dict[tuple, Any] = field(default_factory=dict)    # (name, params) -> attack or None
    defenses: dict[tuple, Any] = field(default_factory=dict)   # (name, params) -> defense or None
    bundles: dict[tuple, Any] = field(default_factory=dict)    # dataset key -> loaded bundle

    def note(self, msg: str) -> None:
        self.problems.append(msg)


def validate(specs: list[RunSpec], data_root=None, cache_dir=None, check_data: bool = True) -> list[str]:
    """Every problem of an expanded grid, without training: unknown names (with suggestions), bad
    parameters, ratios, missing data, and each attack's and defense's check on each cell.

    Data are loaded once per dataset/subset to check the labels the attacks need (from the
    decoded-tensor cache when present; nothing is written there)."""
    checks = _Checks()
    _build_plugins(specs, ATTACKS, "attack", checks.attacks, checks)
    _build_plugins(specs, DEFENSES, "defense", checks.defenses, checks)
    _check_recipes(specs, checks)
    _check_models(specs, checks)
    _check_numbers(specs, checks)
    _load_datasets(specs, data_root, cache_dir, check_data, checks)
    _check_cells(specs, checks)
    return list(dict.fromkeys(checks.problems))


# -- names and parameters -------------------------------------------------------------------------
def _build_plugins(specs: list[RunSpec], reg: Registry, kind: str, built: dict, checks: _Checks) -> None:
    """Build each distinct (name, params) once; a refusal is a problem and leaves None."""
    for key, s in _distinct(specs, lambda s: _key(getattr(s, kind), getattr(s, f"{kind}_params"))).items():
        name, params = getattr(s, kind), getattr(s, f"{kind}_params")
        try:
            built[key] = reg.create(name, **params)  # resolves (and kind-checks) the name first
        except Exception as exc:  # noqa: BLE001 - every problem is collected
            built[key] = None
            checks.note(f"{kind} {name}: {_fmt(exc)}")


def _check_recipes(specs: list[RunSpec], checks: _Checks) -> None:
    from bench.engine import TrainConfig
    from bench.registry import build_params

    for s in _distinct(specs, lambda s: json.dumps(s.train, sort_keys=True, default=str)).values():
        try:
            build_params(TrainConfig, dict(s.train), owner="train")
        except Exception as exc:  # noqa: BLE001
            checks.note(f"[train]/[budget]: {_fmt(exc)}")


def _check_models(specs: list[RunSpec], checks: _Checks) -> None:
    for model in _distinct(specs, lambda s: s.model):
        try:
            MODELS.get(model)
        except Exception as exc:  # noqa: BLE001
            checks.note(f"model: {_fmt(exc)}")


def _check_numbers(specs: list[RunSpec], checks: _Checks) -> None:
    for s in specs:
        if not (0 <= s.poison_ratio < 1) or math.isnan(s.poison_ratio):
            checks.note(f"poison ratio {s.poison_ratio:g} is outside [0, 1) (0 = a clean cell, otherwise a "
                        f"fraction of the training set)")
        if not (0 <= s.reserve_fraction < 1):
            checks.note(f"reserve_fraction {s.reserve_fraction} is outside [0, 1)")


# -- data -----------------------------------------------------------------------------------------
def _load_datasets(specs: list[RunSpec], data_root, cache_dir, check_data: bool, checks: _Checks) -> None:
    """Check each distinct dataset's name and params, and (with ``check_data``) load it, writing nothing."""
    from bench.data import subset_bundle
    from bench.datasets import load_dataset

    for dskey, s in _distinct(specs, _dataset_key).items():
        try:
            DATASETS.create(s.dataset, **s.dataset_params)
        except Exception as exc:  # noqa: BLE001
            checks.note(f"dataset {s.dataset}: {_fmt(exc)}")
            continue
        if not check_data:
            continue
        try:
            bundle = load_dataset(s.dataset, data_root, cache_dir, write_cache=False, **s.dataset_params)
            checks.bundles[dskey] = subset_bundle(bundle, s.n_train, s.n_test, seed=0)
        except Exception as exc:  # noqa: BLE001
            checks.note(f"dataset {s.dataset}: {_fmt(exc)}")


# -- cells ----------------------------------------------------------------------------------------
def _check_cells(specs: list[RunSpec], checks: _Checks) -> None:
    """Each attack's check once per (data, attack, ratio) and each defense's once per (data, model,
    defense, reserve fraction), on the cells whose data loaded."""
    done: set[tuple] = set()
    for s in specs:
        dskey = _dataset_key(s)
        bundle = checks.bundles.get(dskey)
        if bundle is None:
            continue
        attack = checks.attacks.get(_key(s.attack, s.attack_params))
        akey = ("a", dskey, *_key(s.attack, s.attack_params), s.poison_ratio)
        if attack is not None and akey not in done:
            done.add(akey)
            try:
                attack.check(bundle.num_classes, bundle.train.y, bundle.image_shape, s.poison_ratio)
            except Exception as exc:  # noqa: BLE001
                checks.note(f"{s.dataset}/{s.attack}@{s.poison_ratio:g}: {_fmt(exc)}")
        defense = checks.defenses.get(_key(s.defense, s.defense_params))
        dkey = ("d", dskey, s.model, *_key(s.defense, s.defense_params), s.reserve_fraction)
        if defense is not None and dkey not in done:
            done.add(dkey)
            try:
                defense.check(_cell_info(bundle, s))
            except Exception as exc:  # noqa: BLE001
                checks.note(f"{s.dataset}/{s.model}/{s.defense}: {_fmt(exc)}")


def _cell_info(bundle, s: RunSpec):
    """What a defense may know about the cell: the victim's training set once the clean reserve is
    carved out (by the cell builder's own rule, :func:`bench.data.reserve_size`)."""
    from bench.data import reserve_size
    from bench.defense import CellInfo

    n = len(bundle.train)
    k = reserve_size(n, s.reserve_fraction)
    return CellInfo(bundle.num_classes, bundle.image_shape, n - k, s.model, s.reserve_fraction, k)
