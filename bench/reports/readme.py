"""Keep the README's reference results in step with the published records.

A block of the README between ``<!-- reference:begin results=<folder> image=<png> -->`` (add
`` cells=shared`` before ``-->`` to rank a partly run suite on the cells every defense ran) and
``<!-- reference:end -->`` holds the leaderboard that ``report`` builds from a published folder
(``reference/<suite>``, records only) and, below it, that folder's ASR heatmap. Nothing in the block
is typed by hand:

    python -m bench.reports.readme            # rewrite every block and its picture from the records
    python -m bench.reports.readme --check    # exit 1 when a block differs from what the records give

The check compares the text (the leaderboard); the picture is redrawn by the rewrite only, since a
PNG's bytes depend on the plotting library's version.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

from bench.reports import figures as figs
from bench.reports.leaderboard import leaderboard, leaderboard_markdown, leaderboard_summary
from bench.reports.tidy import load_runs

BLOCK = re.compile(r"(?P<begin><!-- reference:begin results=(?P<results>\S+) image=(?P<image>\S+)"
                   r"(?P<shared> cells=shared)? -->\n)"
                   r"(?P<body>.*?)(?P<end><!-- reference:end -->)", re.S)


class ReadmeError(ValueError):
    """A README without a reference block, or a block naming a folder that holds no records."""


def block_body(df: pd.DataFrame, results: str, image: str, shared_cells: bool = False) -> str:
    """The text of one block: the leaderboard of the runs ``df`` of the folder ``results`` (on the
    cells every defense ran, with ``shared_cells``: a block marked ``cells=shared``, for a partly
    run suite) and a link to its heatmap."""
    if df.empty:
        raise ReadmeError(f"{results}: no successful runs to show")
    board = leaderboard_markdown(leaderboard(df, shared_cells=shared_cells))
    return (f"{leaderboard_summary(df)}\n\n{board.rstrip()}\n\n"
            f"![ASR after each defense, records of {results}]({image})\n\n")


def draw_heatmap(df: pd.DataFrame, results: str, image: Path) -> None:
    """Redraw the ASR heatmap of the runs ``df`` (the report's ``heatmap_asr.png``) at ``image``."""
    with tempfile.TemporaryDirectory() as tmp:
        drawn = [p for p in figs.heatmaps(df, Path(tmp)) if p.name == "heatmap_asr.png"]
        if not drawn:
            raise ReadmeError(f"{results}: no attacked cell to draw a heatmap of")
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(drawn[0], image)


def _blocks(readme: Path) -> tuple[str, list[re.Match]]:
    """The README's text and its reference blocks (refused when it has none)."""
    text = readme.read_text()
    blocks = list(BLOCK.finditer(text))
    if not blocks:
        raise ReadmeError(f"{readme}: no '<!-- reference:begin results=... image=... -->' block")
    return text, blocks


def stale_blocks(readme: Path, root: Path) -> list[str]:
    """The folders whose README block differs from what their records give now."""
    _, blocks = _blocks(readme)
    return [m["results"] for m in blocks
            if m["body"] != block_body(load_runs(root / m["results"]), m["results"], m["image"], bool(m["shared"]))]


def update(readme: Path, root: Path, pictures: bool = True) -> list[str]:
    """Rewrite every block of ``readme`` (paths in a block are relative to ``root``); returns the
    folders whose block changed."""
    text, _ = _blocks(readme)
    changed: list[str] = []

    def rewrite(m: re.Match) -> str:
        df = load_runs(root / m["results"])
        body = block_body(df, m["results"], m["image"], bool(m["shared"]))
        if body != m["body"]:
            changed.append(m["results"])
        if pictures:
            draw_heatmap(df, m["results"], root / m["image"])
        return m["begin"] + body + m["end"]

    readme.write_text(BLOCK.sub(rewrite, text))
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reports.readme", description=__doc__.split("\n")[0])
    p.add_argument("--readme", default="README.md", help="the README to keep in step (default README.md)")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when a block is stale")
    args = p.parse_args(argv)
    readme = Path(args.readme)
    try:
        if args.check:
            stale = stale_blocks(readme, readme.parent)
            for results in stale:
                print(f"{readme}: the block of {results} differs from its records "
                      f"(rewrite it: python -m bench.reports.readme)")
            return 1 if stale else 0
        changed = update(readme, readme.parent)
    except (ReadmeError, FileNotFoundError) as exc:
        print(f"readme: {exc}", file=sys.stderr)
        return 2
    print(f"{readme}: {len(changed)} block(s) changed{': ' + ', '.join(changed) if changed else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
