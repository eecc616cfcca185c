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
import re

import pandas as pd

from bench.card import NO_DEFENSE
from bench.reports.tidy import json_value, label, one_variant_per_defense

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
    part = part.assign(**{c: part[c] if c in part else float("nan")
                          for c in ("n_train", "budget_scale", "tpr", "fpr")})
    part = part.assign(phases=[_phases(p) for p in (part["phases"] if "phases" in part else [None] * len(part))])
    measured = part.groupby(["model", "attack", "poison_ratio", "defense"], as_index=False).agg(
        acc=("acc", "mean"), asr=("asr", "mean"), seeds=("seed", "nunique"), n_train=("n_train", "first"),
        budget=("budget_scale", "first"), tpr=("tpr", "mean"), fpr=("fpr", "mean"), phases=("phases", "first"))
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
    out = _with_victims(out, measured, paper)
    out["reading"] = [_reading(row, gap_points) for row in out.to_dict("records")]
    order = {d: i for i, d in enumerate(DEFENSE_COLUMNS)}
    out = out.assign(_o=out["defense label"].map(order)).sort_values(["attack label", "_o", "model"])
    return out[["attack label", "defense label", "model", "n_train", "budget", "seeds", "ACC %", "paper ACC",
                "ACC gap", "ASR %", "paper ASR", "ASR gap", f"gap > {gap_points:g}", "victim ACC gap",
                "victim ASR gap", "reading"]].rename(
        columns={"attack label": "attack", "defense label": "defense", "n_train": "train images",
                 "budget": "budget scale"}).reset_index(drop=True)


