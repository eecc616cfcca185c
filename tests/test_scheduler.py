"""The scheduler and the results store: reuse, failures, resume, kills, concurrency, Dask.

Everything here uses only the ``clean`` attack, the ``_test_patch`` attack of conftest.py, the
``none`` defense and the tiny test defenses defined below (a repair one, a train-stage one and one
that raises), which every worker process imports with this module (``--import test_scheduler``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

import conftest  # noqa: F401  (registers the _test_patch attack, also in worker processes)
from bench import scheduler
from bench.defense import Defense, DefenseOutput
from bench.registry import DEFENSES
from bench.store import Store
from bench.watchdog import descendants, process_table

TESTS_DIR = Path(__file__).resolve().parent
PLUGIN_MODULE = __name__  # what workers import to register the test plug-ins


# -- test plug-ins: at module level, so a worker (``--import test_scheduler``) and an isolated defense
# process (which imports a defense by its module and qualified name) find them --------------------------
@dataclass
class RepairParams:
    tag: int = 0          # different tags make different runs of the same cell
    sleep: float = 0.0


@dataclass
class TrainParams:
    sleep: float = 0.0
    started_flag: str = ""   # a file created when run() starts (tells a test the defense is running)


@DEFENSES.register("_t_repair")
class TRepair(Defense):
    """Test repair defense: the backdoored model as it is, random detection scores."""

    Params = RepairParams
    stage = "repair"
    needs_train = True
    detects = True

    def run(self, ctx):
        time.sleep(self.params.sleep)
        return DefenseOutput(ctx.model, scores=torch.rand(len(ctx.train), generator=ctx.generator))


@DEFENSES.register("_t_train")
class TTrain(Defense):
    """Test training-time defense: an untrained fresh model (after ``sleep`` seconds)."""

    Params = TrainParams
    stage = "train"

    def run(self, ctx):
        if self.params.started_flag:
            Path(self.params.started_flag).touch()
        time.sleep(self.params.sleep)
        return DefenseOutput(ctx.new_model())


@DEFENSES.register("_t_fail")
class TFail(Defense):
    """Test defense that always raises."""

    stage = "repair"

    def run(self, ctx):
        raise RuntimeError("boom from _t_fail")


WORKER_EXIT_SECONDS = 5   # a worker polls for its scheduler about once a second

BASE = """
datasets = [{name = "digits", params = {image_size = 16}}]
models = ["cnn_tiny"]
target = 1
budget = {epochs = 1, scale = 0.05, n_train = 300, n_test = 200}
train = {batch_size = 128}
"""


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A results folder; this module importable by worker processes (``PYTHONPATH``)."""
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    return tmp_path


def write_suite(path: Path, body: str) -> Path:
    body = textwrap.dedent(body)
    path.write_text(BASE + ("" if "seeds" in body else "seeds = [0]\n") + body)
    return path


def run(suite, results, **kw):
    kw.setdefault("imports", [PLUGIN_MODULE])
    kw.setdefault("progress", False)
    kw.setdefault("workers", 1)
    return scheduler.run_suite(suite, results=results, **kw)


def records(results: Path) -> dict[str, dict]:
    return {r["run_id"]: r for r in Store(results).iter_records()}


def started(results: Path) -> list[str]:
    return [e["run_id"] for e in Store(results).read_events() if e["event"] == "started"]


