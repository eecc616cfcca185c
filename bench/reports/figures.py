"""Figures (PNG and PDF, seaborn): the MeCa paper's Figs. 4, 6 and 7 and the suite's own views.

* ``fig4_kl_hist``: MeCa's round-1 KL-consistency scores, clean vs poisoned, one panel per attack;
* ``fig6_enhancement``: ACC and ASR of MeCa's enhanced model after each enhancement round;
* ``fig7_partition_rate``: ACC and ASR against MeCa's partition rate, one line per attack;

(the defense these three draw is the one whose card lists ``fig4``, ``fig6``, ``fig7``);
* ``heatmap_asr`` / ``heatmap_acc_drop``: attack x defense;
* ``scatter_acc_asr``: ACC vs ASR per defense with the Pareto front;
* ``asr_vs_ratio``: ASR against the poison ratio, one line per defense;
* ``roc``: detection ROC curves of defenses that score training samples.

A cell or defense whose model is broken (:func:`bench.reports.audit.broken`) is marked † in the
heatmaps and the scatter, and left off the Pareto front. A defense that broke the model of a clean
cell (no attack; :func:`broken_on_clean`), which no attacked cell of these figures shows, is marked
‡ beside its name in both, and is left off the front too: the leaderboard ranks it broken.

Per-sample data come from the diagnostics files the scheduler writes beside the records
(``diagnostics/<run_id>.pt``); everything else from the tidy table.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from bench.card import NO_DEFENSE  # noqa: E402
from bench.files import load_data  # noqa: E402
from bench.reports import audit  # noqa: E402
from bench.reports.tidy import featured_defense, is_variant, label, one_variant_per_defense  # noqa: E402

sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)


def load_diagnostics(results_dir: Path, run_id: str) -> dict | None:
    """A run's diagnostics file (None when there is none), loaded as data only: a file that is not
    plain tensor data raises :class:`bench.files.UnsafeFileError` and nothing in it runs."""
    path = results_dir / "diagnostics" / f"{run_id}.pt"
    if not path.exists():
        return None
    diag = load_data(path, "diagnostics file")
    return diag if isinstance(diag, dict) else None


def _save(fig, folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def _attack_label(df):
    return df["attack"].map(lambda a: label("attack", a))


def _featured_runs(df: pd.DataFrame, figure: str) -> tuple[pd.DataFrame, str]:
    """The attacked runs of the defense a figure studies (its card lists the figure), and its label."""
    defense = featured_defense(figure)
    return df[(df["defense"] == defense) & (df["poison_ratio"] > 0)], label("defense", defense or "?")


def fig4_kl_hist(df: pd.DataFrame, results_dir: Path, out: Path) -> list[Path]:
    rows = []
    runs, who = _featured_runs(df, "fig4")
    for _, r in runs.iterrows():
        diag = load_diagnostics(results_dir, r["run_id"])
        if not diag or "kl_round1" not in diag.get("sample_logs", {}):
            continue
        kl = diag["sample_logs"]["kl_round1"].numpy()
        mask = diag["poison_mask"].numpy().astype(bool)
        rows.append(pd.DataFrame({"KL": np.log10(kl + 1e-8), "sample": np.where(mask, "poisoned", "clean"),
                                  "attack": label("attack", r["attack"])}))
    if not rows:
        return []
    data = pd.concat(rows)
    g = sns.displot(data, x="KL", hue="sample", col="attack", col_wrap=min(4, data["attack"].nunique()),
                    stat="density", common_norm=False, bins=40, element="step", height=2.6,
                    facet_kws={"sharey": False}, palette={"clean": "#4C72B0", "poisoned": "#C44E52"})
    g.set_axis_labels("log10 KL score (round 1)", "density")
    g.figure.suptitle(f"Fig. 4 — {who} round-1 KL consistency of clean and poisoned training samples", y=1.03)
    return _save(g.figure, out, "fig4_kl_hist")


def fig6_enhancement(df: pd.DataFrame, results_dir: Path, out: Path) -> list[Path]:
    rows = []
    runs, who = _featured_runs(df, "fig6")
    for _, r in runs.iterrows():
        diag = load_diagnostics(results_dir, r["run_id"])
        for cp in (diag or {}).get("checkpoints", []):
            tag = str(cp.get("tag", ""))
            if not tag.startswith("enhance"):
                continue
            digits = "".join(ch for ch in tag if ch.isdigit())
            rnd = int(digits) if digits else 0
            for metric in ("acc", "asr"):
                rows.append({"round": rnd, "value": cp[metric] * 100, "metric": metric.upper(),
                             "attack": label("attack", r["attack"])})
    if not rows:
        return []
    data = pd.DataFrame(rows)
    g = sns.relplot(data, x="round", y="value", hue="attack", col="metric", kind="line", marker="o",
                    height=3, aspect=1.2, errorbar="sd")
    g.set_axis_labels("enhancement round", "%")
    g.figure.suptitle(f"Fig. 6 — ACC and ASR of {who}'s enhanced model over enhancement rounds", y=1.04)
    return _save(g.figure, out, "fig6_enhancement")


def fig7_partition_rate(df: pd.DataFrame, out: Path) -> list[Path]:
    sel, who = _featured_runs(df, "fig7")
    sel = sel[np.array([not is_variant(d, p) for d, p in zip(sel["defense"], sel["defense_params"])], dtype=bool)]
    sel = sel.assign(partition_rate=sel["defense_params"].map(lambda d: d.get("partition_rate")))
    sel = sel.dropna(subset=["partition_rate"])
    if sel["partition_rate"].nunique() < 2:
        return []
    long = sel.melt(id_vars=["partition_rate", "attack"], value_vars=["acc", "asr"], var_name="metric")
    long = long.assign(value=long["value"] * 100, metric=long["metric"].str.upper(),
                       attack=long["attack"].map(lambda a: label("attack", a)))
    g = sns.relplot(long, x="partition_rate", y="value", hue="attack", col="metric", kind="line", marker="o",
                    height=3, aspect=1.2, errorbar="sd")
    g.set_axis_labels("partition rate", "%")
    g.figure.suptitle(f"Fig. 7 — {who} ACC and ASR against the partition rate", y=1.04)
    return _save(g.figure, out, "fig7_partition_rate")


def broken_on_clean(df: pd.DataFrame) -> set[str]:
    """Defenses whose mean ACC over clean cells (poison ratio 0) is more than the audit's
    ``MAX_ACC_DROP`` below no defense's there (:func:`bench.reports.audit.broken`)."""
    clean = one_variant_per_defense(df[df["poison_ratio"] == 0])
    if clean.empty:
        return set()
    means = clean.groupby("defense")[["acc", "acc_nodef"]].mean()
    return {d for d, bad in audit.broken(means).items() if bad}


