"""Every cell and every defense variant in one long table: repair and detection side by side.

One row per (dataset, model, attack, poison ratio, defense variant), seeds pooled: ACC, ASR and RA
(mean, and the spread over seeds where there are several), a detecting defense's TPR, FPR and
AUROC, the cell's no-defense ACC and ASR, and the MeCa paper's CIFAR-10 value where its Table II/III
has one (:mod:`bench.reports.paper`). Variants are labelled as in the variants table (``MeCa``,
``MeCa [spec-v1]``, ``MeCa (relabel_relearn=True)``), so a defense's settings are compared on the
same cells, e.g. a frozen default beside the preset it replaced. Runs at another budget scale than
the folder's main one are rows of their own (the ``budget scale`` column).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.card import NO_DEFENSE
from bench.reports.audit import broken
from bench.reports.paper import paper_values
from bench.reports.tidy import label, variant_label

METRICS = ("acc", "asr", "ra", "tpr", "fpr", "auroc")
_KEYS = ["dataset", "model", "attack", "poison_ratio", "budget_scale", "variant"]


def cells_table(df: pd.DataFrame) -> pd.DataFrame:
    """The long table described above (an empty frame for no attacked runs); values in percent,
    AUROC as a fraction."""
    part = df[df["poison_ratio"] > 0] if len(df) else df
    if part.empty:
        return pd.DataFrame()
    part = part.assign(variant=[("No Defense" if d == NO_DEFENSE else variant_label(d, p))
                                for d, p in zip(part["defense"], part["defense_params"])],
                       defense_label=["No Defense" if d == NO_DEFENSE else label("defense", d)
                                      for d in part["defense"]])
    grouped = part.groupby(_KEYS, dropna=False)
    out = grouped.agg(defense=("defense_label", "first"), seeds=("seed", "nunique"),
                      acc_nodef=("acc_nodef", "mean"), asr_nodef=("asr_nodef", "mean"),
                      **{m: (m, "mean") for m in METRICS},
                      **{f"{m}_sd": (m, "std") for m in ("acc", "asr")}).reset_index()
    out["broken"] = broken(out)
    out["attack label"] = [label("attack", a) for a in out["attack"]]
    paper = paper_values().rename(columns={"attack": "attack label", "defense": "defense"})
    out = out.merge(paper, on=["attack label", "defense"], how="left")
    is_cifar = out["dataset"].eq("cifar10")
    out.loc[~is_cifar, ["paper ACC", "paper ASR"]] = np.nan
    out = out.assign(_o=out["variant"].ne("No Defense")).sort_values(   # the victim first
        ["dataset", "model", "attack label", "poison_ratio", "budget_scale", "_o", "variant"])
    frame = pd.DataFrame({
        "dataset": out["dataset"].map(lambda d: label("dataset", d)),
        "model": out["model"].map(lambda m: label("model", m)),
        "attack": out["attack label"], "ratio": out["poison_ratio"], "budget scale": out["budget_scale"],
        "defense": out["variant"], "seeds": out["seeds"],
        "ACC %": 100 * out["acc"], "ACC sd": 100 * out["acc_sd"], "ASR %": 100 * out["asr"],
        "ASR sd": 100 * out["asr_sd"], "RA %": 100 * out["ra"],
        "TPR %": 100 * out["tpr"], "FPR %": 100 * out["fpr"], "AUROC": out["auroc"],
        "victim ACC %": 100 * out["acc_nodef"], "victim ASR %": 100 * out["asr_nodef"],
        "paper ACC": out["paper ACC"], "paper ASR": out["paper ASR"], "broken model": out["broken"].astype(bool)})
    return frame.reset_index(drop=True)


def _number(v, digits: int = 1) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def cells_markdown(frame: pd.DataFrame) -> str:
    """The table in Markdown: a value ``± sd`` where seeds vary, † on a broken model's ACC."""
    if frame.empty:
        return "(no attacked cell)\n"
    head = ["dataset", "model", "attack", "ratio", "budget", "defense", "seeds", "ACC %", "ASR %", "RA %",
            "TPR %", "FPR %", "AUROC", "victim ACC / ASR", "paper ACC / ASR"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in frame.to_dict("records"):
        def pm(col: str) -> str:
            sd = r.get(col.replace("%", "sd"))
            spread = f" ± {sd:.1f}" if r["seeds"] > 1 and sd is not None and not np.isnan(sd) else ""
            return _number(r[col]) + spread
        acc = pm("ACC %") + (" †" if r["broken model"] else "")
        paper = ("—" if np.isnan(r["paper ACC"]) else f"{r['paper ACC']:.1f} / {r['paper ASR']:.1f}")
        lines.append("| " + " | ".join([
            r["dataset"], r["model"], r["attack"], f"{r['ratio']:g}", f"{r['budget scale']:g}", r["defense"],
            str(r["seeds"]), acc, pm("ASR %"), _number(r["RA %"]), _number(r["TPR %"]), _number(r["FPR %"]),
            _number(r["AUROC"], 3), f"{_number(r['victim ACC %'])} / {_number(r['victim ASR %'])}", paper]) + " |")
    return "\n".join(lines) + "\n"
