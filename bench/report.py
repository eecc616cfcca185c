"""``report``: rebuild every table, figure and the leaderboard from a results folder.

Writes ``<results>/report/``: ``table*.{md,tex,csv}`` (the MeCa paper's Tables II-VII and
extended II/III), figures as PNG and PDF, ``leaderboard.md`` / ``leaderboard.csv``,
``ranking_comparison.md`` (the ranking by mean RA beside the old one by mean DER),
``paper_comparison.{md,csv}`` (each CIFAR-10 cell beside the paper's Table II/III value),
``cells.{md,csv}`` (every cell and defense variant with ACC, ASR, RA, TPR/FPR/AUROC, its victim
and the paper's value: :mod:`bench.reports.cells`), ``estimate_vs_measured.md`` (a saved dry-run
estimate beside the measured times, when the folder has one: :mod:`bench.reports.estimate_check`), ``settings.{md,csv}`` (where the defaults of the
defenses run come from: the paper, a reconstruction, a development search:
:mod:`bench.reports.settings`), ``cost.csv``
and ``index.html`` (a self-contained page with everything). Nothing is typed in:
delete the folder and run the command again to get the same files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.card import NO_DEFENSE
from bench.files import UnsafeFileError
from bench.estimate import ESTIMATE_REPORT
from bench.reports import audit, estimate_check
from bench.reports import figures as figs
from bench.reports import html as html_page
from bench.reports.cells import cells_markdown, cells_table
from bench.reports.leaderboard import (add_threshold_arguments, cost_table, leaderboard, leaderboard_markdown,
                                       leaderboard_summary, ranking_comparison, ranking_comparison_markdown,
                                       threshold_options)
from bench.reports.paper import comparison_markdown, paper_comparison
from bench.reports.settings import settings_frame, settings_markdown
from bench.reports.tables import paper_tables
from bench.reports.tidy import load_runs


def build_report(results: Path, out: Path | None = None, **thresholds) -> dict:
    """Build everything; returns a dict of what was written. ``thresholds`` go to the leaderboard
    (``asr_threshold``, ``max_acc_drop``, ``acc_margin``)."""
    results = Path(results)
    out = Path(out) if out else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    df = load_runs(results)
    written: dict = {"tables": {}, "figures": {}}
    tables = paper_tables(df)
    for stem, table in tables.items():
        written["tables"][stem] = table.write(out, stem)
    board = leaderboard(df, **thresholds)
    board_md = leaderboard_markdown(board)
    summary = leaderboard_summary(df, **thresholds)
    (out / "leaderboard.md").write_text(f"# Leaderboard\n\n{summary}\n\n{board_md}")
    board.to_csv(out / "leaderboard.csv", index=False)
    written["leaderboard"] = out / "leaderboard.md"
    rankings = ranking_comparison(df, **thresholds)
    (out / "ranking_comparison.md").write_text(
        "# The ranking by mean RA beside the old ranking by mean DER\n\n" + ranking_comparison_markdown(rankings))
    written["ranking_comparison"] = out / "ranking_comparison.md"
    versus_paper = paper_comparison(df)
    versus_paper_md = comparison_markdown(versus_paper)
    (out / "paper_comparison.md").write_text("# Measured vs the MeCa paper, per CIFAR-10 cell\n\n" + versus_paper_md)
    versus_paper.to_csv(out / "paper_comparison.csv", index=False)
    written["paper_comparison"] = out / "paper_comparison.md"
    cells = cells_table(df)
    cells_md = cells_markdown(cells)
    (out / "cells.md").write_text(
        "# Every cell and defense variant: repair and detection\n\n"
        f"Seeds pooled (mean ± sd where seeds vary); values in percent; † = {audit.BROKEN_NOTE}.\n\n"
        + cells_md)
    cells.to_csv(out / "cells.csv", index=False)
    written["cells"] = out / "cells.md"
    settings = settings_frame(sorted(set(df["defense"]) - {NO_DEFENSE}) if len(df) else [])
    settings_md = settings_markdown(settings)
    (out / "settings.md").write_text("# Where the defaults come from\n\n" + settings_md)
    settings.to_csv(out / "settings.csv", index=False)
    written["settings"] = out / "settings.md"
    check = estimate_check.markdown(results, df)
    if check:
        (out / ESTIMATE_REPORT).write_text(check)
        written["estimate_check"] = out / ESTIMATE_REPORT
    cost = cost_table(df)
    cost.to_csv(out / "cost.csv")
    written["figures"] = figs.all_figures(df, results, out) if len(df) else {}
    written["html"] = html_page.write_page(out, board_md, tables, written["figures"], cost, summary,
                                           {"Measured vs the MeCa paper, per CIFAR-10 cell": versus_paper_md,
                                            "Every cell and defense variant": cells_md,
                                            "Where the defaults come from": settings_md})
    return written


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="results", help="results folder (with runs.parquet or records/)")
    p.add_argument("--out", default=None, help="output folder (default: <results>/report)")
    add_threshold_arguments(p)


def main(args) -> int:
    results = Path(args.results)
    try:
        written = build_report(results, args.out, **threshold_options(args))
    except (FileNotFoundError, UnsafeFileError) as exc:
        print(f"report: {exc}")
        return 2
    print(f"tables:  {', '.join(sorted(written['tables'])) or '(none: no matching runs)'}")
    print(f"figures: {', '.join(sorted(written['figures'])) or '(none)'}")
    print(f"leaderboard: {written['leaderboard']} (old ranking beside it: {written['ranking_comparison']})")
    print(f"paper comparison: {written['paper_comparison']}")
    if written.get("estimate_check"):
        print(f"estimate vs measured: {written['estimate_check']}")
    print(f"page: {written['html']}")
    return 0
