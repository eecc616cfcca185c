"""Expanding a suite into run specs, and narrowing them with the command line's filters.

:func:`expand` crosses each grid block's axes (datasets x models x attacks x ratios x seeds x
defenses), resolves wildcards through the registries, puts the suite's ``preset`` and ``target``
into the plug-ins that have them, drops ``[[exclude]]`` combinations and returns one
:class:`~bench.spec.RunSpec` per distinct run id. :func:`apply_filters` narrows the specs with
``--attacks/--defenses/--datasets/--models/--ratios/--seeds``.

Expansion never calls a plug-in: it only reads a registered entry's ``presets`` and params fields.
A ``module:Object`` name is looked up through the registry, which imports the module and refuses
an object of the wrong kind; a name the registry refuses is kept as written, and
:func:`bench.suite.validate.validate` reports it.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import itertools
import json
import math
from typing import Iterable

from bench.budget import Budget
from bench.registry import ATTACKS, DATASETS, DEFENSES, MODELS, Entry, Registry
from bench.spec import RunSpec
from bench.suite.parse import Suite, SuiteError


# -- one axis -------------------------------------------------------------------------------------
def _registry_names(reg: Registry, pattern: str) -> list[str]:
    """Registered names matching a wildcard; ``_private`` plug-ins only for ``_`` patterns (names
    resolved on the fly from ``module:Object`` paths are never listed by the registry)."""
    return [n for n in reg.list(pattern) if pattern.startswith("_") or not n.startswith("_")]


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[") and ":" not in name


def _expand_axis(reg: Registry, items: list, problems: list[str], axis: str) -> list[tuple[str, dict]]:
    """Names (with params) of one axis: wildcards through the registry, ``!pattern`` removals."""
    out: list[tuple[str, dict]] = []
    for item in items:
        name, params = (item["name"], dict(item.get("params") or {})) if isinstance(item, dict) else (item, {})
        if name.startswith("!"):
            out = [(n, p) for n, p in out if not fnmatch.fnmatchcase(n, name[1:])]
        elif _is_pattern(name):
            matches = _registry_names(reg, name)
            if not matches:
                problems.append(f"{axis}: pattern '{name}' matches no registered {reg.kind}")
            out.extend((m, dict(params)) for m in matches)
        else:
            out.append((name, params))
    unique: dict[tuple[str, str], tuple[str, dict]] = {}
    for n, p in out:
        unique.setdefault((n, json.dumps(p, sort_keys=True, default=str)), (n, p))
    return list(unique.values())


# -- what a plug-in declares (read, never called) -------------------------------------------------
def _accepted_entry(reg: Registry, name: str) -> Entry | None:
    """The registry's entry for ``name``, or None where the registry does not accept the name
    (unknown, not importable, an object of the wrong kind): validation reports those."""
    try:
        return reg.get(name)
    except Exception:  # noqa: BLE001 - any refusal is reported by validate, with its reason
        return None


def _with_preset(reg: Registry, name: str, params: dict, preset: str | None) -> dict:
    """``params`` with the suite's preset added where the plug-in defines it and no preset is set."""
    if not preset or "preset" in params:
        return params
    entry = _accepted_entry(reg, name)
    if entry is not None and preset in (getattr(entry.obj, "presets", None) or {}):
        return {"preset": preset, **params}
    return params


def _has_field(reg: Registry, name: str, field_name: str) -> bool:
    entry = _accepted_entry(reg, name)
    return (entry is not None and entry.params_cls is not None
            and field_name in {f.name for f in dataclasses.fields(entry.params_cls)})


def _attack_params(name: str, params: dict, preset: str | None, target: int | None) -> dict:
    out = _with_preset(ATTACKS, name, dict(params), preset)
    if target is not None and "target" not in params and _has_field(ATTACKS, name, "target"):
        out["target"] = int(target)
    return out


# -- exclusions -----------------------------------------------------------------------------------
def _rule_matches(rule: dict, values: dict) -> bool:
    for key, want in rule.items():
        have = values[key]
        if key == "ratio":
            ok = math.isclose(float(want), have)
        elif key == "seed":
            ok = int(want) == have
        else:
            ok = fnmatch.fnmatchcase(str(have), str(want))
        if not ok:
            return False
    return True


def _excluded(rules: list[dict], **values) -> bool:
    return any(_rule_matches(rule, values) for rule in rules)


# -- the grid -------------------------------------------------------------------------------------
def _block_specs(suite: Suite, block: dict, problems: list[str]) -> Iterable[RunSpec]:
    """The run specs of one grid block (exclusions dropped); expansion problems go to ``problems``."""
    datasets = _expand_axis(DATASETS, block["datasets"], problems, "datasets")
    models = _expand_axis(MODELS, block["models"], problems, "models")
    attacks = _expand_axis(ATTACKS, block["attacks"], problems, "attacks")
    defenses = _expand_axis(DEFENSES, block["defenses"], problems, "defenses")
    poison_ratios = [float(r) for r in block["ratios"]]
    seeds = [int(s) for s in block["seeds"]]
    preset, target = block.get("preset"), block.get("target")
    budget = dict(block.get("budget") or {})
    train = dict(block.get("train") or {})
    if "epochs" in budget:
        train["epochs"] = budget["epochs"]
    rules = block.get("exclude") or []
    for (ds, dsp), (mo, mop), (at, atp), poison_ratio, seed, (de, dep) in itertools.product(
            datasets, models, attacks, poison_ratios, seeds, defenses):
        # an exclusion rule names the poison ratio "ratio" (the suite file's key)
        if _excluded(rules, dataset=ds, model=mo, attack=at, ratio=poison_ratio, seed=seed, defense=de):
            continue
        if mop:
            problems.append(f"models: '{mo}' takes no params in a suite (got {mop})")
        yield RunSpec(dataset=ds, model=mo, attack=at, poison_ratio=float(poison_ratio), defense=de,
                      seed=seed, attack_params=_attack_params(at, atp, preset, target),
                      defense_params=_with_preset(DEFENSES, de, dict(dep), preset),
                      dataset_params=dict(dsp), train=dict(train),
                      budget=Budget(scale=float(budget.get("scale", 1.0)),
                                    min_steps=int(budget.get("min_steps", 0))),
                      reserve_fraction=float(block.get("reserve_fraction", 0.05)),
                      n_train=budget.get("n_train"), n_test=budget.get("n_test"), suite=suite.name)


