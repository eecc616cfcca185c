"""The defense servers of one evaluating process: one per (isolation, hidden folders), started on
first use; starting one retires the idle others, never one with a run in progress."""
from __future__ import annotations

import pytest

from bench import isolation, runner
from bench.runner import execute
from bench.spec import RunSpec

SPEC = dict(dataset="digits", model="cnn_tiny", attack="badnet", poison_ratio=0.1, defense="fine_tuning",
            dataset_params={"image_size": 16}, n_train=200, n_test=60,
            train={"epochs": 1, "batch_size": 64, "lr": 0.05}, budget_scale=0.05)


@pytest.fixture(autouse=True)
def _no_servers_before_or_after():
    isolation._close_servers()
    yield
    isolation._close_servers()


def test_a_new_server_retires_the_idle_ones(tmp_path):
    first = isolation.server("process", (str(tmp_path / "a"),))
    assert isolation.server("process", (str(tmp_path / "a"),)) is first      # reused, not restarted
    second = isolation.server("process", (str(tmp_path / "b"),))
    assert second is not first and second.alive()
    first._proc.wait(timeout=10)                                              # its process has ended
    assert not first.alive()
    assert list(isolation._SERVERS.values()) == [second]


def test_a_server_with_a_run_in_progress_is_kept(tmp_path, monkeypatch):
    seen = {}
    real_inputs = runner.defense_inputs

    def inputs_while_another_server_starts(*args, **kwargs):
        busy = list(isolation._SERVERS.values())
        isolation.server("process", (str(tmp_path / "elsewhere"),))
        seen["busy_alive"] = [srv.alive() for srv in busy]
        return real_inputs(*args, **kwargs)

    monkeypatch.setattr(runner, "defense_inputs", inputs_while_another_server_starts)
    record, _ = execute(RunSpec(**SPEC), cache_dir=tmp_path / "cache")
    assert record["status"] == "ok"
    assert seen["busy_alive"] == [True]
    assert len(isolation._SERVERS) == 2          # idle now, both kept until a third one starts
    isolation.server("process", (str(tmp_path / "third"),))
    assert len(isolation._SERVERS) == 1


def test_a_number_of_a_subclass_crosses_as_its_base_type():
    """The data-only loader refuses any class but plain ones: a defense's info holding the budget's
    PhaseEpochs (or an IntEnum, a str subclass) reaches the evaluator as a float (int, str)."""
    import enum

    from bench.budget import Budget
    from bench.isolation import plain

    class Mode(enum.IntEnum):
        A = 1

    class Name(str):
        pass

    out = plain({"epochs": Budget(scale=0.5).epochs(4), "mode": Mode.A, "name": Name("x"), "flag": True})
    assert out == {"epochs": 2.0, "mode": 1, "name": "x", "flag": True}
    assert [type(v) for v in out.values()] == [float, int, str, bool]
