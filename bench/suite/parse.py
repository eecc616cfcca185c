"""Reading a suite file: TOML parsing and the structural checks (keys, axis types, budget, exclusions).

:func:`load_suite` finds a suite by shipped name (``bench/suites/<name>.toml``) or path, parses it
and checks its structure; :func:`suite_from_dict` does the same for a dict. Every structural
problem of the file is collected and raised at once as a :class:`SuiteError`. Nothing here looks
a name up in a registry: names are resolved by :mod:`bench.suite.expand` and checked by
:mod:`bench.suite.validate`.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"

AXES = ("datasets", "models", "attacks", "ratios", "seeds", "defenses")
_SCALARS = ("target", "preset", "reserve_fraction", "description")
_KNOWN_KEYS = set(AXES) | set(_SCALARS) | {"budget", "train", "exclude", "grid", "name"}
_BLOCK_KEYS = _KNOWN_KEYS - {"grid", "name", "description"}
_BUDGET_KEYS = {"epochs", "scale", "min_steps", "n_train", "n_test"}
_EXCLUDE_KEYS = {"dataset", "model", "attack", "ratio", "seed", "defense"}
_MERGED_TABLES = ("budget", "train")   # a [[grid]] block's tables extend the top level's


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
    """A parsed suite: its name, description, the raw TOML data and the file it came from."""

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
                if k in _MERGED_TABLES and isinstance(v, dict):
                    block[k] = {**base.get(k, {}), **v}
                else:
                    block[k] = v
            out.append(block)
        return out


# -- finding and loading --------------------------------------------------------------------------
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
    """A :class:`Suite` from already parsed data, structurally checked."""
    suite = Suite(name=str(name), description=str(data.get("description", "")), data=data, path=path)
    problems = structure_problems(suite)
    if problems:
        raise SuiteError(problems, where=str(path or name))
    return suite


# -- structural checks ----------------------------------------------------------------------------
def structure_problems(suite: Suite) -> list[str]:
    """Every structural problem of a suite (unknown keys, axis types, budget, exclusions), once each."""
    data = suite.data
    problems = [f"unknown key '{k}' (known: {', '.join(sorted(_KNOWN_KEYS))})"
                for k in data if k not in _KNOWN_KEYS]
    grids = data.get("grid", [])
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        return problems + ["'grid' must be an array of tables ([[grid]])"]
    for gi, g in enumerate(grids):
        problems += [f"[[grid]] #{gi + 1}: unknown key '{k}'" for k in g if k not in _BLOCK_KEYS]
    for bi, block in enumerate(suite.blocks):
        where = f"[[grid]] #{bi + 1}: " if grids else ""
        problems += [where + p for p in block_problems(block)]
    return list(dict.fromkeys(problems))


def block_problems(block: dict) -> list[str]:
    """The structural problems of one grid block (the top level merged with a ``[[grid]]``)."""
    problems = []
    for axis in AXES:
        problems += _axis_problems(axis, block.get(axis))
    problems += _budget_problems(block.get("budget", {}))
    train = block.get("train", {})
    if not isinstance(train, dict):
        problems.append("'train' must be a table")
    elif isinstance(block.get("budget"), dict):
        problems += _epochs_conflict(block["budget"], train)
    problems += _scalar_problems(block)
    problems += _exclude_problems(block.get("exclude", []))
    return problems


def _axis_problems(axis: str, values) -> list[str]:
    if values is None:
        return [f"missing axis '{axis}'"]
    if not isinstance(values, list) or not values:
        return [f"'{axis}' must be a non-empty array"]
    return [p for item in values for p in _axis_item_problems(axis, item)]


def _axis_item_problems(axis: str, item) -> list[str]:
    if axis == "ratios":
        ok = isinstance(item, (int, float)) and not isinstance(item, bool)
        return [] if ok else [f"ratio {item!r} is not a number"]
    if axis == "seeds":
        ok = isinstance(item, int) and not isinstance(item, bool) and item >= 0
        return [] if ok else [f"seed {item!r} must be a non-negative integer"]
    if isinstance(item, str):
        return []
    if not isinstance(item, dict):
        return [f"{axis} entry {item!r} must be a name or a table"]
    problems = []
    if not isinstance(item.get("name"), str):
        problems.append(f"{axis} entry {item!r} needs a 'name'")
    extra = set(item) - {"name", "params"}
    if extra:
        problems.append(f"{axis} entry {item.get('name')!r}: unknown key(s) {sorted(extra)} (use name and params)")
    if not isinstance(item.get("params", {}), dict):
        problems.append(f"{axis} entry {item.get('name')!r}: params must be a table")
    return problems


def _budget_problems(budget) -> list[str]:
    if not isinstance(budget, dict):
        return ["'budget' must be a table"]
    problems = []
    for k, v in budget.items():
        if k not in _BUDGET_KEYS:
            problems.append(f"[budget]: unknown key '{k}' (known: {', '.join(sorted(_BUDGET_KEYS))})")
        elif k in ("n_train", "n_test") and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            problems.append(f"[budget] {k} must be a positive integer, got {v!r}")
        elif k == "min_steps" and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            problems.append(f"[budget] min_steps must be a non-negative integer, got {v!r}")
        elif k in ("epochs", "scale") and not _positive_number(v):
            problems.append(f"[budget] {k} must be a positive number, got {v!r}")
    return problems


def _positive_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _epochs_conflict(budget: dict, train: dict) -> list[str]:
    """``[budget] epochs`` and ``[train] epochs`` name the same number; two different values are refused."""
    if "epochs" in budget and "epochs" in train and budget["epochs"] != train["epochs"]:
        return [f"[budget] epochs = {budget['epochs']!r} and [train] epochs = {train['epochs']!r} disagree: "
                f"both set the standard training's epochs; set it once, in [budget] epochs"]
    return []


def _scalar_problems(block: dict) -> list[str]:
    problems = []
    rf = block.get("reserve_fraction", 0.05)
    if isinstance(rf, bool) or not isinstance(rf, (int, float)) or not 0 <= rf < 1:
        problems.append(f"reserve_fraction must be in [0, 1), got {rf!r}")
    t = block.get("target", None)
    if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 0):
        problems.append(f"target must be a non-negative integer, got {t!r}")
    return problems


def _exclude_problems(rules) -> list[str]:
    if not isinstance(rules, list) or not all(isinstance(e, dict) for e in rules):
        return ["'exclude' must be an array of tables ([[exclude]])"]
    return [f"[[exclude]] unknown key(s) {sorted(set(e) - _EXCLUDE_KEYS)} (known: {', '.join(sorted(_EXCLUDE_KEYS))})"
            for e in rules if set(e) - _EXCLUDE_KEYS]
