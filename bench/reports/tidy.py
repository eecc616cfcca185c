"""Loading the tidy table and the helpers every report shares (selection, aggregation, labels).

All reports read ``results/runs.parquet`` (or ``runs.csv``, or the records themselves when the
table has not been consolidated yet). Rates stay fractions in the table; reports print points.
"""
from __future__ import annotations

import functools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

DEFENSE_LABELS = {
    "none": "No Defense", "fine_tuning": "FineTuning", "fine_pruning": "FinePruning", "cutmix": "CutMix",
    "clp": "CLP", "dbr": "DBR", "scan_ft": "SCAnFT", "abl": "ABL", "meca": "MeCa", "nt_ml": "NT-ML",
    "mcldef": "MCLDef", "bcu": "BCU",
}
ATTACK_LABELS = {
    "badnet": "BadNet", "blend": "Blend", "sig": "SIG", "wanet": "WaNet", "physicalba": "PhysicalBA",
    "tact": "TaCT", "adaptive_blend": "AdaptiveBlend", "adaptive_patch": "AdaptivePatch",
    "narcissus": "Narcissus", "lc": "LC", "trojan": "Trojan", "iad": "IAD", "clean": "Clean",
}
DATASET_LABELS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "tinyimagenet": "TinyImageNet",
                  "imagenette": "Imagenette", "digits": "Digits"}
MODEL_LABELS = {"resnet18": "ResNet18", "resnet34": "ResNet34", "mobilenetv2": "MobileNetV2",
                "cnn_small": "SmallCNN", "cnn_tiny": "TinyCNN"}


ORACLE_SUFFIX = "+oracle"


def label(kind: str, name: str) -> str:
    table = {"defense": DEFENSE_LABELS, "attack": ATTACK_LABELS, "dataset": DATASET_LABELS,
             "model": MODEL_LABELS}[kind]
    if kind == "defense" and str(name).endswith(ORACLE_SUFFIX):
        return f"{table.get(name[:-len(ORACLE_SUFFIX)], name[:-len(ORACLE_SUFFIX)])} (oracle)"
    return table.get(name, name)


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


def _as_dict(v) -> dict:
    if isinstance(v, dict):
        return v
    if isinstance(v, str) and v.strip().startswith("{"):
        try:
            return json.loads(v)
        except ValueError:
            return {}
    return {}


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
    df["params_key"] = df["defense_params"].map(lambda d: json.dumps(d, sort_keys=True))
    oracle = df["defense_params"].map(uses_oracle) if len(df) else pd.Series(dtype=bool)
    if len(df) and oracle.any():
        df.loc[oracle, "defense"] = df.loc[oracle, "defense"].astype(str) + ORACLE_SUFFIX
    return df


@functools.lru_cache(maxsize=None)
def default_params_key(defense: str) -> str | None:
    """The canonical JSON of a defense's default parameters (None if it is not registered)."""
    try:
        from bench.registry import DEFENSES, params_to_dict

        name = defense[:-len(ORACLE_SUFFIX)] if defense.endswith(ORACLE_SUFFIX) else defense
        return json.dumps(params_to_dict(DEFENSES.get(name).make_params()), sort_keys=True)
    except Exception:
        return None


def variant_label(defense: str, params: dict) -> str:
    """A defense's display label, with the parameters that differ from its defaults, e.g.
    ``MeCa (warmup_epochs=25)``; the default parameter set gets the plain label."""
    default = default_params_key(defense)
    if default is None:
        return label("defense", defense)
    base = json.loads(default)
    changed = {k: v for k, v in sorted(params.items())
               if k != "preset" and json.dumps(base.get(k, "?"), default=str) != json.dumps(v, default=str)}
    if not changed:
        return label("defense", defense)
    return f"{label('defense', defense)} ({', '.join(f'{k}={v}' for k, v in changed.items())})"


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
    present, else the most common.

    ``exclude`` maps a defense to parameter values that disqualify a row (e.g. MeCa with
    ``relabel_relearn`` on, which only Table IV shows)."""
    df = at_main_budget(df)
    if df.empty:
        return df
    keep = []
    for defense, part in df.groupby("defense"):
        if exclude and defense in exclude:
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
