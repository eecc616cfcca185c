"""``report``: rebuild every table, figure and the leaderboard from a results folder.

Writes ``<results>/report/``: ``table*.{md,tex,csv}`` (the MeCa paper's Tables II-VII and
extended II/III), figures as PNG and PDF, ``leaderboard.md`` / ``leaderboard.csv``,
``cost.csv`` and ``index.html`` (a self-contained page with everything). Nothing is typed in:
delete the folder and run the command again to get the same files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.card import NO_DEFENSE
from bench.files import UnsafeFileError
from bench.reports import figures as figs
from bench.reports import html as html_page
from bench.reports.leaderboard import cost_table, leaderboard, leaderboard_markdown
from bench.reports.tables import paper_tables
from bench.reports.tidy import load_runs


def build_report(results: Path, out: Path | None = None, asr_threshold: float = 0.20) -> dict:
    """Build everything; returns a dict of what was written."""
    results = Path(results)
    out = Path(out) if out else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    df = load_runs(results)
    written: dict = {"tables": {}, "figures": {}}
    tables = paper_tables(df)
    for stem, table in tables.items():
        written["tables"][stem] = table.write(out, stem)
    board = leaderboard(df, asr_threshold)
    board_md = leaderboard_markdown(board, asr_threshold)
    n_runs, n_seeds = len(df), df["seed"].nunique() if len(df) else 0
    n_def = df.loc[df["defense"] != NO_DEFENSE, "defense"].nunique() if n_runs else 0
    n_att = df["attack"].nunique() if n_runs else 0
    summary = (f"{n_runs} successful runs: {n_def} defenses (and the no-defense baseline), {n_att} attacks, "
               f"{n_seeds} seed(s); defenses ranked by mean DER. "
               f"Success = post-defense ASR below {asr_threshold * 100:g}%.")
    (out / "leaderboard.md").write_text(f"# Leaderboard\n\n{summary}\n\n{board_md}")
    board.to_csv(out / "leaderboard.csv", index=False)
    written["leaderboard"] = out / "leaderboard.md"
    cost = cost_table(df)
    cost.to_csv(out / "cost.csv")
    written["figures"] = figs.all_figures(df, results, out) if n_runs else {}
    written["html"] = html_page.write_page(out, board_md, tables, written["figures"], cost, summary)
    return written


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="results", help="results folder (with runs.parquet or records/)")
    p.add_argument("--out", default=None, help="output folder (default: <results>/report)")
    p.add_argument("--asr-threshold", type=float, default=0.20,
                   help="post-defense ASR under which a cell counts as a success (fraction)")


def main(args) -> int:
    results = Path(args.results)
    try:
        written = build_report(results, args.out, args.asr_threshold)
    except (FileNotFoundError, UnsafeFileError) as exc:
        print(f"report: {exc}")
        return 2
    print(f"tables:  {', '.join(sorted(written['tables'])) or '(none: no matching runs)'}")
    print(f"figures: {', '.join(sorted(written['figures'])) or '(none)'}")
    print(f"leaderboard: {written['leaderboard']}")
    print(f"page: {written['html']}")
    return 0