def _with_victims(out: pd.DataFrame, measured: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Each row with its own victim beside it: the measured no-defense ACC/ASR of the same model,
    attack and ratio, the paper's no-defense values, and the gaps between the two victims."""
    victims = measured[measured["defense"] == NO_DEFENSE][["model", "attack", "poison_ratio", "acc", "asr"]]
    victims = victims.rename(columns={"acc": "victim acc", "asr": "victim asr"})
    paper_victims = paper[paper["defense label"] == "No Defense"][["attack label", "paper ACC", "paper ASR"]]
    paper_victims = paper_victims.rename(columns={"paper ACC": "paper victim ACC", "paper ASR": "paper victim ASR"})
    out = out.merge(victims, on=["model", "attack", "poison_ratio"], how="left")
    out = out.merge(paper_victims, on="attack label", how="left")
    out["victim ACC gap"] = 100 * out["victim acc"] - out["paper victim ACC"]
    out["victim ASR gap"] = 100 * out["victim asr"] - out["paper victim ASR"]
    return out


def _points(x: float) -> str:
    return f"{round(x, 1) + 0.0:+.1f}"   # + 0.0: no "-0.0"


def _reading(row: dict, gap_points: float) -> str:
    """What the records say about a gap, from measurements only: whether the defense changed ACC
    and ASR against its own victim as much as the paper's defense did against the paper's victim
    (then the gap is the victim's: the regime, not the method), the budget scale, and whether the
    defense's settings are reconstructed (its card's ``settings`` or ``provisional``)."""
    parts = []
    victim = row.get("victim acc")
    has_victim = victim is not None and victim == victim   # not NaN
    for metric, gap in (("ACC", row["ACC gap"]), ("ASR", row["ASR gap"])):
        if abs(gap) <= gap_points:
            continue
        if not has_victim:
            parts.append(f"{metric}: no victim measured")
            continue
        change = 100 * (row[f"victim {metric.lower()}"] - row[metric.lower()])
        paper_change = row[f"paper victim {metric}"] - row[f"paper {metric}"]
        victim_gap = row[f"victim {metric} gap"]
        if abs(change - paper_change) <= gap_points:
            parts.append(f"{metric}: the victim's gap ({_points(victim_gap)}); the defense changed it as in the "
                         f"paper ({_points(-change)} vs {_points(-paper_change)})")
        else:
            parts.append(f"{metric}: the defense changed its victim by {_points(-change)} points, the paper's by "
                         f"{_points(-paper_change)} (victim gap {_points(victim_gap)})")
    if parts and row["defense"] != NO_DEFENSE:
        tpr, fpr = row.get("tpr"), row.get("fpr")
        if tpr is not None and tpr == tpr:   # a defense that flags training images: how well it did
            parts.append(f"its detection: TPR {100 * tpr:.0f} %, FPR {100 * fpr:.1f} %")
        budget_part = _budget_reading(row.get("budget"), row.get("phases"))
        if budget_part:
            parts.append(budget_part)
        status = _settings_status(row["defense"])
        if status:
            parts.append(status)
    return "; ".join(parts)


def _phases(value) -> list | None:
    """A record's ``phases`` (a list, or its JSON in a table); None when the record has none."""
    value = json_value(value)
    return list(value) if isinstance(value, (list, tuple)) else None


def _budget_reading(budget, phases) -> str:
    """The budget a gap was measured under: its scale with the optimiser steps each of the defense's
    phases took (from the record), or that the defense trains nothing, so the scale cannot be the
    cause."""
    if phases is not None and not phases:
        return "no training phase ran (the budget does not apply)"
    if budget is None or budget != budget or budget >= 1:
        return ""
    return f"defense budget x{budget:g}" + (f" ({_phase_steps(phases)})" if phases else "")


def _phase_steps(phases: list) -> str:
    """Each phase's optimiser steps, repeated rounds folded (``dbr unlearn 5x19 steps``)."""
    grouped: dict[str, list] = {}
    for p in phases:
        name = re.sub(r" \d+$", "", str(p.get("phase", "?")))
        grouped.setdefault(name, []).append((p.get("steps", "?"), _epochs(p.get("epochs"))))
    out = []
    for name, runs in grouped.items():
        if len({steps for steps, _ in runs}) == 1:
            (steps, epochs), n = runs[0], len(runs)
            epochs = epochs if len(set(runs)) == 1 else ""   # rounds over data of different sizes
            out.append(f"{name} {f'{n}x' if n > 1 else ''}{steps} steps{f' = {epochs} ep' if epochs else ''}")
        else:
            out.append(f"{name} {'+'.join(str(steps) for steps, _ in runs)} steps")
    return ", ".join(out)


def _epochs(value) -> str:
    """A phase's epochs over the data it trained on, as read (``10``, ``2.5``); "" when unknown."""
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return ""


def _settings_status(defense: str) -> str:
    """"provisional" or "settings reconstructed" when the defense's card says its defaults are not
    (all) the paper's; "" otherwise."""
    from bench.reports.tidy import card

    c = card("defense", defense)
    if c is None:
        return ""
    if getattr(c, "provisional", False):
        return "provisional reproduction"
    sources = {source for source, _ in (getattr(c, "settings", None) or {}).values()}
    return "settings reconstructed (settings.md)" if sources - {"paper"} else ""


def comparison_markdown(cmp: pd.DataFrame, gap_points: float = GAP_POINTS) -> str:
    from bench.reports.tables import markdown_table

    if cmp.empty:
        return "No measured CIFAR-10 cell of the paper's Tables II/III in these results.\n"
    n_gap = int((cmp[f"gap > {gap_points:g}"] != "").sum())
    head = (f"Each measured CIFAR-10 cell beside the MeCa paper's Table II/III value (ResNet-18, all of CIFAR-10, "
            f"the paper's budgets); gaps are measured - paper in percentage points, {n_gap} of {len(cmp)} cells "
            f"differ by more than {gap_points:g} points in ACC or ASR. `reading` says, from the records, where "
            f"each gap comes from: when the defense moved ACC (or ASR) against its own victim as far as the "
            f"paper's defense moved the paper's victim (within {gap_points:g} points), the gap is the victim's "
            f"(the regime: model, images, epochs), not the method's; otherwise the change of each is given, "
            f"with what the record measured of the defense: its detection (TPR/FPR of the training images "
            f"it flagged), the budget scale with the optimiser steps each phase took (or that it trained "
            f"nothing), and whether its settings are reconstructed.\n\n")
    # a setting, not a measurement: as given (0.25 would read 0.2 at one decimal)
    scales = cmp["budget scale"].map(lambda b: "" if b is None or b != b else f"{b:g}")
    return head + markdown_table(cmp.assign(**{"budget scale": scales}))
