"""Loading the tidy table and the helpers every report shares (selection, aggregation, labels).

All reports read ``results/runs.parquet`` (or ``runs.csv``, or the records themselves when the
table has not been consolidated yet). Rates stay fractions in the table; reports print points.

What the reports know about attacks and defenses comes from their cards (:mod:`bench.card`):
display labels (:func:`label`), the paper tables each appears in and its place there
(:func:`members`, :func:`in_order`), and which parameter sets are variants rather than a
defense's main row (:func:`is_variant`). No report names a plug-in. Names read from results are
looked up among registered plug-ins only (``Registry.lookup``): a ``module:Object`` name in a
received results folder is never imported; it is shown under its own name.
"""
from __future__ import annotations

import functools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bench.card import DEFAULT_ORDER, NO_DEFENSE, DefenseCard, PluginCard

DATASET_LABELS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "tinyimagenet": "TinyImageNet",
                  "imagenette": "Imagenette", "digits": "Digits"}
MODEL_LABELS = {"resnet18": "ResNet18", "resnet34": "ResNet34", "mobilenetv2": "MobileNetV2",
                "cnn_small": "SmallCNN", "cnn_tiny": "TinyCNN"}


ORACLE_SUFFIX = "+oracle"


def _registry(kind: str):
    from bench.registry import ATTACKS, DEFENSES

    return {"attack": ATTACKS, "defense": DEFENSES}[kind]


def base_name(name: str) -> str:
    """A defense's registered name, without the '+oracle' mark of runs with oracle knowledge."""
    name = str(name)
    return name[:-len(ORACLE_SUFFIX)] if name.endswith(ORACLE_SUFFIX) else name


def card(kind: str, name: str) -> PluginCard | None:
    """The card of a registered attack or defense (None for a name no plug-in registers here)."""
    entry = _registry(kind).lookup(base_name(name) if kind == "defense" else str(name))
    return entry.card if entry is not None else None


def label(kind: str, name: str) -> str:
    """The display label of an attack or defense (from its card), dataset or model; a name
    without one is shown as it is. Oracle runs of a defense are labelled '<label> (oracle)'."""
    if kind in ("dataset", "model"):
        return {"dataset": DATASET_LABELS, "model": MODEL_LABELS}[kind].get(name, name)
    found = card(kind, name)
    text = found.display if found is not None else (base_name(name) if kind == "defense" else str(name))
    if kind == "defense" and str(name).endswith(ORACLE_SUFFIX):
        return f"{text} (oracle)"
    return text


def members(kind: str, table: str) -> list[str]:
    """The registered attacks or defenses whose card lists ``table`` (a key of
    :data:`bench.card.TABLES`), in their cards' order."""
    reg = _registry(kind)
    return in_order(kind, [n for n in reg.list("*") if table in reg.lookup(n).card.tables])


def in_order(kind: str, names) -> list[str]:
    """``names`` without repeats, in their cards' order (the paper's), then by name."""
    def key(name):
        found = card(kind, name)
        return (found.order if found is not None else DEFAULT_ORDER, str(name))

    return sorted(dict.fromkeys(names), key=key)


def featured_defense(table: str) -> str | None:
    """The defense a one-defense table or figure studies (Tables V-VII, Figs. 4, 6, 7): the first
    whose card lists it (None when no registered defense does)."""
    found = [d for d in members("defense", table) if d != NO_DEFENSE]
    return found[0] if found else None


def is_variant(defense: str, params: dict) -> bool:
    """Whether a run's parameters make it a variant of the defense (its card's
    ``variant_params``), shown in the variants table and never in the defense's main row."""
    found = card("defense", defense)
    return isinstance(found, DefenseCard) and found.is_variant(params)