def defense_name(defense: str, clean_broken: set[str]) -> str:
    """A defense's label in a figure, marked ‡ when it broke a clean cell's model."""
    return label("defense", defense) + (f" {audit.CLEAN_BROKEN_SIGN}" if defense in clean_broken else "")


def _broken_notes(on_cell: bool, on_clean: bool) -> str:
    notes = ([f"{audit.BROKEN_SIGN} {audit.BROKEN_NOTE}"] if on_cell else []) \
        + ([f"{audit.CLEAN_BROKEN_SIGN} {audit.CLEAN_BROKEN_NOTE}"] if on_clean else [])
    return "\n".join(notes)


def heatmaps(df: pd.DataFrame, out: Path) -> list[Path]:
    sel = one_variant_per_defense(df[df["poison_ratio"] > 0])
    if sel.empty:
        return []
    clean_broken = broken_on_clean(df) & set(sel["defense"])
    sel = sel.assign(acc_drop=(sel["acc_nodef"] - sel["acc"]) * 100, asr_pct=sel["asr"] * 100,
                     A=_attack_label(sel), D=sel["defense"].map(lambda d: defense_name(d, clean_broken)))
    nodef = label("defense", NO_DEFENSE)
    paths = []
    for col, stem, title, cmap in [("asr_pct", "heatmap_asr", "ASR after defense (%)", "Reds"),
                                   ("acc_drop", "heatmap_acc_drop", "ACC drop vs no defense (points)", "Blues")]:
        pivot = sel.pivot_table(index="A", columns="D", values=col, aggfunc="mean")
        # attacks that only have a no-defense run would be rows of blanks: leave them out
        pivot = pivot[pivot.drop(columns=[nodef], errors="ignore").notna().any(axis=1)] \
            if pivot.shape[1] > 1 else pivot
        if pivot.empty:
            continue
        pivot = pivot[sorted(pivot.columns, key=lambda c: (c != nodef, c))]   # No Defense first
        means = sel.groupby(["A", "D"])[["acc", "acc_nodef"]].mean()
        bad = audit.broken(means)
        text = pivot.apply(lambda col: [("" if math.isnan(v) else f"{v:.0f}")
                                        + (audit.BROKEN_SIGN if bad.get((a, col.name), False) else "")
                                        for a, v in col.items()])
        fig, ax = plt.subplots(figsize=(1.0 + 0.8 * pivot.shape[1], 0.9 + 0.5 * pivot.shape[0]))
        sns.heatmap(pivot, annot=text, fmt="", cmap=cmap, cbar_kws={"label": title}, ax=ax, linewidths=0.5)
        ax.grid(False)
        ax.set_xlabel("defense")
        ax.set_ylabel("attack")
        notes = _broken_notes(bool(bad.any()), bool(clean_broken))
        ax.set_title(title + (f"\n{notes}" if notes else ""), fontsize=10)
        paths += _save(fig, out, stem)
    return paths


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Indices of points not dominated in (high ACC, low ASR)."""
    keep = []
    for i, (acc, asr) in enumerate(points):
        dominated = any((a >= acc and s <= asr) and (a > acc or s < asr) for j, (a, s) in enumerate(points) if j != i)
        if not dominated:
            keep.append(i)
    return np.array(keep, dtype=int)


def scatter_acc_asr(df: pd.DataFrame, out: Path) -> list[Path]:
    sel = one_variant_per_defense(df[df["poison_ratio"] > 0])
    if sel.empty:
        return []
    g = sel.groupby("defense").agg(acc=("acc", "mean"), asr=("asr", "mean"), acc_nodef=("acc_nodef", "mean"))
    g = g.dropna(subset=["acc", "asr"])
    if g.empty:
        return []
    bad = audit.broken(g)
    clean_broken = broken_on_clean(df) & set(g.index)
    g = g[["acc", "asr"]] * 100
    fig, ax = plt.subplots(figsize=(7, 5))
    names = [defense_name(d, clean_broken) + (f" {audit.BROKEN_SIGN}" if bad[d] else "") for d in g.index]
    # distinct colours and markers: a dozen defenses must stay tellable apart where they cluster
    sns.scatterplot(x=g["asr"], y=g["acc"], hue=names, style=names, s=90, ax=ax,
                    palette=sns.color_palette("tab20", len(names)))
    usable = g[~bad & ~g.index.isin(list(clean_broken))]   # a broken model is never on the front, however low its ASR
    front = usable.iloc[pareto_front(usable[["acc", "asr"]].to_numpy())].sort_values("asr")
    ax.plot(front["asr"], front["acc"], "k--", lw=1, label="Pareto front")
    placed: list[tuple[float, float]] = []
    for name, r in g.sort_values("acc").iterrows():   # label a point only where labels do not collide
        if all(abs(r["asr"] - a) > 6 or abs(r["acc"] - c) > 2.5 for a, c in placed):
            ax.annotate(defense_name(name, clean_broken) + (f" {audit.BROKEN_SIGN}" if bad[name] else ""),
                        (r["asr"], r["acc"]),
                        fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
            placed.append((r["asr"], r["acc"]))
    ax.set_xlabel("mean ASR (%)  ← better")
    ax.set_ylabel("mean clean ACC (%)  ↑ better")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    notes = _broken_notes(bool(bad.any()), bool(clean_broken))
    ax.set_title("ACC vs ASR per defense (mean over attacked cells)"
                 + (f"\n{notes}; not on the front" if notes else ""), fontsize=10)
    return _save(fig, out, "scatter_acc_asr")


def asr_vs_ratio(df: pd.DataFrame, out: Path) -> list[Path]:
    sel = one_variant_per_defense(df)
    sel = sel[sel["asr"].notna()]
    if sel["poison_ratio"].nunique() < 2:
        return []
    sel = sel.assign(poison_ratio_pct=sel["poison_ratio"] * 100, asr_pct=sel["asr"] * 100,
                     D=sel["defense"].map(lambda d: label("defense", d)))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sns.lineplot(sel, x="poison_ratio_pct", y="asr_pct", hue="D", marker="o", errorbar="sd", ax=ax)
    ax.set_xlabel("poison ratio (%)")
    ax.set_ylabel("ASR (%)")
    ax.set_title("ASR against poison ratio (ratio 0: the trigger on a clean model)")
    ax.legend(fontsize=7, title="defense")
    return _save(fig, out, "asr_vs_ratio")


def roc_curves(df: pd.DataFrame, results_dir: Path, out: Path) -> list[Path]:
    from sklearn.metrics import roc_curve

    curves = []
    for _, r in df[(df["poison_ratio"] > 0) & df["auroc"].notna()].iterrows():
        diag = load_diagnostics(results_dir, r["run_id"])
        if not diag or diag.get("scores") is None:
            continue
        mask = diag["poison_mask"].numpy().astype(bool)
        if mask.all() or not mask.any():
            continue
        fpr, tpr, _ = roc_curve(mask, diag["scores"].numpy())
        curves.append((label("defense", r["defense"]), label("attack", r["attack"]), fpr, tpr, r["auroc"]))
    if not curves:
        return []
    attacks = sorted({c[1] for c in curves})
    ncol = min(4, len(attacks))
    nrow = math.ceil(len(attacks) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3 * nrow), squeeze=False)
    palette = dict(zip(sorted({c[0] for c in curves}), sns.color_palette("tab10")))
    seen = set()
    for d, a, fpr, tpr, auc in curves:
        ax = axes.flat[attacks.index(a)]
        key = (d, a)
        ax.plot(fpr, tpr, color=palette[d], lw=1.2, label=f"{d} ({auc:.2f})" if key not in seen else None)
        seen.add(key)
        ax.set_title(a)
    for ax in axes.flat:
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
        ax.set_xlabel("FPR")
        ax.set_ylabel("TPR")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="lower right")
    fig.suptitle("Poison detection ROC (AUROC in brackets)")
    fig.tight_layout()
    return _save(fig, out, "roc")


def all_figures(df: pd.DataFrame, results_dir: Path, out: Path) -> dict[str, list[Path]]:
    figs = {
        "fig4_kl_hist": fig4_kl_hist(df, results_dir, out),
        "fig6_enhancement": fig6_enhancement(df, results_dir, out),
        "fig7_partition_rate": fig7_partition_rate(df, out),
        "heatmaps": heatmaps(df, out),
        "scatter_acc_asr": scatter_acc_asr(df, out),
        "asr_vs_ratio": asr_vs_ratio(df, out),
        "roc": roc_curves(df, results_dir, out),
    }
    return {k: v for k, v in figs.items() if v}