# -- reuse, records, failures, resume ---------------------------------------------------------------
def test_grid_reuses_backdoor_records_failures_and_resume(env, capsys):
    suite = write_suite(env / "grid.toml", """
        attacks = ["_test_patch"]
        ratios = [0.1]
        defenses = ["none", {name = "_t_repair", params = {tag = 1}}, {name = "_t_repair", params = {tag = 2}},
                    "_t_train", "_t_fail"]
    """)
    res = env / "results"
    out = run(suite, res)
    assert out.exit_code == 1 and out.failed == 1 and out.ok == 4
    recs = records(res)
    assert len(recs) == 5
    by_def = {}
    for r in recs.values():
        by_def.setdefault(r["defense"], []).append(r)
    (fail,) = by_def["_t_fail"]
    assert fail["status"] == "failed" and "boom from _t_fail" in fail["error"]
    (none,) = by_def["none"]
    assert none["status"] == "ok" and none["backdoor_cache_hit"] is False
    # one backdoor training for the cell; both repairs and the train-stage run used the cached model
    assert len(list((env / "cache" / "models").glob("*.pt"))) == 1
    for r in by_def["_t_repair"] + by_def["_t_train"]:
        assert r["backdoor_cache_hit"] is True and r["backdoor_artifact"] == none["backdoor_artifact"]
        assert r["acc_nodef"] == none["acc"] and r["asr_nodef"] == none["asr"]
    for r in by_def["_t_repair"]:
        assert r["auroc"] is not None  # scores only: AUROC, no flags
        assert (res / "diagnostics" / f"{r['run_id']}.pt").exists()
    for r in by_def["_t_repair"] + by_def["_t_train"]:   # the defense's own process is counted
        assert r["defense_cpu_s"] > 0 and r["cpu_s"] > r["defense_cpu_s"]
    assert none["defense_cpu_s"] is None
    # the records carry what a run depends on
    for key in ("spec", "versions", "code_version", "device", "data_fingerprint", "wall_s", "epochs_equiv"):
        assert key in none
    # the tidy table
    df = pd.read_parquet(res / "runs.parquet")
    csv = pd.read_csv(res / "runs.csv")
    for col in ("run_id", "suite", "dataset", "model", "attack", "poison_ratio", "target", "defense", "seed",
                "acc", "asr", "ra", "acc_nodef", "asr_nodef", "der", "tpr", "fpr", "auroc", "wall_s",
                "epochs_equiv", "status", "error"):
        assert col in df.columns and col in csv.columns
    assert len(df) == 5 and set(df.status) == {"ok", "failed"}
    assert json.loads(df[df.defense == "_t_repair"].defense_params.iloc[0])["tag"] in (1, 2)
    assert "[5/5]" in capsys.readouterr().out

    # rerun: nothing to do, the failure is kept
    n_started = len(started(res))
    out = run(suite, res)
    assert out.jobs == 0 and out.exit_code == 0 and len(started(res)) == n_started
    # --retry-failed reruns only the failure
    out = run(suite, res, retry_failed=True)
    assert out.failed == 1 and out.ok == 0
    assert started(res)[n_started:] == [fail["run_id"]]
    # --force reruns everything, still one backdoor model
    out = run(suite, res, force=True)
    assert out.ok == 4 and out.failed == 1
    assert len(list((env / "cache" / "models").glob("*.pt"))) == 1
    # the cell's model is cached: rerunning only its repairs plans no job that trains it
    capsys.readouterr()
    run(suite, res, force=True, defenses="_t_repair", dry_run=True)
    kinds = [ln.split()[0] for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")]
    assert kinds == ["repair", "repair"]


def test_corrupt_record_is_detected_and_rerun(env):
    suite = write_suite(env / "c.toml", """
        attacks = ["_test_patch"]
        ratios = [0.1]
        defenses = ["none", "_t_repair"]
    """)
    res = env / "results"
    assert run(suite, res).exit_code == 0
    recs = records(res)
    victim = next(r for r in recs.values() if r["defense"] == "_t_repair")["run_id"]
    path = res / "records" / f"{victim}.json"
    path.write_text(path.read_text()[:100])  # truncated
    n = len(started(res))
    with pytest.warns(UserWarning, match="corrupt record"):
        out = run(suite, res)
    assert out.ok == 1 and started(res)[n:] == [victim]
    assert records(res)[victim]["status"] == "ok"
    assert len(list((res / "records" / "corrupt").glob("*.json"))) == 1


def test_validation_lists_every_problem_before_any_job(env):
    suite = write_suite(env / "bad.toml", """
        attacks = ["_test_patch", "nosuchattack"]
        ratios = [0.1, 1.5]
        defenses = ["none", {name = "_t_repair", params = {bogus = 3}}, "nosuchdefense"]
    """)
    res = env / "results"
    out = run(suite, res)
    assert out.exit_code == scheduler.EXIT_INVALID
    text = "\n".join(out.problems)
    for needle in ("nosuchattack", "nosuchdefense", "bogus", "1.5"):
        assert needle in text, needle
    assert not (res / "records").exists() or not list((res / "records").glob("*.json"))
    assert not started(res)


def test_filters_and_dry_run(env, capsys):
    suite = write_suite(env / "f.toml", """
        attacks = ["_test_patch"]
        ratios = [0.05, 0.1]
        seeds = [0, 1]
        defenses = ["none", "_t_repair", "_t_train"]
    """)
    res = env / "results"
    out = run(suite, res, dry_run=True, ratios="0.1", seeds="1", defenses="_t_*")
    text = capsys.readouterr().out
    assert "dry run" in text and out.exit_code == 0 and not started(res)
    # one cell, no `none` run: an artifact job trains its model, then a train and a repair job
    kinds = [ln.split()[0] for ln in text.splitlines() if ln.startswith("  ")]
    assert sorted(kinds) == ["artifact", "repair", "train"], text
    out = run(suite, res, ratios="0.3")
    assert out.exit_code == scheduler.EXIT_INVALID and "0.3" in out.problems[0]


@pytest.mark.parametrize("folder", ["results", "cache"])
def test_unwritable_results_or_cache_folder_is_refused_before_any_job(env, folder):
    suite = write_suite(env / "w.toml", """
        attacks = ["_test_patch"]
        ratios = [0.1]
        defenses = ["none"]
    """)
    blocker = env / "file.txt"  # a regular file: nothing can be created under it, not even by root
    blocker.write_text("not a folder")
    res, cache = env / "results", env / "cache"
    if folder == "results":
        res = blocker / "results"
    else:
        cache = blocker / "cache"
    out = run(suite, res, cache_dir=cache)
    assert out.exit_code == scheduler.EXIT_INVALID and len(out.problems) == 1, out.problems
    (problem,) = out.problems
    assert str(res if folder == "results" else cache) in problem and "not a folder" in problem
    assert ("--results" if folder == "results" else "--cache-dir") in problem
    assert not cache.exists() and not res.exists() and blocker.read_text() == "not a folder"


# -- kill and concurrency (the scheduler in subprocesses) ---------------------------------------------
def _cli(suite: Path, res: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from bench.cli import main; sys.exit(main(sys.argv[1:]))",
            "run", "--suite", str(suite), "--results", str(res), "--import", PLUGIN_MODULE,
            "--no-progress", *extra]


@pytest.mark.slow
def test_sigkill_mid_grid_leaves_complete_records_and_resumes(env):
    suite = write_suite(env / "k.toml", """
        attacks = ["_test_patch"]
        ratios = [0.1]
        defenses = ["none", {name = "_t_repair", params = {tag = 1, sleep = 1.0}},
                    {name = "_t_repair", params = {tag = 2, sleep = 1.0}},
                    {name = "_t_repair", params = {tag = 3, sleep = 1.0}},
                    {name = "_t_repair", params = {tag = 4, sleep = 1.0}},
                    {name = "_t_repair", params = {tag = 5, sleep = 1.0}}]
    """)
    res = env / "results"
    proc = subprocess.Popen(_cli(suite, res, "--workers", "1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=env)
    finished = 0
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("[") and " ok " in line:
            finished += 1
            if finished == 2:
                time.sleep(0.4)  # in the middle of the next (sleeping) run
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(lines)
    # only complete records, no half-written files under their names
    recs_before = records(res)
    assert 2 <= len(recs_before) < 6
    assert len(list((res / "records").glob("*.json"))) == len(recs_before)
    events_before = started(res)
    # the rerun finishes the rest without repeating any finished run
    done = subprocess.run(_cli(suite, res, "--workers", "1"), capture_output=True, text=True, cwd=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    recs = records(res)
    assert len(recs) == 6 and all(r["status"] == "ok" for r in recs.values())
    rerun = started(res)[len(events_before):]
    assert not set(rerun) & set(recs_before) and set(rerun) | set(recs_before) == set(recs)


def _living(procs: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Those of the (pid, start time) pairs that are still running (not zombies)."""
    table = process_table()
    return {(p, start) for p, start in procs if p in table and table[p][2] == start and table[p][1] not in "ZX"}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_workers_exit_when_the_scheduler_is_killed(env):
    flag = env / "started"
    suite = write_suite(env / "w.toml", f"""
        attacks = ["_test_patch"]
        ratios = [0.1]
        defenses = [{{name = "_t_train", params = {{sleep = 120, started_flag = "{flag}"}}}}]
    """)
    proc = subprocess.Popen(_cli(suite, env / "results", "--workers", "2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=env)
    try:
        deadline = time.time() + 60
        while not flag.exists():  # a worker is inside a long defense run, the other one idles
            assert proc.poll() is None and time.time() < deadline, "the defenses never started"
            time.sleep(0.2)
        table = process_table()  # the workers and whatever they started (e.g. isolated defense processes)
        tree = {(p, table[p][2]) for p in descendants(proc.pid) if p in table}
        assert len(tree) >= 3
    finally:
        proc.kill()
        proc.wait(timeout=30)
    deadline = time.time() + WORKER_EXIT_SECONDS
    while _living(tree) and time.time() < deadline:
        time.sleep(0.2)
    left = _living(tree)
    for pid, _ in left:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, "processes of the killed scheduler outlived it"


@pytest.mark.slow
def test_two_schedulers_on_one_folder_run_each_run_once(env):
    suite = write_suite(env / "t.toml", """
        attacks = ["_test_patch"]
        ratios = [0.1]
        seeds = [0, 1]
        defenses = ["none", {name = "_t_repair", params = {tag = 1, sleep = 0.3}},
                    {name = "_t_repair", params = {tag = 2, sleep = 0.3}}, "_t_train"]
    """)
    res = env / "results"
    a = subprocess.Popen(_cli(suite, res, "--workers", "2"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, cwd=env)
    b = subprocess.Popen(_cli(suite, res, "--workers", "1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, cwd=env)
    out_a, _ = a.communicate(timeout=300)
    out_b, _ = b.communicate(timeout=300)
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    recs = records(res)
    assert len(recs) == 8 and all(r["status"] == "ok" for r in recs.values())
    ev = started(res)
    assert sorted(ev) == sorted(set(ev)) and set(ev) == set(recs), "a run was executed twice"
    assert not list((res / "records").glob(".tmp-*")) and not list((res / "records" / "corrupt").glob("*"))
    # the table is whole whoever consolidated last
    assert len(pd.read_parquet(res / "runs.parquet")) == 8
    # each cell trained one model
    assert len(list((env / "cache" / "models").glob("*.pt"))) == 2


# -- Dask ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dask_local_cluster_runs_a_grid(env):
    distributed = pytest.importorskip("dask.distributed")
    suite = write_suite(env / "d.toml", """
        attacks = ["_test_patch"]
        ratios = [0.1]
        defenses = ["none", "_t_repair", "_t_train"]
        [[grid]]
        [[grid]]
        attacks = ["clean"]
        ratios = [0.0]
        defenses = ["none", "_t_repair"]
    """)
    res = env / "results"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", processes=True,
                                  dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        out = run(suite, res, backend="dask", dask_address=cluster.scheduler_address)
    assert out.exit_code == 0 and out.ok == 5
    recs = records(res)
    assert len(recs) == 5 and all(r["status"] == "ok" for r in recs.values())
    # the runs executed in the dask workers, not in this process
    assert {e["pid"] for e in Store(res).read_events() if e["event"] == "started"} - {os.getpid()}
    assert sum(r["attack"] == "clean" for r in recs.values()) == 2
