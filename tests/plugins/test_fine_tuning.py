"""Fine-tuning on the clean reserve (defenses/fine_tuning.py).

No test asserts that fine-tuning removes the easy digits backdoor, because it does not: measured
on the ``backdoored_cell`` fixture (cnn_tiny, ACC 0.924 / ASR 1.000), fine_tuning on the 5%
reserve (72 images) gave ASR 1.000 at budget 0.2 (2 epochs), 0.991 at budget 1.0 (10 epochs),
0.997 with 100 epochs, and 0.940 with a 20% reserve, clean accuracy 0.91-0.93 throughout (the
spec's failure mode: the backdoor survives small-lr updates on clean data).
"""
from __future__ import annotations

from conftest import check_reserve_fraction_is_refused, check_runs_end_to_end_and_keeps_clean_accuracy


def test_defense_runs_end_to_end_and_keeps_clean_accuracy(backdoored_cell):
    check_runs_end_to_end_and_keeps_clean_accuracy(backdoored_cell, "fine_tuning", {})


def test_bad_input_is_refused_before_compute():
    check_reserve_fraction_is_refused("fine_tuning")
