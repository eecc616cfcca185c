"""Each measured CIFAR-10 cell beside the MeCa paper's value (Pu et al., arXiv 2405.12719).

The numbers below are the CIFAR-10 rows of the paper's Table II (BadNet, Blend, SIG, WaNet,
PhysicalBA) and Table III (TaCT, Adaptive-Blend, Adaptive-Patch): ACC and ASR in percent, keyed by
the display labels the paper prints, which are the labels on the plug-ins' cards (the paper's
"AdaptivaBlend"/"AdaptivaPatch" are written here as the cards spell them). The paper's setting is
ResNet-18 on all of CIFAR-10 at a 5 % poison ratio with its own defense budgets; a suite measures
its own regime, so every gap has to be read with the record's model, images and budget beside it.
:func:`paper_comparison` puts them side by side and marks each gap over :data:`GAP_POINTS`.
"""
from __future__ import annotations

import io

import pandas as pd

from bench.card import NO_DEFENSE
from bench.reports.tidy import label, one_variant_per_defense

GAP_POINTS = 10.0
DEFENSE_COLUMNS = ("No Defense", "FineTuning", "FinePruning", "CutMix", "CLP", "DBR", "SCAnFT", "ABL", "MeCa")

# attack, then ACC and ASR for each of DEFENSE_COLUMNS (Table II and Table III, CIFAR-10 rows)
_PAPER_CIFAR10 = """\
BadNet        92.00 95.20 83.30 96.81 75.05 93.19 81.21 83.30 34.18 0.55 67.47 1.21 69.89 2.09 71.98 0.00 85.72 0.00
Blend         84.50 99.90 84.62 100.00 79.23 98.79 80.44 99.67 51.00 3.52 37.03 98.46 78.57 1.43 82.20 5.71 85.71 0.00
SIG           84.70 95.40 82.31 95.93 80.88 90.11 79.12 99.12 37.47 71.97 38.57 93.52 66.92 3.63 85.93 48.35 87.69 2.64
WaNet         82.80 51.30 83.41 70.33 79.78 61.65 76.70 31.10 12.75 78.02 26.70 6.15 56.70 60.77 83.74 88.57 83.63 0.00
PhysicalBA    91.60 100.00 86.04 100.00 80.11 49.78 85.38 79.23 27.47 0.00 30.55 5.71 79.01 0.33 87.14 0.99 82.97 0.00
TaCT          82.10 63.20 82.63 65.71 75.05 65.71 78.68 41.43 37.91 3.08 77.58 63.19 72.42 62.20 85.16 48.02 82.42 0.00
AdaptiveBlend 84.00 53.30 82.09 66.48 80.88 54.40 74.95 49.12 49.45 5.49 45.27 12.09 78.90 0.22 88.68 3.41 83.30 0.00
AdaptivePatch 84.80 37.30 84.07 49.78 82.42 0.11 61.65 6.48 70.33 2.09 80.22 25.27 72.64 0.00 83.30 99.34 82.86 0.00
"""


def paper_values() -> pd.DataFrame:
    """The paper's CIFAR-10 values: one row per (attack label, defense label) with ``paper ACC``
    and ``paper ASR`` in percent."""
    rows = []
    for line in io.StringIO(_PAPER_CIFAR10):
        attack, *numbers = line.split()
        values = [float(v) for v in numbers]
        for i, defense in enumerate(DEFENSE_COLUMNS):
            rows.append({"attack": attack, "defense": defense, "paper ACC": values[2 * i],
                         "paper ASR": values[2 * i + 1]})
    return pd.DataFrame(rows)


def paper_comparison(df: pd.DataFrame, gap_points: float = GAP_POINTS) -> pd.DataFrame:
    """Every measured attacked CIFAR-10 cell (seed means) that the paper reports, with the paper's
    ACC and ASR, the differences (measured - paper, in points) and which exceed ``gap_points``."""
    if df.empty:
        return pd.DataFrame()
    part = df[(df["dataset"] == "cifar10") & (df["poison_ratio"] > 0)]
    part = one_variant_per_defense(part) if len(part) else part
    if part.empty:
        return pd.DataFrame()
    part = part.assign(**{c: part[c] if c in part else float("nan") for c in ("n_train", "budget_scale")})
    measured = part.groupby(["model", "attack", "poison_ratio", "defense"], as_index=False).agg(
        acc=("acc", "mean"), asr=("asr", "mean"), seeds=("seed", "nunique"), n_train=("n_train", "first"),
        budget=("budget_scale", "first"))
    measured["attack label"] = [label("attack", a) for a in measured["attack"]]
    measured["defense label"] = ["No Defense" if d == NO_DEFENSE else label("defense", d) for d in measured["defense"]]
    paper = paper_values().rename(columns={"attack": "attack label", "defense": "defense label"})
    out = measured.merge(paper, on=["attack label", "defense label"], how="inner")
    out["ACC %"] = 100 * out["acc"]
    out["ASR %"] = 100 * out["asr"]
    out["ACC gap"] = out["ACC %"] - out["paper ACC"]
    out["ASR gap"] = out["ASR %"] - out["paper ASR"]
    out[f"gap > {gap_points:g}"] = [", ".join(k for k, v in (("ACC", a), ("ASR", s)) if abs(v) > gap_points) or ""
                                    for a, s in zip(out["ACC gap"], out["ASR gap"])]
    order = {d: i for i, d in enumerate(DEFENSE_COLUMNS)}
    out = out.assign(_o=out["defense label"].map(order)).sort_values(["attack label", "_o", "model"])
    return out[["attack label", "defense label", "model", "n_train", "budget", "seeds", "ACC %", "paper ACC",
                "ACC gap", "ASR %", "paper ASR", "ASR gap", f"gap > {gap_points:g}"]].rename(
        columns={"attack label": "attack", "defense label": "defense", "n_train": "train images",
                 "budget": "budget scale"}).reset_index(drop=True)


def comparison_markdown(cmp: pd.DataFrame, gap_points: float = GAP_POINTS) -> str:
    from bench.reports.tables import markdown_table

    if cmp.empty:
        return "No measured CIFAR-10 cell of the paper's Tables II/III in these results.\n"
    n_gap = int((cmp[f"gap > {gap_points:g}"] != "").sum())
    head = (f"Each measured CIFAR-10 cell beside the MeCa paper's Table II/III value (ResNet-18, all of CIFAR-10, "
            f"the paper's budgets); gaps are measured - paper in percentage points, {n_gap} of {len(cmp)} cells "
            f"differ by more than {gap_points:g} points in ACC or ASR.\n\n")
    return head + markdown_table(cmp)
