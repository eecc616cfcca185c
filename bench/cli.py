"""Command-line interface: ``python run_bench.py <command>``.

Commands: ``list`` (registered plug-ins and suites), ``run`` (a suite through the scheduler),
``report`` (tables, figures, leaderboard), ``compare`` (regression check of two results), ``publish`` (reference
results to commit), ``perf``
(engine throughput against a naive pipeline). With no command, the offline ``smoke`` suite runs.

Each command's options and behaviour live in its own module (``bench.scheduler``, ``bench.report``,
``bench.compare``, ``bench.perf``), which exposes ``add_arguments(parser)`` and ``main(args)``;
this module only builds the parser from them and lists the registries.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from bench.registry import REGISTRIES

COMMANDS = {
    "run": ("bench.scheduler", "run a suite (or a filtered part of it); resumes finished runs"),
    "report": ("bench.report", "rebuild tables, figures and the leaderboard from the results"),
    "compare": ("bench.compare", "compare candidate results with a baseline; exit 1 on regression"),
    "publish": ("bench.reference", "copy a suite's records and salt into a folder to commit (reference results)"),
    "tradeoff": ("bench.tradeoff", "measure training images x epochs x model -> clean ACC, BadNet ASR, minutes"),
    "perf": ("bench.perf", "measure the engine's throughput against a naive DataLoader pipeline"),
    "device-check": ("bench.device_check", "on a GPU: engine vs naive throughput, bf16 parity, jobs per GPU, "
                                           "a Table II cell; writes the JSON the dry run's estimate reads"),
}


def _list_main(args) -> int:
    what = args.what
    if what == "suites":
        from bench.suite import list_suites

        for name, desc in list_suites():
            print(f"{name:24s} {desc}")
        return 0
    reg = REGISTRIES[what]
    names = reg.list(args.pattern)
    if not names:
        print(f"no {what} match '{args.pattern}'", file=sys.stderr)
        return 1
    for name in names:
        entry = reg.get(name)  # an attack's or defense's metadata are its card's tags (stage, label mode, ...)
        tags = ", ".join(f"{k}={v}" for k, v in sorted(entry.metadata.items()) if k != "doc")
        print(f"{name:18s} {entry.doc}" + (f"  [{tags}]" if tags else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_bench.py",
        description="Benchmark backdoor defenses fairly. Without a command, runs the offline 'smoke' suite.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    p = sub.add_parser("list", help="list attacks, defenses, datasets, models or suites")
    p.add_argument("what", choices=["attacks", "defenses", "datasets", "models", "suites"])
    p.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'fine*'")
    p.set_defaults(func=_list_main)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            p.set_defaults(func=lambda args, n=name: _unavailable(n))
            continue
        mod.add_arguments(p)
        p.set_defaults(func=mod.main)
    return parser


def _unavailable(name: str) -> int:
    print(f"the '{name}' command is not part of this build yet", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = ["run", "--suite", "smoke"]
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