def expand(suite: Suite, strict: bool = True) -> list[RunSpec]:
    """All run specs of a suite, in a stable order (duplicates across blocks removed).

    With ``strict``, wildcard patterns that match nothing raise :class:`SuiteError`."""
    problems: list[str] = []
    specs: dict[str, RunSpec] = {}
    for block in suite.blocks:
        for spec in _block_specs(suite, block, problems):
            specs.setdefault(spec.run_id, spec)
    problems = list(dict.fromkeys(problems))
    if problems and strict:
        raise SuiteError(problems, where=f"suite '{suite.name}'")
    return list(specs.values())


# -- filters --------------------------------------------------------------------------------------
_NAME_FILTERS = (("attacks", "attack"), ("defenses", "defense"), ("datasets", "dataset"), ("models", "model"))
_NUMBER_FILTERS = (("ratios", "poison_ratio", float), ("seeds", "seed", int))


def _split(values: str | Iterable[str] | None) -> list[str]:
    """Comma-separated items; a comma inside parentheses belongs to its item (a defense variant's
    label, ``meca(iterations=8,warmup=full)``)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    items = []
    for vs in values:
        depth, start, text = 0, 0, str(vs)
        for i, ch in enumerate(text + ","):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if ch == "," and depth <= 0:
                items.append(text[start:i].strip())
                start, depth = i + 1, 0
    return [v for v in items if v]


def _variants(spec: RunSpec, attr: str) -> tuple[str, ...]:
    """The names a filter pattern with parentheses is matched against: for defenses the variant
    label of :meth:`RunSpec.label` with its preset (``meca(preset=spec-v1,rounds=8)``) and
    without (``meca(rounds=8)``), parameters sorted; for the other axes the name."""
    if attr != "defense":
        return (getattr(spec, attr),)
    return tuple(dict.fromkeys(spec.label(preset=p).split("/")[3] for p in (True, False)))


def _name_filter(specs: list[RunSpec], key: str, attr: str, patterns: list[str],
                 problems: list[str]) -> set[int]:
    """The positions a name filter keeps; a pattern matching none of the suite's names is a problem.
    A pattern with a parenthesis is matched against the variants' labels (one configuration of a
    defense that a suite runs with several)."""
    def names(s: RunSpec, p: str) -> tuple[str, ...]:
        return _variants(s, attr) if "(" in p else (getattr(s, attr),)

    for p in patterns:
        present = sorted({n for s in specs for n in names(s, p)})
        if not any(fnmatch.fnmatchcase(n, p) for n in present):
            close = difflib.get_close_matches(p, present, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"--{key} '{p}' matches none of the suite's {key}{hint}: {', '.join(present)}")
    return {i for i, s in enumerate(specs)
            if any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names(s, p))}


def _number_filter(specs: list[RunSpec], key: str, attr: str, conv, raw: list[str],
                   problems: list[str]) -> set[int] | None:
    """The positions a number filter keeps (None: the filter is not a list of numbers)."""
    try:
        wanted = [conv(v) for v in raw]
    except ValueError:
        problems.append(f"--{key} {','.join(raw)}: not a list of numbers")
        return None
    present = sorted({getattr(s, attr) for s in specs})
    for w in wanted:
        if not any(math.isclose(w, p) for p in present):
            problems.append(f"--{key} {w:g} is not in the suite ({', '.join(f'{p:g}' for p in present)})")
    return {i for i, s in enumerate(specs) if any(math.isclose(getattr(s, attr), w) for w in wanted)}


def apply_filters(specs: list[RunSpec], *, attacks=None, defenses=None, datasets=None, models=None,
                  ratios=None, seeds=None) -> list[RunSpec]:
    """Narrow a suite's specs. Each filter is a comma-separated list (or list) of wildcards (names)
    or numbers (ratios, seeds); a filter value matching nothing in the suite is an error (checked
    against the whole suite, not what earlier filters left)."""
    given = {"attacks": attacks, "defenses": defenses, "datasets": datasets, "models": models,
             "ratios": ratios, "seeds": seeds}
    specs = list(specs)
    problems: list[str] = []
    keep = set(range(len(specs)))
    for key, attr in _NAME_FILTERS:
        patterns = _split(given[key])
        if patterns:
            keep &= _name_filter(specs, key, attr, patterns, problems)
    for key, attr, conv in _NUMBER_FILTERS:
        raw = _split(given[key])
        kept = _number_filter(specs, key, attr, conv, raw, problems) if raw else None
        if kept is not None:
            keep &= kept
    if problems:
        raise SuiteError(problems, where="filters")
    return [s for i, s in enumerate(specs) if i in keep]
