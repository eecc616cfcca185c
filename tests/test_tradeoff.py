"""The CPU trade-off probe: its points run as recorded suites and its table reads the records."""
import argparse

import pytest

from bench import cli
from bench.tradeoff import measured_rows, parse_point


def test_a_point_is_trained_recorded_and_tabled_and_a_slow_model_extrapolated(tmp_path, capsys):
    rc = cli.main(["tradeoff", "--results", str(tmp_path), "--dataset", "digits",
                   "--point", "cnn_tiny:300:1", "--extrapolate", "cnn_tiny:1000:3"])
    assert rc == 0
    table = measured_rows(tmp_path)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["model"] == "cnn_tiny" and row["train images"] == 285 and row["epochs"] == 1  # 5 % reserved
    assert 0 <= row["clean ACC %"] <= 100 and row["wall min"] > 0
    out = capsys.readouterr().out
    assert "extrapolated" in out and (tmp_path / "tradeoff" / "tradeoff.md").exists()
    # rerunning trains nothing: the point's record is there
    assert cli.main(["tradeoff", "--results", str(tmp_path), "--dataset", "digits",
                     "--point", "cnn_tiny:300:1", "--table-only"]) == 0
    assert len(measured_rows(tmp_path)) == 1


def test_a_malformed_point_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="MODEL:N_TRAIN:EPOCHS"):
        parse_point("cnn_small:50000")
