"""A self-contained HTML page (figures embedded as base64 PNG): leaderboard, tables, figures."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:1em 0} th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child,td:nth-child(2){text-align:left}
figure{display:inline-block;margin:1em;vertical-align:top} img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555} .note{color:#555;font-size:.9em}
"""


def _table_html(header: list[str], rows: list[list[str]], caption: str = "") -> str:
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(path.name)}</figcaption></figure>")


def _markdown_table_rows(md: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in md.splitlines() if line.startswith("|")]
    if len(lines) < 2:
        return [], []
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    return split(lines[0]), [split(line) for line in lines[2:]]


def write_page(out: Path, leaderboard_md: str, tables: dict, figures: dict[str, list[Path]],
               cost: pd.DataFrame, summary: str, sections: dict[str, str] | None = None) -> Path:
    """The self-contained page; ``sections`` (title -> Markdown holding one table, e.g. the paper
    comparison and the settings) follow the paper tables, each only when it holds a table."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Backdoor defense leaderboard</title>"
             f"<style>{CSS}</style></head><body>", "<h1>Backdoor defense leaderboard</h1>",
             f"<p class='note'>{html.escape(summary)}</p>", "<h2>Leaderboard</h2>"]
    head, rows = _markdown_table_rows(leaderboard_md)
    parts.append(_table_html(head, rows) if head else f"<p>{html.escape(leaderboard_md)}</p>")
    if not cost.empty:
        parts.append("<h2>Cost</h2>")
        parts.append(_table_html(["defense", "runs", "wall s (mean)", "epochs (mean)"],
                                 [[i, int(r["runs"]), f"{r['wall_s']:.1f}", f"{r['epochs_equiv']:.2f}"]
                                  for i, r in cost.iterrows()]))
    if figures:
        parts.append("<h2>Figures</h2>")
        for paths in figures.values():
            parts += [_img(p) for p in paths if p.suffix == ".png"]
    for stem, table in tables.items():
        parts.append(f"<h2>{html.escape(table.name)}</h2>")
        parts.append(_table_html(table.header(), table.text_rows(), table.caption))
    for title, md in (sections or {}).items():
        head, rows = _markdown_table_rows(md)
        if head:
            parts.append(f"<h2>{html.escape(title)}</h2>")
            parts.append(_table_html(head, rows))
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path
