"""The audit: runs that look impossible, and defenses that broke the model.

Every report reads its verdicts about single runs from here, so the leaderboard, ``compare`` and
the tables agree on them.

:func:`flag_reasons` gives, for each run (a row of the tidy table), why it looks impossible, or
``""`` when nothing does. The rules (thresholds are keyword arguments):

* **ACC above its own baseline**: clean ACC more than ``acc_margin`` (default 5 points) above the
  same cell's no-defense ACC (``acc_nodef``). A repair starts from that model and a training-time
  defense trains on the same poisoned data with a comparable budget; gaining that much clean
  accuracy means the run saw data it was not handed (e.g. the test set).
* **Perfect detection at zero cost**: TPR 1 and FPR 0 while the defense made no training pass
  (``epochs_equiv`` at most ``zero_cost_epochs``) and took at most ``zero_cost_wall_s`` seconds:
  the poison mask read rather than found.
* **Wrong architecture**: ``arch_ok`` is false (the returned model did not load into the cell's
  architecture). Records written before the field existed (missing, null) are unknown, not flagged.

A flagged run is shown with its reason (the leaderboard's flagged table, ``compare``'s summary),
never ranked.

:func:`broken` says which rows lost more than ``max_acc_drop`` (default 10 points) of clean
accuracy against no defense: a defense that does that has removed the backdoor by breaking the
model, and every table and figure marks it (:data:`BROKEN_MARK`).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.card import NO_DEFENSE

ACC_MARGIN = 0.05          # audit: ACC more than this above the cell's no-defense ACC
ZERO_COST_EPOCHS = 0.01    # audit: "no training pass"
ZERO_COST_WALL_S = 1.0     # audit: "no time"
MAX_ACC_DROP = 0.10        # broken model: ACC more than this below the cell's no-defense ACC
EPS = 1e-9                 # rates are sums of 1/n: compare with a tolerance, not bit for bit
BROKEN_MARK = "broken model"
BROKEN_SIGN = "†"          # beside a broken model's number in the paper tables and the figures
BROKEN_NOTE = f"{BROKEN_MARK}: ACC more than {MAX_ACC_DROP * 100:g} points below no defense"
CLEAN_BROKEN_SIGN = "‡"    # beside a defense's name in the figures: it broke the model of a clean cell
CLEAN_BROKEN_NOTE = f"{BROKEN_MARK} on the clean cell (no attack): ACC more than {MAX_ACC_DROP * 100:g} points below no defense"


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column, all NaN where the table lacks it."""
    if name not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[name], errors="coerce")


def acc_drop(df: pd.DataFrame) -> pd.Series:
    """``acc_nodef - acc`` per row (fraction; negative when the defense gained accuracy)."""
    return _column(df, "acc_nodef") - _column(df, "acc")


def broken(df: pd.DataFrame, max_acc_drop: float = MAX_ACC_DROP) -> pd.Series:
    """True where clean ACC fell more than ``max_acc_drop`` below the no-defense ACC.

    Works on any frame with ``acc`` and ``acc_nodef`` columns: runs, or per-cell / per-defense
    means of them. Rows without both values are not broken (unknown)."""
    return (acc_drop(df) > max_acc_drop + EPS).fillna(False).astype(bool)


def _is_false(value) -> bool:
    """``arch_ok`` as read back from JSON, parquet or CSV: False, "false", 0; None/NaN = unknown."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if isinstance(value, str):
        return value.strip().lower() in ("false", "0")
    return not bool(value)


def _pct(v: float) -> str:
    return f"{v * 100:.1f}"


def flag_reasons(df: pd.DataFrame, acc_margin: float = ACC_MARGIN, zero_cost_epochs: float = ZERO_COST_EPOCHS,
                 zero_cost_wall_s: float = ZERO_COST_WALL_S) -> pd.Series:
    """Why each run looks impossible (``"; "``-joined), ``""`` for a run that does not.

    Indexed like ``df``; no-defense rows are never flagged (they are the baseline)."""
    reasons = pd.Series("", index=df.index, dtype=object)
    if df.empty:
        return reasons
    defended = df["defense"].astype(str) != NO_DEFENSE if "defense" in df.columns else pd.Series(True, index=df.index)
    acc, acc_nodef = _column(df, "acc"), _column(df, "acc_nodef")
    above = defended & (acc > acc_nodef + acc_margin + EPS)
    tpr, fpr = _column(df, "tpr"), _column(df, "fpr")
    epochs, wall = _column(df, "epochs_equiv"), _column(df, "wall_s")
    free = (epochs <= zero_cost_epochs + EPS) & (wall <= zero_cost_wall_s + EPS)   # unknown cost is not zero
    perfect = defended & (tpr >= 1 - EPS) & (fpr <= EPS) & free
    arch = df["arch_ok"].map(_is_false) if "arch_ok" in df.columns else pd.Series(False, index=df.index)
    wrong_arch = defended & arch.astype(bool)

    def add(mask: pd.Series, text) -> None:
        for i in mask[mask.fillna(False)].index:
            reasons[i] = f"{reasons[i]}; {text(i)}" if reasons[i] else text(i)

    add(above, lambda i: f"clean ACC {_pct(acc[i])} is more than {acc_margin * 100:g} points above "
                         f"the cell's no-defense ACC {_pct(acc_nodef[i])}")
    add(perfect, lambda i: f"perfect detection (TPR 100, FPR 0) at zero cost "
                           f"({epochs[i]:.2f} epochs, {wall[i]:.2f} s)")
    add(wrong_arch, lambda i: "the returned model is not of the cell's architecture (arch_ok false)")
    return reasons


def flagged(df: pd.DataFrame, **audit_options) -> pd.Series:
    """True for each run :func:`flag_reasons` gives a reason for."""
    return flag_reasons(df, **audit_options) != ""
