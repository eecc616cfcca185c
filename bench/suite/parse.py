"""Suites: TOML grid files, their expansion into run specs, filters and up-front validation.

A suite is a TOML file (``bench/suites/<name>.toml``, or any path) describing a grid::

    description = "what it is for (shown by `list suites`)"
    datasets = ["digits"]                 # names, or tables {name = "...", params = {...}}
    models = ["cnn_tiny"]
    attacks = ["badnet", {name = "blend", params = {alpha = 0.1}}, "*", "!clean"]
    defenses = ["*"]                      # every registered defense
    ratios = [0.0, 0.05]                  # poison ratios; 0 = a clean cell of that attack
    seeds = [0, 1]
    target = 1                            # the attack target (put into every attack's params)
    preset = "meca"                       # a named parameter set, used by every plug-in having it
    reserve_fraction = 0.05               # clean reserve handed to defenses that declare one

    [budget]                              # how much compute the suite affords
    epochs = 2                            # epochs of the standard (backdoor) training
    scale = 0.05                          # multiplies every paper epoch count of the defenses
    n_train = 10000                       # seeded, class-balanced subsets (omit for all)
    n_test = 2000

    [train]                               # other TrainConfig fields of the standard recipe
    batch_size = 128

    [[exclude]]                           # combinations to leave out (any axis keys)
    attack = "sig"
    ratio = 0.15

    [[grid]]                              # optional: several blocks, each overriding the top level
    defenses = ["none", "meca"]

Axis entries are names, wildcards expanded through the registries (``"*"``, ``"fine*"``; plug-ins
whose name starts with ``_`` are only matched by patterns that start with ``_``), ``"!pattern"`` to
drop what earlier entries matched, or tables ``{name, params}``. Parameters of a wildcard table apply
to every match. ``preset`` is chosen once per suite and applies to every attack and defense whose
plug-in defines a preset of that name (``Entry.make_params``); an entry's own ``params.preset``
wins. ``target`` goes into the params of every attack that has a ``target`` field.

:func:`expand` turns a :class:`Suite` into :class:`~bench.spec.RunSpec` objects (datasets x models
x attacks x ratios x seeds x defenses, minus exclusions), :func:`apply_filters` narrows them with the
command line's ``--attacks/--defenses/--datasets/--models/--ratios/--seeds``, and :func:`validate`
checks the whole expanded grid before the first job starts (names, parameters, ratios, data present,
each attack's and defense's own checks on each cell) and returns *every* problem at once.
"""
from __future__ import annotations

import difflib
import fnmatch
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from bench.registry import ATTACKS, DATASETS, DEFENSES, MODELS, ParamsError, UnknownNameError
from bench.spec import RunSpec

SUITES_DIR = Path(__file__).resolve().parent / "suites"

AXES = ("datasets", "models", "attacks", "ratios", "seeds", "defenses")
_SCALARS = ("target", "preset", "reserve_fraction", "description")
_KNOWN_KEYS = set(AXES) | set(_SCALARS) | {"budget", "train", "exclude", "grid", "name"}
_BUDGET_KEYS = {"epochs", "scale", "n_train", "n_test"}
_EXCLUDE_KEYS = {"dataset", "model", "attack", "ratio", "seed", "defense"}


class SuiteError(ValueError):
    """A suite that cannot be loaded, expanded or run; ``problems`` lists every reason."""

    def __init__(self, problems: list[str] | str, where: str = ""):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        head = f"{where}: " if where else ""
        if len(self.problems) == 1:
            msg = head + self.problems[0]
        else:
            msg = head + f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(msg)


@dataclass
class Suite:
    name: str
    description: str
    data: dict
    path: Path | None = None

    @property
    def blocks(self) -> list[dict]:
        """The grid blocks: the top level merged with each ``[[grid]]`` entry (or the top level)."""
        base = {k: v for k, v in self.data.items() if k != "grid"}
        grids = self.data.get("grid") or [{}]
        out = []
        for g in grids:
            block = dict(base)
            for k, v in g.items():
                if k in ("budget", "train") and isinstance(v, dict):
                    block[k] = {**base.get(k, {}), **v}
                else:
                    block[k] = v
            out.append(block)
        return out


