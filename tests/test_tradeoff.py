"""The CPU trade-off probe: its points run as recorded suites and its table reads the records."""
import argparse

import pytest

from bench import cli
from bench.scheduler import EXIT_INVALID
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



def test_bf16_is_refused_before_any_training_on_a_cpu_without_it(tmp_path, capsys, monkeypatch):
    from bench import engine

    monkeypatch.setattr(engine, "cpu_bf16_supported", lambda: False)
    rc = cli.main(["tradeoff", "--results", str(tmp_path), "--dataset", "digits", "--point", "cnn_tiny:300:1",
                   "--cpu-bf16"])
    captured = capsys.readouterr()
    assert rc == EXIT_INVALID and "no native bfloat16" in captured.out + captured.err
    assert measured_rows(tmp_path).empty   # nothing trained


def test_bf16_points_say_so_in_the_table(tmp_path):
    from bench import engine

    if not engine.cpu_bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    assert cli.main(["tradeoff", "--results", str(tmp_path), "--dataset", "digits", "--point", "cnn_tiny:300:1",
                     "--extrapolate", "cnn_tiny:1000:3", "--cpu-bf16"]) == 0
    assert list(measured_rows(tmp_path)["dtype"]) == ["bf16"]
    table = (tmp_path / "tradeoff" / "tradeoff.md").read_text()
    assert table.count("| bf16 |") == 2   # the trained point and the extrapolated one


def test_a_point_of_the_whole_training_set_is_the_paper_suites_victim(tmp_path):
    """So `tradeoff --results <that suite's results>` reuses its trained victim instead of training
    another one on a 'subset' of every image."""
    from bench.suite import load_suite
    from bench.suite.expand import expand
    from bench.tradeoff import _suite_path

    suite_victim = next(s for s in expand(load_suite("cifar10-cpu-paper"))
                        if s.attack == "badnet" and s.poison_ratio == 0.05 and s.defense == "none")
    whole = expand(load_suite(_suite_path(tmp_path, "cifar10", "cnn_small", 50000, 12, full_size=50000)))[0]
    part = expand(load_suite(_suite_path(tmp_path, "cifar10", "cnn_small", 25000, 12, full_size=50000)))[0]
    assert whole.run_id == suite_victim.run_id and whole.model_id == suite_victim.model_id
    assert part.cell_id != suite_victim.cell_id
