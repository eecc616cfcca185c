"""Every shell and Python block in README.md and docs/ runs, unless marked as not run with a reason.

A block is skipped only when the line before its opening fence is ``<!-- not run: reason -->``.
Python blocks of one file run in order in one module namespace; ``bash`` blocks run in the
repository root with a time limit. A Python block marked ``<!-- module: name -->`` is a module
file of its own (``name.py``, e.g. a defense plug-in, which its isolated process must import): it
is written to a folder on the Python path, imported, and its names join the page's namespace.
"""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")
MODULE = re.compile(r"<!--\s*module:\s*(\w+)\s*-->")


def blocks(path: Path):
    """(language, code, skip reason or None, line number) of every fenced block."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and m.group(1):
            lang, start = m.group(1), i
            prev = lines[i - 1] if i else ""
            reason = NOT_RUN.search(prev)
            module = MODULE.search(prev)
            body = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            yield lang, "\n".join(body), reason.group(1) if reason else None, start + 1, \
                module.group(1) if module else None
        i += 1


def _ids(path):
    return path.relative_to(ROOT).as_posix()


def _installed() -> set[str]:
    from importlib import metadata

    return {d.metadata["Name"] for d in metadata.distributions()}


def _installs(path) -> bool:
    """Whether a page runs ``pip install`` (the guide installs its example defense)."""
    return any("pip install" in code and reason is None for lang, code, reason, _, _ in blocks(path)
               if lang in ("bash", "sh", "shell"))


def _page(path):
    """A page as a test parameter: one that installs a package shares an xdist group with the other
    tests that install one or run every plug-in the environment has, so that no other worker meets
    the package half-installed."""
    return pytest.param(path, marks=[pytest.mark.xdist_group("environment")] if _installs(path) else [],
                        id=_ids(path))


@pytest.mark.parametrize("path", [_page(p) for p in DOCS])
def test_every_block_runs_or_says_why_not(path, tmp_path, monkeypatch):
    from bench.registry import ATTACKS, DATASETS, DEFENSES, MODELS

    monkeypatch.chdir(ROOT)
    module = types.ModuleType(f"docs_{path.stem}")
    sys.modules[module.__name__] = module
    registries = (ATTACKS, DEFENSES, DATASETS, MODELS)
    before = {reg: set(reg.names()) for reg in registries}
    packages = _installed() if _installs(path) else None
    written = []
    try:
        for lang, code, reason, line, module_name in blocks(path):
            if reason:
                continue
            if lang == "python" and module_name:
                (tmp_path / f"{module_name}.py").write_text(code + "\n")
                written.append(module_name)
                monkeypatch.syspath_prepend(str(tmp_path))
                imported = importlib.import_module(module_name)
                module.__dict__.update({k: v for k, v in vars(imported).items() if not k.startswith("__")})
            elif lang == "python":
                exec(compile(code, f"{path.name}:{line}", "exec"), module.__dict__)
            elif lang in ("bash", "sh", "shell"):
                res = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=ROOT, capture_output=True,
                                     text=True, timeout=600)
                assert res.returncode == 0, f"{path.name}:{line} failed:\n{res.stdout}\n{res.stderr}"
            elif lang in ("toml", "text", "json", "console", "yaml"):
                continue  # data, not code
            else:
                pytest.fail(f"{path.name}:{line}: block in '{lang}' is neither run nor marked '<!-- not run: ... -->'")
    finally:
        # the page's plug-ins leave with it: a later test that runs every registered attack or
        # defense (in worker processes that never imported this page) must not meet them
        for reg in registries:
            for name in set(reg.names()) - before[reg]:
                reg.remove(name)
        for name in [module.__name__, *written]:
            sys.modules.pop(name, None)
        # and so do the packages it installed (the guide's example defense): later tests that run
        # every installed plug-in must not meet them (only a page that installs looks: another
        # worker's install is not this page's to undo)
        added = sorted(_installed() - packages) if packages is not None else []
        if added:
            subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", *added],
                           capture_output=True, text=True)


def test_not_run_markers_give_reasons():
    for path in DOCS:
        for lang, code, reason, line, _ in blocks(path):
            if reason is not None:
                assert len(reason) > 10, f"{path.name}:{line}: say why the block is not run"


def test_results_schema_lists_every_column():
    from bench.store import COLUMNS

    text = (ROOT / "docs" / "results.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)`", text, flags=re.M))
    documented |= {"n_train", "n_test", "n_poison", "n_cover", "started_at", "finished_at"}
    missing = [c for c in COLUMNS if c not in documented]
    assert not missing, f"docs/results.md does not describe {missing}"


def test_cli_reference_matches_the_parser(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    from bench.cli_reference import render

    assert (ROOT / "docs" / "cli.md").read_text() == render(), \
        "docs/cli.md is stale: run `python -m bench.cli_reference > docs/cli.md`"
