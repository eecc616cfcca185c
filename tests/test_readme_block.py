"""The README's reference block is rebuilt from published records, and a stale one is caught."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.reports.readme import ReadmeError, main, stale_blocks, update

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "reference" / "cifar10-cpu-quick"


def _page(tmp_path: Path) -> Path:
    shutil.copytree(PUBLISHED / "records", tmp_path / "ref" / "records")
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nbefore\n\n<!-- reference:begin results=ref image=img/asr.png -->\n"
                      "typed by hand\n<!-- reference:end -->\n\nafter\n")
    return readme


def test_update_writes_the_leaderboard_and_picture_and_check_catches_an_edit(tmp_path):
    readme = _page(tmp_path)
    assert stale_blocks(readme, tmp_path) == ["ref"]
    assert update(readme, tmp_path) == ["ref"]
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith("<!-- reference:end -->\n\nafter\n")
    assert "| # | Defense | mean RA |" in text and "typed by hand" not in text
    assert (tmp_path / "img" / "asr.png").read_bytes()[:4] == b"\x89PNG"
    assert stale_blocks(readme, tmp_path) == []
    # a number edited by hand in the block no longer matches the records
    row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    readme.write_text(text.replace(row, row.replace("|", "| 99.9 |", 3)[:len(row)]))
    assert stale_blocks(readme, tmp_path) == ["ref"]
    assert main(["--readme", str(readme), "--check"]) == 1


def test_a_page_without_a_block_or_a_folder_without_records_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# nothing here\n")
    with pytest.raises(ReadmeError, match="no '<!-- reference:begin"):
        stale_blocks(readme, tmp_path)
    readme.write_text("<!-- reference:begin results=missing image=a.png -->\n<!-- reference:end -->\n")
    assert main(["--readme", str(readme), "--check"]) == 2


def test_the_project_readme_matches_its_records():
    assert stale_blocks(ROOT / "README.md", ROOT) == []
