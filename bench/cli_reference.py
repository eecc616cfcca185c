"""The CLI reference (``docs/cli.md``), generated from the argument parser so it cannot drift.

    python -m bench.cli_reference > docs/cli.md

A test compares the file with :func:`render`.
"""
from __future__ import annotations

import argparse
import sys

from bench.cli import build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def render() -> str:
    parser = build_parser()
    out = ["# Command-line reference", "",
           "Generated from the argument parser by `python -m bench.cli_reference > docs/cli.md`; a test keeps it "
           "in step.", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in _subparsers(parser).items():
        sub.prog = f"run_bench.py {name}"
        out += [f"## `{name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    import os

    os.environ.setdefault("COLUMNS", "100")
    sys.stdout.write(render())
