"""Published reference results: publish a suite's records and salt, resume another folder from them."""
import json
import os

import pytest

from bench import cli
from bench.reference import ReferenceError, publish, seed_results
from test_scheduler import TESTS_DIR, records, run, started, write_suite

SUITE = """
    attacks = ["_test_patch"]
    ratios = [0.1]
    defenses = ["none", "_t_repair"]
"""


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A two-run suite run once into a results folder whose salt is its own file (as outside the
    tests: the session's fixed ``BENCH_SALT`` removed), then published."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("BENCH_SALT", raising=False)
        mp.syspath_prepend(str(TESTS_DIR))
        mp.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
        suite = write_suite(root / "s.toml", SUITE)
        assert run(suite, root / "first").exit_code == 0
        assert cli.main(["publish", "--results", str(root / "first"), "--to", str(root / "ref")]) == 0
    return root, suite


@pytest.fixture
def no_env_salt(monkeypatch):
    monkeypatch.delenv("BENCH_SALT", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))


def test_published_records_resume_a_fresh_folder_without_recomputing(published, no_env_salt, capsys):
    root, suite = published
    first, ref, second = root / "first", root / "ref", root / "second"
    assert sorted(p.name for p in ref.iterdir()) == ["STATUS.md", "protocol-salt", "records"]  # no cache, no diagnostics
    assert "_t_repair, none" in (ref / "STATUS.md").read_text()
    assert {p.stem for p in (ref / "records").glob("*.json")} == set(records(first))
    # a new machine: an empty results folder resumed from the published one computes nothing
    assert cli.main(["run", "--suite", str(suite), "--results", str(second), "--resume-from", str(ref),
                     "--import", "test_scheduler", "--no-progress", "--workers", "1"]) == 0
    assert f"{len(records(first))} record(s) added" in capsys.readouterr().out
    assert (second / "protocol-salt").read_text() == (first / "protocol-salt").read_text()
    assert started(second) == []
    assert records(second).keys() == records(first).keys()


def test_resume_from_refuses_a_folder_of_other_draws_before_any_job(published, no_env_salt, capsys):
    root, suite = published
    other = root / "other"
    other.mkdir()
    (other / "protocol-salt").write_text("ab" * 32 + "\n")
    rc = cli.main(["run", "--suite", str(suite), "--results", str(other), "--resume-from", str(root / "ref"),
                   "--import", "test_scheduler", "--no-progress"])
    assert rc == 2 and "already has a salt of its own" in capsys.readouterr().err
    assert not (other / "records").exists()
    with pytest.raises(ReferenceError, match="another salt"):
        publish(root / "first", other)   # publishing into a folder of other draws


def test_a_damaged_published_record_is_refused(tmp_path, no_env_salt):
    ref = tmp_path / "ref"
    (ref / "records").mkdir(parents=True)
    (ref / "protocol-salt").write_text("cd" * 32 + "\n")
    (ref / "records" / "abc.json").write_text(json.dumps({"run_id": "abc"}))
    with pytest.raises(ReferenceError, match="not a run record"):
        seed_results(ref, tmp_path / "results")
    with pytest.raises(ReferenceError, match="no protocol-salt"):
        seed_results(tmp_path / "nowhere", tmp_path / "results")


def test_publish_carries_the_suites_saved_estimate_and_no_other(published, no_env_salt):
    root, _ = published
    first = root / "first"
    suite = next(iter(records(first).values()))["suite"]
    (first / "estimates").mkdir(exist_ok=True)
    (first / "estimates" / f"{suite}.json").write_text(json.dumps({"suite": suite, "jobs": []}))
    (first / "estimates" / "another-suite.json").write_text(json.dumps({"suite": "another-suite", "jobs": []}))
    assert publish(first, root / "ref-estimate") == len(records(first))
    assert sorted(p.name for p in (root / "ref-estimate" / "estimates").iterdir()) == [f"{suite}.json"]


def test_publishing_a_suite_takes_the_runs_it_shares_with_the_suite_that_computed_them(published, no_env_salt):
    root, _ = published
    first = root / "first"
    narrow = write_suite(root / "narrow.toml", SUITE.replace('"none", "_t_repair"', '"none"'))
    shared = [rid for rid, rec in records(first).items() if rec["defense"] == "none"]
    assert len(shared) == 1 and records(first)[shared[0]]["suite"] != "narrow"
    assert publish(first, root / "ref-narrow", suite=str(narrow)) == 1     # computed under the other suite's name
    assert [p.stem for p in (root / "ref-narrow" / "records").glob("*.json")] == shared
    with pytest.raises(ReferenceError, match="no records of suite 'nowhere'"):
        publish(first, root / "ref-none", suite="nowhere")
