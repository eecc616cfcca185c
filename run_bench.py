#!/usr/bin/env python
"""Entry point: ``python run_bench.py [command] ...`` (see ``python run_bench.py --help``).

Without arguments it runs the offline ``smoke`` suite and prints where the results went.
"""
import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
