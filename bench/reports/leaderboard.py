"""The leaderboard: defenses ranked by mean DER over every attacked cell, with spread over seeds.

Columns (points are percentage points; cells are (dataset, model, attack, ratio) at ratio > 0):

* ``mean DER`` — mean over cells of the seed-averaged DER (BackdoorBench), ± the mean over cells
  of the std over seeds;
* ``mean ASR`` and ``mean ACC drop`` (ACC_nodef − ACC), seed-averaged then cell-averaged;
* ``success rate`` — the share of cells whose seed-averaged post-defense ASR is below the
  ``asr_threshold`` (default 20%);
* ``worst ASR`` — the highest seed-averaged ASR over cells (the worst attack);
* ``clean ACC cost`` — ACC drop on clean cells (poison ratio 0), what the defense costs when
  there is no attack; ``epochs`` — mean measured cost in standard-training epochs;
* ``cells`` and ``seeds`` — how much evidence stands behind the row.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.reports.tidy import label, one_variant_per_defense

CELL = ["dataset", "model", "attack", "poison_ratio"]


def leaderboard(df: pd.DataFrame, asr_threshold: float = 0.20) -> pd.DataFrame:
    df = one_variant_per_defense(df, exclude={"meca": {"relabel_relearn": True}})
    df = df[df["defense"] != "none"]
    if df.empty:
        return pd.DataFrame()
    df = df.assign(acc_drop=df["acc_nodef"] - df["acc"])
    attacked = df[(df["poison_ratio"] > 0) & df["asr"].notna()]
    clean = df[np.isclose(df["poison_ratio"], 0.0)]
    rows = []
    for defense, part in attacked.groupby("defense"):
        per_cell = part.groupby(CELL).agg(der=("der", "mean"), der_std=("der", "std"), asr=("asr", "mean"),
                                          acc_drop=("acc_drop", "mean"), seeds=("seed", "nunique"))
        cost = part["epochs_equiv"].mean()
        clean_part = clean[clean["defense"] == defense]
        rows.append({
            "defense": label("defense", defense), "name": defense,
            "mean DER": per_cell["der"].mean(), "DER spread": per_cell["der_std"].fillna(0).mean(),
            "mean ASR": per_cell["asr"].mean(), "mean ACC drop": per_cell["acc_drop"].mean(),
            "success rate": (per_cell["asr"] < asr_threshold).mean(), "worst ASR": per_cell["asr"].max(),
            "clean ACC cost": clean_part["acc_drop"].mean() if len(clean_part) else math.nan,
            "epochs": cost, "cells": len(per_cell), "seeds": int(per_cell["seeds"].max()),
        })
    board = pd.DataFrame(rows).sort_values("mean DER", ascending=False, ignore_index=True)
    board.insert(0, "rank", range(1, len(board) + 1))
    return board


def leaderboard_markdown(board: pd.DataFrame, asr_threshold: float = 0.20) -> str:
    if board.empty:
        return "No defended runs in these results.\n"
    pct = lambda v: "—" if pd.isna(v) else f"{v * 100:.1f}"  # noqa: E731
    head = ["#", "Defense", "mean DER", "mean ASR", "mean ACC drop", f"success (ASR<{asr_threshold * 100:g}%)",
            "worst ASR", "clean ACC cost", "cost (epochs)", "cells", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in board.iterrows():
        der = f"{r['mean DER'] * 100:.1f} ± {r['DER spread'] * 100:.1f}" if r["seeds"] > 1 else f"{r['mean DER'] * 100:.1f}"
        lines.append("| " + " | ".join([str(r["rank"]), r["defense"], der, pct(r["mean ASR"]), pct(r["mean ACC drop"]),
                                        pct(r["success rate"]), pct(r["worst ASR"]), pct(r["clean ACC cost"]),
                                        "—" if pd.isna(r["epochs"]) else f"{r['epochs']:.2f}",
                                        str(r["cells"]), str(r["seeds"])]) + " |")
    return "\n".join(lines) + "\n"


def cost_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean wall seconds and measured epochs (and standard trainings) per defense."""
    if df.empty:
        return pd.DataFrame()
    g = df.groupby("defense").agg(runs=("run_id", "count") if "run_id" in df else ("defense", "size"),
                                  wall_s=("wall_s", "mean"), epochs_equiv=("epochs_equiv", "mean"))
    g.index = [label("defense", d) for d in g.index]
    return g.sort_values("epochs_equiv")
