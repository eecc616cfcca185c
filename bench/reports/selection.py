"""The development search's choice, made by the rule a defense wrote down before its results.

A defense with development claims may declare ``development_selection`` (plain data on its class):

* ``"winner"``: the tie-breakers among the configurations that pass every claim on every cell;
* ``"closest"``: the order among all of them when none passes (its first key is usually
  ``"claims"``), so the closest one is frozen with what it misses.

Only configurations run on every cell the most-run configuration has (and with no failed run)
compete: a configuration screened out on its first cell cannot be chosen. Keys (each with its
direction built in):

* ``claims``: how many claims pass on every cell (more is better);
* ``worst:<claim>``: the claim's worst value over the cells (better in the claim's direction);
* ``margin:<a>-<b>``: worst value of claim ``a`` minus that of claim ``b`` (larger is better), e.g.
  ``margin:detection_tpr-detection_fpr``;
* ``cost``: the mean cost in epochs of the cell's training set (less is better);
* ``param:<name>``: the parameter's value (less is better; ``None`` counts as the most);
* ``info_max:<a>,<b>``: the largest of those ``defense_info`` fields, averaged over the runs (less
  is better), e.g. the clean samples a run used;
* ``changes:<preset>``: how many parameters differ from the named preset (fewer is better).

:func:`select` returns the ranking and the choice; the development report prints both, so a
frozen default is the output of the rule, not of a reading of the table.
"""
from __future__ import annotations

import json
import math

import pandas as pd

HIGHER_IS_BETTER = {">=", ">"}


class SelectionError(ValueError):
    """A selection rule this module cannot read."""


def rule_of(defense: str) -> dict:
    from bench.reports.tidy import _registry, base_name

    try:
        obj = _registry("defense").get(base_name(defense)).obj
    except Exception:  # noqa: BLE001 - a defense this checkout does not ship
        return {}
    rule = getattr(obj, "development_selection", None) or {}
    for part in ("winner", "closest"):
        if not isinstance(rule.get(part, ()), (tuple, list)):
            raise SelectionError(f"{defense}: development_selection[{part!r}] must be a tuple of keys")
    return dict(rule)


def _info(row: dict) -> dict:
    from bench.reports.tidy import _as_dict

    return _as_dict(row.get("defense_info"))


def _preset_params(defense: str, preset: str) -> dict:
    from bench.registry import DEFENSES, params_to_dict

    try:
        return params_to_dict(DEFENSES.get(defense).make_params(preset=preset))
    except Exception as exc:  # noqa: BLE001
        raise SelectionError(f"{defense}: preset {preset!r} of a selection key: {exc}") from exc


def key_value(key: str, config: dict, runs: list[dict], claims: dict) -> float:
    """The value of one selection key for one configuration, signed so that smaller sorts first."""
    kind, _, arg = key.partition(":")
    if kind == "claims":
        return -sum(bool(config[f"{name} ok"]) for name in claims)
    if kind == "worst":
        if arg not in claims:
            raise SelectionError(f"selection key {key!r}: no claim {arg!r}")
        v = config[arg]
        return -v if claims[arg]["op"] in HIGHER_IS_BETTER else v
    if kind == "margin":
        a, _, b = arg.partition("-")
        if a not in claims or b not in claims:
            raise SelectionError(f"selection key {key!r}: claims {a!r} and {b!r} are needed")
        return -(config[a] - config[b])
    if kind == "cost":
        return config["epochs_equiv"]
    params = json.loads(config["params"])
    if kind == "param":
        v = params.get(arg)
        return math.inf if v is None else float(v)
    if kind == "info_max":
        fields = [f.strip() for f in arg.split(",")]
        values = [max(float(_info(r["row"]).get(f) or 0) for f in fields) for r in runs]
        return sum(values) / len(values) if values else math.nan
    if kind == "changes":
        base = _preset_params(config["name"], arg)
        return sum(json.dumps(base.get(k), default=str) != json.dumps(v, default=str) for k, v in params.items())
    raise SelectionError(f"unknown selection key {key!r}")


def select(configs: pd.DataFrame, runs: list[dict]) -> list[dict]:
    """For each defense of the development table that declares a rule: ``{defense, config,
    configuration, kind ("winner" | "closest"), misses, order, keys, left_out}``."""
    from bench.reports.development import claims_of

    out = []
    if configs.empty:
        return out
    for name, part in configs.groupby("name", sort=False):
        rule = rule_of(name)
        if not rule:
            continue
        claims = {c["name"]: c for c in claims_of(name)}
        full = part["cells"].max()
        eligible = part[(part["cells"] == full) & (part["failed"] == 0)]
        left_out = sorted(set(part["config"]) - set(eligible["config"]))
        passing = eligible[eligible["pass"]]
        kind, pool = ("winner", passing) if len(passing) else ("closest", eligible)
        keys = tuple(rule.get(kind, ())) or ("claims", "cost")
        scored = []
        for cfg in pool.to_dict("records"):
            mine = [r for r in runs if r["row"]["defense"] == name and r["params_key"] == cfg["params"]]
            values = tuple(key_value(k, cfg, mine, claims) for k in keys)
            scored.append((tuple(math.inf if v != v else v for v in values), cfg["config"], cfg))
        if not scored:
            continue
        scored.sort(key=lambda s: (s[0], s[1]))
        best = scored[0][2]
        misses = [f"{c} ({best[c] * 100:.1f})" for c in claims if not best[f"{c} ok"]]
        out.append({"defense": best["defense"], "name": name, "config": best["config"],
                    "configuration": best["configuration"], "kind": kind, "misses": misses,
                    "order": [s[1] for s in scored], "keys": keys, "left_out": left_out})
    return out


def selection_markdown(choices: list[dict]) -> str:
    if not choices:
        return ""
    lines = ["## The choice by the written rule", ""]
    for c in choices:
        what = "it passes every claim on every cell" if c["kind"] == "winner" else \
            "no configuration passes every claim, and it comes first by the rule for that case"
        lines.append(f"- **{c['defense']}: {c['config']}** ({c['configuration']}), the {c['kind']}: {what}"
                     + (f"; misses {', '.join(c['misses'])}" if c["misses"] else "")
                     + f". Order by ({', '.join(c['keys'])}): {', '.join(c['order'])}"
                     + (f"; not eligible (fewer cells or a failed run): {', '.join(c['left_out'])}"
                        if c["left_out"] else "") + ".")
    return "\n".join(lines + [""])