# -- loading --------------------------------------------------------------------------------------
def list_suites() -> list[tuple[str, str]]:
    """(name, description) of every suite shipped in ``bench/suites``."""
    out = []
    for path in sorted(SUITES_DIR.glob("*.toml")):
        try:
            desc = str(tomllib.loads(path.read_text()).get("description", "")).strip()
        except (OSError, tomllib.TOMLDecodeError) as exc:
            desc = f"(unreadable: {exc})"
        out.append((path.stem, " ".join(desc.split())))
    return out


def suite_path(name_or_path: str | Path) -> Path:
    """The file of a shipped suite name, or an existing path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.exists():
            raise SuiteError(f"suite file {p} does not exist")
        return p
    shipped = SUITES_DIR / f"{name_or_path}.toml"
    if shipped.exists():
        return shipped
    import difflib

    names = [n for n, _ in list_suites()]
    close = difflib.get_close_matches(str(name_or_path), names, n=3, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise SuiteError(f"unknown suite '{name_or_path}'.{hint} Shipped suites: {', '.join(names)}; "
                     f"a path to a .toml file works too")


def load_suite(name_or_path: str | Path) -> Suite:
    """Parse and structurally check a suite file (every problem reported at once)."""
    path = suite_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"malformed TOML: {exc}", where=str(path)) from exc
    return suite_from_dict(data, name=data.get("name") or path.stem, path=path)


def suite_from_dict(data: dict, name: str = "custom", path: Path | None = None) -> Suite:
    suite = Suite(name=str(name), description=str(data.get("description", "")), data=data, path=path)
    problems = _structure_problems(suite)
    if problems:
        raise SuiteError(problems, where=str(path or name))
    return suite


def _structure_problems(suite: Suite) -> list[str]:
    problems = []
    data = suite.data
    for k in data:
        if k not in _KNOWN_KEYS:
            problems.append(f"unknown key '{k}' (known: {', '.join(sorted(_KNOWN_KEYS))})")
    grids = data.get("grid", [])
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        problems.append("'grid' must be an array of tables ([[grid]])")
        return problems
    for gi, g in enumerate(grids):
        for k in g:
            if k not in _KNOWN_KEYS - {"grid", "name", "description"}:
                problems.append(f"[[grid]] #{gi + 1}: unknown key '{k}'")
    for bi, block in enumerate(suite.blocks):
        where = f"[[grid]] #{bi + 1}: " if grids else ""
        for axis in AXES:
            if axis not in block:
                problems.append(f"{where}missing axis '{axis}'")
                continue
            val = block[axis]
            if not isinstance(val, list) or not val:
                problems.append(f"{where}'{axis}' must be a non-empty array")
                continue
            for item in val:
                if axis == "ratios":
                    if isinstance(item, bool) or not isinstance(item, (int, float)):
                        problems.append(f"{where}ratio {item!r} is not a number")
                elif axis == "seeds":
                    if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                        problems.append(f"{where}seed {item!r} must be a non-negative integer")
                elif isinstance(item, dict):
                    extra = set(item) - {"name", "params"}
                    if "name" not in item or not isinstance(item["name"], str):
                        problems.append(f"{where}{axis} entry {item!r} needs a 'name'")
                    if extra:
                        problems.append(f"{where}{axis} entry {item.get('name')!r}: unknown key(s) "
                                        f"{sorted(extra)} (use name and params)")
                    if not isinstance(item.get("params", {}), dict):
                        problems.append(f"{where}{axis} entry {item.get('name')!r}: params must be a table")
                elif not isinstance(item, str):
                    problems.append(f"{where}{axis} entry {item!r} must be a name or a table")
        budget = block.get("budget", {})
        if not isinstance(budget, dict):
            problems.append(f"{where}'budget' must be a table")
        else:
            for k, v in budget.items():
                if k not in _BUDGET_KEYS:
                    problems.append(f"{where}[budget]: unknown key '{k}' (known: {', '.join(sorted(_BUDGET_KEYS))})")
                elif k in ("n_train", "n_test") and (not isinstance(v, int) or v <= 0):
                    problems.append(f"{where}[budget] {k} must be a positive integer, got {v!r}")
                elif k in ("epochs", "scale") and (not isinstance(v, (int, float)) or v <= 0):
                    problems.append(f"{where}[budget] {k} must be a positive number, got {v!r}")
        if not isinstance(block.get("train", {}), dict):
            problems.append(f"{where}'train' must be a table")
        rf = block.get("reserve_fraction", 0.05)
        if not isinstance(rf, (int, float)) or not 0 <= rf < 1:
            problems.append(f"{where}reserve_fraction must be in [0, 1), got {rf!r}")
        t = block.get("target", None)
        if t is not None and (not isinstance(t, int) or t < 0):
            problems.append(f"{where}target must be a non-negative integer, got {t!r}")
        ex = block.get("exclude", [])
        if not isinstance(ex, list) or not all(isinstance(e, dict) for e in ex):
            problems.append(f"{where}'exclude' must be an array of tables ([[exclude]])")
        else:
            for e in ex:
                bad = set(e) - _EXCLUDE_KEYS
                if bad:
                    problems.append(f"{where}[[exclude]] unknown key(s) {sorted(bad)} "
                                    f"(known: {', '.join(sorted(_EXCLUDE_KEYS))})")
    return list(dict.fromkeys(problems))


# -- expansion ------------------------------------------------------------------------------------
def _registry_names(reg, pattern: str) -> list[str]:
    """Registered names matching a wildcard; ``_private`` plug-ins only for ``_`` patterns and
    names added on the fly from ``module:Object`` paths never."""
    reg.names()  # load
    out = []
    for name in reg.list(pattern):
        entry = reg._entries[name]
        if entry.source in ("path", "prefix"):
            continue
        if name.startswith("_") and not pattern.startswith("_"):
            continue
        out.append(name)
    return out


def _expand_axis(reg, items: list, problems: list[str], axis: str) -> list[tuple[str, dict]]:
    """Names (with params) of one axis: wildcards through the registry, ``!pattern`` removals."""
    out: list[tuple[str, dict]] = []
    for item in items:
        if isinstance(item, dict):
            name, params = item["name"], dict(item.get("params") or {})
        else:
            name, params = item, {}
        if name.startswith("!"):
            pat = name[1:]
            out = [(n, p) for n, p in out if not fnmatch.fnmatchcase(n, pat)]
            continue
        if any(ch in name for ch in "*?[") and ":" not in name:
            matches = _registry_names(reg, name)
            if not matches:
                problems.append(f"{axis}: pattern '{name}' matches no registered {reg.kind}")
            out.extend((m, dict(params)) for m in matches)
        else:
            out.append((name, params))
    seen, uniq = set(), []
    for n, p in out:
        key = (n, json.dumps(p, sort_keys=True, default=str))
        if key not in seen:
            seen.add(key)
            uniq.append((n, p))
    return uniq


def _with_preset(reg, name: str, params: dict, preset: str | None) -> dict:
    if not preset or "preset" in params:
        return params
    try:
        entry = reg.get(name)
    except UnknownNameError:
        return params
    if preset in (getattr(entry.obj, "presets", None) or {}):
        return {"preset": preset, **params}
    return params


def _has_field(reg, name: str, fname: str) -> bool:
    import dataclasses

    try:
        entry = reg.get(name)
    except UnknownNameError:
        return False
    return entry.params_cls is not None and fname in {f.name for f in dataclasses.fields(entry.params_cls)}


def _excluded(rules: list[dict], **values) -> bool:
    for rule in rules:
        ok = True
        for k, v in rule.items():
            have = values[k]
            if k == "ratio":
                ok = ok and math.isclose(float(v), have)
            elif k == "seed":
                ok = ok and int(v) == have
            else:
                ok = ok and fnmatch.fnmatchcase(str(have), str(v))
        if ok:
            return True
    return False


def expand(suite: Suite, strict: bool = True) -> list[RunSpec]:
    """All run specs of a suite, in a stable order (duplicates across blocks removed).

    With ``strict``, wildcard patterns that match nothing raise :class:`SuiteError`."""
    problems: list[str] = []
    specs: dict[str, RunSpec] = {}
    for block in suite.blocks:
        datasets = _expand_axis(DATASETS, block["datasets"], problems, "datasets")
        models = _expand_axis(MODELS, block["models"], problems, "models")
        attacks = _expand_axis(ATTACKS, block["attacks"], problems, "attacks")
        defenses = _expand_axis(DEFENSES, block["defenses"], problems, "defenses")
        ratios = [float(r) for r in block["ratios"]]
        seeds = [int(s) for s in block["seeds"]]
        preset = block.get("preset")
        target = block.get("target")
        budget = dict(block.get("budget") or {})
        train = dict(block.get("train") or {})
        if "epochs" in budget:
            train["epochs"] = budget["epochs"]
        rules = block.get("exclude") or []
        for (ds, dsp), (mo, mop), (at, atp), ratio, seed, (de, dep) in itertools.product(
                datasets, models, attacks, ratios, seeds, defenses):
            if _excluded(rules, dataset=ds, model=mo, attack=at, ratio=ratio, seed=seed, defense=de):
                continue
            if mop:
                problems.append(f"models: '{mo}' takes no params in a suite (got {mop})")
            ap = _with_preset(ATTACKS, at, dict(atp), preset)
            if target is not None and "target" not in atp and _has_field(ATTACKS, at, "target"):
                ap["target"] = int(target)
            spec = RunSpec(dataset=ds, model=mo, attack=at, poison_ratio=float(ratio), defense=de,
                           seed=seed, attack_params=ap, defense_params=_with_preset(DEFENSES, de, dict(dep), preset),
                           dataset_params=dict(dsp), train=dict(train),
                           budget_scale=float(budget.get("scale", 1.0)),
                           reserve_fraction=float(block.get("reserve_fraction", 0.05)),
                           n_train=budget.get("n_train"), n_test=budget.get("n_test"), suite=suite.name)
            specs.setdefault(spec.run_id, spec)
    problems = list(dict.fromkeys(problems))
    if problems and strict:
        raise SuiteError(problems, where=f"suite '{suite.name}'")
    return list(specs.values())


# -- filters --------------------------------------------------------------------------------------
def _split(values: str | Iterable[str] | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [v.strip() for vs in values for v in str(vs).split(",") if v.strip()]


def apply_filters(specs: list[RunSpec], *, attacks=None, defenses=None, datasets=None, models=None,
                  ratios=None, seeds=None) -> list[RunSpec]:
    """Narrow a suite's specs. Each filter is a comma-separated list (or list) of wildcards (names)
    or numbers (ratios, seeds); a filter value matching nothing in the suite is an error."""
    problems = []
    specs = list(specs)
    out = list(specs)
    for key, vals, attr in (("attacks", attacks, "attack"), ("defenses", defenses, "defense"),
                            ("datasets", datasets, "dataset"), ("models", models, "model")):
        pats = _split(vals)
        if not pats:
            continue
        present = sorted({getattr(s, attr) for s in specs})   # what the suite has, not what earlier filters left
        for p in pats:
            if not any(fnmatch.fnmatchcase(n, p) for n in present):
                close = difflib.get_close_matches(p, present, n=3, cutoff=0.6)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                problems.append(f"--{key} '{p}' matches none of the suite's {key}{hint}: {', '.join(present)}")
        out = [s for s in out if any(fnmatch.fnmatchcase(getattr(s, attr), p) for p in pats)]
    for key, vals, attr, conv in (("ratios", ratios, "poison_ratio", float), ("seeds", seeds, "seed", int)):
        raw = _split(vals)
        if not raw:
            continue
        try:
            wanted = [conv(v) for v in raw]
        except ValueError:
            problems.append(f"--{key} {','.join(raw)}: not a list of numbers")
            continue
        present = sorted({getattr(s, attr) for s in specs})
        for w in wanted:
            if not any(math.isclose(w, p) for p in present):
                problems.append(f"--{key} {w:g} is not in the suite ({', '.join(f'{p:g}' for p in present)})")
        out = [s for s in out if any(math.isclose(getattr(s, attr), w) for w in wanted)]
    if problems:
        raise SuiteError(problems, where="filters")
    return out


# -- validation -----------------------------------------------------------------------------------
def _fmt(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, (UnknownNameError, ParamsError)) else f"{type(exc).__name__}: {exc}"


def validate(specs: list[RunSpec], data_root=None, cache_dir=None, check_data: bool = True) -> list[str]:
    """Every problem of an expanded grid, without training: unknown names (with suggestions), bad
    parameters, ratios, missing data, and each attack's and defense's check on each cell.

    Data are loaded (through the decoded-tensor cache) once per dataset/subset to check the labels
    the attacks need (a clean-label ratio above what the target class holds, ...)."""
    from bench.defense import CellInfo
    from bench.engine import TrainConfig
    from bench.registry import build_params

    problems: list[str] = []

    def note(msg: str):
        problems.append(msg)

    # names and params, once per distinct value
    attacks, defenses, trains, models, datasets = {}, {}, {}, set(), {}
    for s in specs:
        akey = (s.attack, json.dumps(s.attack_params, sort_keys=True, default=str))
        if akey not in attacks:
            try:
                attacks[akey] = ATTACKS.create(s.attack, **s.attack_params)
            except Exception as exc:  # noqa: BLE001 - every problem is collected
                attacks[akey] = None
                note(f"attack {s.attack}: {_fmt(exc)}")
        dkey = (s.defense, json.dumps(s.defense_params, sort_keys=True, default=str))
        if dkey not in defenses:
            try:
                defenses[dkey] = DEFENSES.create(s.defense, **s.defense_params)
            except Exception as exc:  # noqa: BLE001
                defenses[dkey] = None
                note(f"defense {s.defense}: {_fmt(exc)}")
        tkey = json.dumps(s.train, sort_keys=True, default=str)
        if tkey not in trains:
            trains[tkey] = True
            try:
                build_params(TrainConfig, dict(s.train), owner="train")
            except Exception as exc:  # noqa: BLE001
                note(f"[train]/[budget]: {_fmt(exc)}")
        if s.model not in models:
            models.add(s.model)
            try:
                MODELS.get(s.model)
            except Exception as exc:  # noqa: BLE001
                note(f"model: {_fmt(exc)}")
        if not (0 <= s.poison_ratio < 1) or math.isnan(s.poison_ratio):
            note(f"poison ratio {s.poison_ratio:g} is outside [0, 1) (0 = a clean cell, otherwise a "
                 f"fraction of the training set)")
        if not (0 <= s.reserve_fraction < 1):
            note(f"reserve_fraction {s.reserve_fraction} is outside [0, 1)")
        if s.budget_scale <= 0:
            note(f"budget scale {s.budget_scale} must be positive")
        dskey = (s.dataset, json.dumps(s.dataset_params, sort_keys=True, default=str), s.n_train, s.n_test)
        datasets.setdefault(dskey, s)

    # data present, and the per-cell checks of attacks and defenses
    bundles = {}
    for dskey, s in datasets.items():
        try:
            DATASETS.create(s.dataset, **s.dataset_params)
        except Exception as exc:  # noqa: BLE001
            note(f"dataset {s.dataset}: {_fmt(exc)}")
            continue
        if not check_data:
            continue
        try:
            from bench.runner import load_bundle

            bundles[dskey] = load_bundle(s, data_root, cache_dir)
        except Exception as exc:  # noqa: BLE001
            note(f"dataset {s.dataset}: {_fmt(exc)}")
    checked = set()
    for s in specs:
        dskey = (s.dataset, json.dumps(s.dataset_params, sort_keys=True, default=str), s.n_train, s.n_test)
        bundle = bundles.get(dskey)
        if bundle is None:
            continue
        attack = attacks.get((s.attack, json.dumps(s.attack_params, sort_keys=True, default=str)))
        defense = defenses.get((s.defense, json.dumps(s.defense_params, sort_keys=True, default=str)))
        akey = ("a", dskey, s.attack, json.dumps(s.attack_params, sort_keys=True, default=str), s.poison_ratio)
        if attack is not None and akey not in checked:
            checked.add(akey)
            try:
                attack.check(bundle.num_classes, bundle.train.y, bundle.image_shape, s.poison_ratio)
            except Exception as exc:  # noqa: BLE001
                note(f"{s.dataset}/{s.attack}@{s.poison_ratio:g}: {_fmt(exc)}")
        dkey = ("d", dskey, s.model, s.defense, json.dumps(s.defense_params, sort_keys=True, default=str),
                s.reserve_fraction)
        if defense is not None and dkey not in checked:
            checked.add(dkey)
            try:
                defense.check(CellInfo(bundle.num_classes, bundle.image_shape, len(bundle.train), s.model,
                                       s.reserve_fraction))
            except Exception as exc:  # noqa: BLE001
                note(f"{s.dataset}/{s.model}/{s.defense}: {_fmt(exc)}")
    return list(dict.fromkeys(problems))


def summarize(specs: list[RunSpec]) -> dict[str, list]:
    """The distinct values of each axis (for messages and dry runs)."""
    return {"datasets": sorted({s.dataset for s in specs}), "models": sorted({s.model for s in specs}),
            "attacks": sorted({s.attack for s in specs}), "ratios": sorted({s.poison_ratio for s in specs}),
            "seeds": sorted({s.seed for s in specs}), "defenses": sorted({s.defense for s in specs})}