def older_code(df: pd.DataFrame) -> pd.Series:
    """True for a run whose attack or defense plug-in code (the record's ``plugin_code``
    fingerprints) differs from the plug-in installed now: its numbers are of an older version of
    the method, and a report says so beside them. Runs without fingerprints are not marked."""
    from bench.spec import plugin_code

    if "plugin_code" not in df.columns or df.empty:
        return pd.Series(False, index=df.index)

    def stale(code, attack: str, defense: str) -> bool:
        code = _as_dict(code)
        return any(code.get(kind) not in (None, plugin_code(kind, name))
                   for kind, name in (("attack", attack), ("defense", base_name(defense))))

    return pd.Series([stale(c, a, d) for c, a, d in zip(df["plugin_code"], df["attack"], df["defense"])],
                     index=df.index, dtype=bool)


def uses_oracle(params: dict) -> bool:
    """True when any ``oracle_*`` parameter is set (not None/False/0): the run had knowledge a
    defender lacks, and every report shows it as a separate '(oracle)' entry."""
    return any(k.startswith("oracle_") and v not in (None, False, 0, "", []) for k, v in params.items())


def _records_frame(records_dir: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(records_dir.glob("*.json")):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            warnings.warn(f"skipping unreadable record {path}")
    return pd.DataFrame(rows)


def load_runs(source: str | Path) -> pd.DataFrame:
    """The tidy table from a results folder, a parquet/CSV file, or a records folder."""
    src = Path(source)
    if src.is_file():
        df = pd.read_parquet(src) if src.suffix == ".parquet" else pd.read_csv(src)
    elif (src / "runs.parquet").exists():
        df = pd.read_parquet(src / "runs.parquet")
    elif (src / "runs.csv").exists():
        df = pd.read_csv(src / "runs.csv")
    elif (src / "records").is_dir():
        df = _records_frame(src / "records")
    else:
        raise FileNotFoundError(f"no results in {src}: expected runs.parquet, runs.csv or records/")
    return normalise(df)


def json_value(v):
    """A record field as written (a dict or list) or as a table holds it (its JSON text); None when
    it is neither (missing, NaN, unreadable)."""
    if isinstance(v, str) and v.strip()[:1] in ("{", "["):
        try:
            return json.loads(v)
        except ValueError:
            return None
    return v if isinstance(v, (dict, list, tuple)) else None


def _as_dict(v) -> dict:
    v = json_value(v)
    return v if isinstance(v, dict) else {}


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Columns every report relies on, with defaults where an older table lacks them."""
    df = df.copy()
    for col, default in [("status", "ok"), ("seed", 0), ("defense_params", "{}"), ("attack_params", "{}"),
                         ("epochs_equiv", np.nan), ("wall_s", np.nan), ("der", np.nan),
                         ("tpr", np.nan), ("fpr", np.nan), ("auroc", np.nan), ("ra", np.nan),
                         ("budget_scale", 1.0)]:
        if col not in df.columns:
            df[col] = default
    if len(df):
        df = df[df["status"].fillna("ok") == "ok"].copy()
    for col in ["acc", "asr", "acc_nodef", "asr_nodef", "der", "tpr", "fpr", "auroc", "ra", "poison_ratio",
                "wall_s", "epochs_equiv", "budget_scale"]:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    df["budget_scale"] = df["budget_scale"].fillna(1.0)   # RunSpec's default, for rows written without it
    df["defense_params"] = df["defense_params"].map(_as_dict)
    if "spec" in df.columns:   # the named preset a run started from (its record keeps the resolved values)
        presets = df["spec"].map(lambda s: _as_dict(_as_dict(s).get("defense_params")).get("preset"))
        df["defense_params"] = [dict(p, preset=n) if n else p for p, n in zip(df["defense_params"], presets)]
    df["params_key"] = df["defense_params"].map(lambda d: json.dumps(d, sort_keys=True))
    oracle = df["defense_params"].map(uses_oracle) if len(df) else pd.Series(dtype=bool)
    if len(df) and oracle.any():
        df.loc[oracle, "defense"] = df.loc[oracle, "defense"].astype(str) + ORACLE_SUFFIX
    return df


@functools.lru_cache(maxsize=None)
def default_params_key(defense: str, preset: str | None = None) -> str | None:
    """The canonical JSON of a defense's default parameters, or of its named ``preset``'s (None if
    the defense is not registered or the preset does not build)."""
    from bench.registry import DEFENSES, params_to_dict

    entry = DEFENSES.lookup(base_name(defense))
    if entry is None:
        return None
    try:
        params = entry.make_params(preset=preset) if preset else entry.make_params()
        return json.dumps(params_to_dict(params), sort_keys=True)
    except Exception:  # noqa: BLE001 - params that do not build on their own: no default row
        return None


def variant_label(defense: str, params: dict) -> str:
    """A defense's display label, with the parameters that differ from its defaults, e.g.
    ``MeCa (warmup_epochs=25)``; the default parameter set gets the plain label. A run from a named
    preset is labelled by it, with what differs from the preset: ``MeCa [spec-v1] (rounds=8)``."""
    preset = params.get("preset")
    default = default_params_key(defense, preset) if preset else None
    if default is None:
        preset, default = None, default_params_key(defense)
    if default is None:
        return label("defense", defense)
    base = json.loads(default)
    changed = {k: v for k, v in sorted(params.items())
               if k != "preset" and json.dumps(base.get(k, "?"), default=str) != json.dumps(v, default=str)}
    text = label("defense", defense) + (f" [{preset}]" if preset else "")
    if not changed:
        return text
    return f"{text} ({', '.join(f'{k}={v}' for k, v in changed.items())})"


def main_budget_scale(df: pd.DataFrame) -> float | None:
    """The defense budget scale most of these runs used (None for no runs)."""
    if df.empty:
        return None
    return float(df["budget_scale"].round(6).value_counts().idxmax())


def at_main_budget(df: pd.DataFrame) -> pd.DataFrame:
    """The runs at the main budget scale. Runs at another scale are another experiment and are
    never pooled with these as if they were more seeds; the variants table shows them apart."""
    scale = main_budget_scale(df)
    return df if scale is None else df[np.isclose(df["budget_scale"], scale)]


def one_variant_per_defense(df: pd.DataFrame, exclude: dict | None = None) -> pd.DataFrame:
    """Keep a single parameter set per defense, at the main budget scale: the default one if
    present, else the most common. Variants (runs matching the defense card's
    ``variant_params``, e.g. MeCa with ``relabel_relearn`` on, which only Table IV and the
    variants table show) are left out.

    ``exclude`` (optional) maps a defense to parameter values that disqualify a row instead of its
    card's variant parameters."""
    df = at_main_budget(df)
    if df.empty:
        return df
    keep = []
    for defense, part in df.groupby("defense"):
        if exclude is None:
            part = part[~part["defense_params"].map(lambda d, name=defense: is_variant(name, d)).astype(bool)]
        elif defense in exclude:
            for key, value in exclude[defense].items():
                part = part[part["defense_params"].map(lambda d: d.get(key) != value)]
        if part.empty:
            continue
        keys = part["params_key"].value_counts()
        default = default_params_key(defense)
        chosen = default if default in keys.index else keys.index[0]
        keep.append(part[part["params_key"] == chosen])
    return pd.concat(keep) if keep else df.iloc[:0]


def main_model(df: pd.DataFrame, preferred: str = "resnet18") -> str | None:
    if df.empty:
        return None
    models = df["model"].value_counts()
    return preferred if preferred in models.index else models.index[0]


def mean_std(values: pd.Series) -> tuple[float, float, int]:
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, int(len(v))


def fmt(mean: float, std: float, n: int, digits: int = 2, scale: float = 100.0) -> str:
    """'85.72' for one seed, '85.72 ± 0.31' for several, '—' when missing (never 0)."""
    if n == 0 or mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if n > 1:
        return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f}"
