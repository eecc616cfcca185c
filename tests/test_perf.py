"""The ``perf`` command runs both pipelines on a tiny subset and prints its report lines (timings
are printed, never asserted)."""
from __future__ import annotations

import re

from bench.cli import main


def test_perf_prints_both_pipelines_ratio_and_memory(capsys):
    rc = main(["perf", "--dataset", "digits", "--model", "cnn_tiny", "--n-train", "64",
               "--batch-size", "32", "--workers", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert re.search(r"^perf: dataset=digits model=cnn_tiny n_train=64 ", out, re.M)
    assert re.search(r"^engine: 64 images in [\d.]+ s = [\d.]+ img/s; peak RSS \d+ MB", out, re.M)
    assert re.search(r"^naive : 64 images in [\d.]+ s = [\d.]+ img/s; peak RSS \d+ MB.* 1 workers of up "
                     r"to \d+ MB", out, re.M)
    assert re.search(r"^model : [\d.]+ img/s", out, re.M)
    assert re.search(r"^data  : engine [\d.]+ img/s, naive [\d.]+ img/s", out, re.M)
    assert re.search(r"^speedup: [\d.]+x", out, re.M)

