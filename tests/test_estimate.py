"""The dry run's cost estimate (bench.estimate, bench.cost): the counts of a small suite against
numbers derived by hand, the engine's own step and pass counts, and the printed table. Timings
are printed by the estimate but never asserted here."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bench import engine
from bench.budget import Budget
from bench.card import CardError, CostPhase, DefenseCard
from bench.cli import main
from bench.cost import CellSizes, CostError, fit_passes, phase_costs
from bench.data import Split
from bench.defense import Defense, DefenseOutput
from bench.engine import TrainConfig
from bench.estimate import Calibration, estimate
from bench.plan import plan
from bench.protocol import folder_salt
from bench.registry import DEFENSES
from bench.store import Store
from bench.suite import expand, load_suite

SUITE = """
description = "estimate test: digits 400 images, two attacks, clean and 10 %"
datasets = [{name = "digits", params = {image_size = 32}}]
models = ["cnn_tiny"]
attacks = ["badnet", "blend"]
ratios = [0.0, 0.1]
seeds = [0]
defenses = ["none", "fine_tuning", "clp", "dbr", "abl"]
target = 1
reserve_fraction = 0.05

[budget]
epochs = 2
scale = 0.5
min_steps = 8
n_train = 400
n_test = 100

[train]
batch_size = 32
"""

# By hand. 400 training images, a reserve of floor(0.05 * 400) = 20, so the victim trains on 380.
# Standard training: batch 32, ceil(380 / 32) = 12 steps per epoch, 2 epochs = 24 steps = 760 images.
STANDARD = 760
# The floor lifts a phase to 8 steps, but never beyond the steps of its paper epochs (Budget.phase_steps).
# fine_tuning: the 20 reserve images, batch min(128, 20) = 20 (1 step per epoch), 10 paper epochs x 0.5
# = 5 steps, lifted to the floor of 8 steps (the paper's 10 are more) = 8 epochs = 160 images.
FINE_TUNING = 8 * 20
# clp: repair_epochs = 0 (data-free): nothing.
# dbr (batch 128, 3 steps per epoch over 380 images):
#   auxiliary model: 2 x 0.5 = 1 epoch = 3 steps -> lifted to the paper's 2 epochs = 6 steps (under the
#   floor of 8) = 760 images
#   class separation: 10 x 0.5 = 5 epochs = 15 steps = 1,900 images
#   BR: round(20 x 0.5) = 10 rounds, each one epoch (1 step) over int(0.05 x 380) = 19 flagged images and
#   one over int(0.2 x 380) = 76 clean ones: the paper's one epoch, which the budget does not scale, so
#   the floor leaves it: 10 x (19 + 76)
DBR = 760 + 1900 + 10 * (19 + 76)
# abl (batch 128): isolation 20 x 0.5 = 10 epochs = 3,800; clean training 60 x 0.5 = 30 epochs over
# 380 - int(0.01 x 380) = 377 images = 11,310; unlearning 5 x 0.5 = 2.5 epochs over the 3 isolated
# images, round(2.5) = 2 steps, lifted to the paper's 5 epochs = 5 steps (under the floor of 8) = 15.
ABL = 3800 + 30 * 377 + 5 * 3
# Cells: badnet@0, blend@0 (clean: one shared model, and one shared output per defense), badnet@0.1,
# blend@0.1: 3 models trained, 3 runs of each defense computed, 4 jobs of each.
EXPECTED = {"backdoor": 3 * STANDARD, "artifact": 0, "train": 3 * ABL, "repair": 3 * (FINE_TUNING + DBR)}


def _fake_calibration(model, num_classes, image_shape, batch_size, *, threads=None, workers=1):
    return Calibration(model, tuple(image_shape), batch_size, steps=10, seconds=10 * batch_size / 500.0,
                       threads=threads or 1, device="cpu")  # 500 images/s, no inference rate


def _fake_calibration_with_inference(*args, **kw):
    import dataclasses

    return dataclasses.replace(_fake_calibration(*args, **kw), forward_images_per_s=2000.0)


def _jobs(tmp_path):
    path = tmp_path / "est.toml"
    path.write_text(SUITE)
    suite = load_suite(path)
    results = tmp_path / "results"
    store = Store(results).ensure()
    salt = folder_salt(results)
    jobs, _ = plan(expand(suite), store, results / "cache", salt)
    return jobs, results, salt


def test_suite_counts_match_the_hand_derivation(tmp_path):
    jobs, results, salt = _jobs(tmp_path)
    est = estimate("est", jobs, data_root=None, cache_dir=results / "cache", salt=salt, workers=2,
                   calibrate_fn=_fake_calibration)
    rows = {r["kind"]: r for r in est.rows()}
    assert {k: rows[k]["jobs"] for k in EXPECTED} == {"backdoor": 4, "artifact": 0, "train": 4, "repair": 12}
    assert {k: rows[k]["images"] for k in EXPECTED} == EXPECTED
    assert rows["total"]["images"] == sum(EXPECTED.values())
    assert rows["backdoor"]["trainings"] == pytest.approx(3.0)
    assert rows["train"]["trainings"] == pytest.approx(3 * ABL / STANDARD)
    # work shared between jobs is counted once, and said so
    notes = sorted(j.note for j in est.jobs if j.note)
    assert notes.count("model trained by another job") == 1
    assert notes.count("clean-cell output computed by another job") == 4  # one per defense but none
    # time: images / (500 images/s) per worker, summed; wall time over 2 workers
    assert rows["total"]["cpu_s"] == pytest.approx(sum(j.work for j in est.jobs) / 500.0)
    assert sum(j.work for j in est.jobs) == rows["total"]["images"]  # these phases weigh 1
    assert rows["total"]["gpu_s"] is None  # no device check
    # every job evaluates its model once: 100 clean test images and the 90 outside the target class
    assert {j.eval_images for j in est.jobs} == {190}
    with_eval = estimate("est", jobs, data_root=None, cache_dir=results / "cache", salt=salt, workers=2,
                         calibrate_fn=_fake_calibration_with_inference)
    total = {r["kind"]: r for r in with_eval.rows()}["total"]
    assert total["cpu_s"] == pytest.approx(rows["total"]["cpu_s"] + len(jobs) * 190 / 2000.0)


def test_gpu_time_from_a_device_check_json(tmp_path):
    jobs, results, salt = _jobs(tmp_path)
    check = tmp_path / "device-check.json"
    check.write_text(json.dumps({"gpu": "Fake GPU", "torch": "0", "created": "today",
                                 "throughput": {"cnn_tiny": {"engine_img_s": 1000.0, "image_size": 16}},
                                 "jobs_per_gpu": {"jobs_per_gpu": 3, "speedup": 2.0, "model": "cnn_tiny"}}))
    est = estimate("est", jobs, data_root=None, cache_dir=results / "cache", salt=salt, workers=2,
                   device_check=check, calibrate_fn=_fake_calibration)
    total = {r["kind"]: r for r in est.rows()}["total"]
    # measured at 16 px, the suite's images are 32 px: 4 x the pixels, a quarter of the rate
    work = sum(j.work for j in est.jobs)
    assert total["gpu_s"] == pytest.approx(work / 250.0)
    text = "\n".join(est.lines())
    assert "Fake GPU" in text and "scaled from 16x16 by pixel count" in text
    assert "with --jobs-per-gpu 3" in text


def test_dry_run_prints_the_estimate(tmp_path, capsys):
    path = tmp_path / "est.toml"
    path.write_text(SUITE)
    rc = main(["run", "--suite", str(path), "--results", str(tmp_path / "results"), "--dry-run", "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "cost estimate for suite 'est' (an estimate" in out
    total = next(ln for ln in out.splitlines() if ln.startswith("| total"))
    assert f"{sum(EXPECTED.values()):,d}" in total
    assert "CPU estimate calibrated here" in out and "images/s per worker" in out
    assert "GPU: unknown (no device check" in out
    # the job list keeps its form: only job lines start with two spaces (tests and scripts read them)
    kinds = {ln.split()[0] for ln in out.splitlines() if ln.startswith("  ")}
    assert kinds == {"backdoor", "train", "repair"}
    # saved for the report, each job under the run id it will write
    saved = json.loads((tmp_path / "results" / "estimates" / "est.json").read_text())
    listed = {ln.split()[-3] for ln in out.splitlines() if ln.startswith("  ")}
    assert {j["run_id"] for j in saved["jobs"]} == listed and "estimate saved to" in out
    rc = main(["run", "--suite", str(path), "--results", str(tmp_path / "results"), "--dry-run", "--no-estimate"])
    assert "cost estimate" not in capsys.readouterr().out


def test_the_report_sets_a_saved_estimate_beside_the_measured_times(tmp_path):
    import pandas as pd

    from bench.reports import estimate_check

    assert estimate_check.busy_seconds([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17   # chunks' gaps left out
    est = {"suite": "s", "workers": 2, "cores": 2, "load": 0.1, "jobs": [
        {"run_id": "b", "kind": "backdoor", "cell": "c", "cpu_s": 100.0},
        {"run_id": "r1", "kind": "repair", "cell": "c", "cpu_s": 10.0},
        {"run_id": "r2", "kind": "repair", "cell": "c", "cpu_s": 30.0},
        {"run_id": "r3", "kind": "repair", "cell": "c", "cpu_s": 5.0}]}   # r3 has not run yet
    records = pd.DataFrame({"run_id": ["b", "r1", "r2", "x"], "status": ["ok"] * 4,
                            "started_at": [0.0, 150.0, 150.0, 0.0], "finished_at": [150.0, 170.0, 210.0, 1.0]})
    table, wall = estimate_check.compare(est, records)
    rows = table.set_index("kind")
    assert rows.loc["backdoor", "ratio"] == pytest.approx(1.5)
    assert rows.loc["repair", ["jobs", "measured_jobs"]].tolist() == [3, 2]
    assert rows.loc["repair", "ratio"] == pytest.approx((20 + 60) / 40)
    assert rows.loc["total", "measured_s"] == pytest.approx(230)
    # the estimate's wall for the compared jobs: the model, then its longest repair (the chain)
    assert wall["estimated_s"] == pytest.approx(130) and wall["measured_s"] == pytest.approx(210)
    assert not wall["complete"]
    (tmp_path / "estimates").mkdir()
    (tmp_path / "estimates" / "s.json").write_text(json.dumps(est))
    text = estimate_check.markdown(tmp_path, records)
    assert "## s" in text and "| backdoor | 1 | 1 | 1m 40s | 2m 30s | 1.50 |" in text
    assert "Not every estimated job has a record yet" in text
    assert estimate_check.markdown(tmp_path / "none", records) is None


def test_a_suite_run_in_chunks_keeps_an_estimate_of_every_chunk(tmp_path):
    """A dry run of the same jobs (or more) replaces the saved estimate; one of a resumed suite's
    remaining jobs keeps the earlier one; one of new jobs (attacks added to the suite) goes beside
    it, and publishing keeps both beside what is already published."""
    from bench.estimate import store, suite_estimates
    from bench.reference import _copy_estimates

    def est(*ids, created=1.0):
        return {"suite": "s", "created": created, "workers": 2,
                "jobs": [{"run_id": i, "kind": "repair", "cell": "c", "cpu_s": 1.0} for i in ids]}

    folder = tmp_path / "results" / "estimates"
    assert store(folder, est("a", "b")) == folder / "s.json"
    assert store(folder, est("a", "b", created=2.0)) == folder / "s.json"          # the same jobs again
    assert json.loads((folder / "s.json").read_text())["created"] == 2.0
    assert store(folder, est("b")) is None                                        # a resumed dry run
    assert store(folder, est("c", "d")) == folder / "s.2.json"                    # attacks added
    assert store(folder, est("e")) == folder / "s.3.json"
    assert store(folder, est("a", "b", "c", "d", "e")) == folder / "s.json"       # the whole suite again
    assert suite_estimates(folder, "s") == [folder / "s.json"]
    (folder / "other.json").write_text(json.dumps({**est("z"), "suite": "other"}))
    assert suite_estimates(folder, "s") == [folder / "s.json"]
    # publishing a later chunk's estimate beside the published one
    dest = tmp_path / "ref"
    store(dest / "estimates", est("a", "b"))
    (folder / "s.json").unlink()
    store(folder, est("c"))
    _copy_estimates(tmp_path / "results", dest, {"s"})
    published = [json.loads(p.read_text()) for p in suite_estimates(dest / "estimates", "s")]
    assert [[j["run_id"] for j in e["jobs"]] for e in published] == [["a", "b"], ["c"]]
    assert not (dest / "estimates" / "other.json").exists()


@pytest.mark.parametrize("n,batch,paper,floor", [(100, 32, 4.0, 0), (100, 32, 10.0, 0), (100, 32, 1.2, 0),
                                                 (100, 32, 4.0, 9), (20, 128, 8.0, 5), (96, 32, 6.0, 0),
                                                 (100, 32, 2.0, 50), (100, 32, None, 9)])
def test_fit_passes_is_the_engines_arithmetic(n, batch, paper, floor):
    """What bench.cost counts is what engine.fit does under the cost meter and the step floor, for a
    phase scaled by the budget (a quarter of ``paper`` epochs) and for an unscaled one (None: 1.0)."""
    budget = Budget(scale=0.25, min_steps=floor)
    epochs = budget.epochs(paper) if paper is not None else 1.0
    g = torch.Generator().manual_seed(0)
    data = Split(torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8), torch.arange(n) % 3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    cfg = TrainConfig(epochs=epochs, batch_size=batch, lr=0.01, augment=False)
    previous = engine.runtime()
    engine.configure(device="cpu")
    try:
        with engine.measure_cost(n) as meter, engine.step_floor(budget):
            result = engine.fit(model, data, cfg, generator=g)
    finally:
        engine.configure(**vars(previous))
    assert fit_passes(n, batch, epochs, budget) == (result.steps, meter.samples)


def test_phase_declarations():
    @__import__("dataclasses").dataclass
    class P:
        share: float = 0.25
        epochs: float = 8
        rounds: int = 3
        on: bool = True
        cap: int = 7

    sizes = CellSizes(n_train=100, reserve=10, num_classes=4, epochs=3, batch_size=50,
                      budget=Budget(scale=0.5, min_steps=0))
    phases = (CostPhase("a", fraction="share", epochs="epochs", batch_size=25),           # 25 img x 4 epochs
              CostPhase("b", fraction="1-share", epochs="standard"),                       # 75 img x 3 epochs
              CostPhase("c", data="reserve", limit="cap", epochs=2, scaled=False, repeat="rounds"),  # 7 x 2 x 3
              CostPhase("d", kind="grad", epochs=1, repeat="classes", passes=2),           # 100 x 2 x 4
              CostPhase("e", when={"on": False}, epochs=1))                                # skipped
    costs = {c.what: c.images for c in phase_costs(phases, P(), sizes)}
    assert costs == {"a": 100, "b": 225, "c": 42, "d": 800}
    with pytest.raises(CostError):
        CostPhase("x", data="test")
    with pytest.raises(CardError, match="cost_phases name parameter"):
        class Bad(Defense):
            Params = P
            card = DefenseCard(name="_bad_cost", cost_phases=(CostPhase("x", epochs="nope"),))


class _NoHint(Defense):
    """A defense that declares no cost phases."""

    stage = "repair"

    def run(self, ctx):
        return DefenseOutput(ctx.model)


@pytest.fixture
def nohint_registered():
    DEFENSES.register("_t_nohint")(_NoHint)
    yield
    DEFENSES.remove("_t_nohint")   # a suite's "*" elsewhere in the session must not find it


def test_a_defense_without_cost_phases_is_named(tmp_path, nohint_registered):
    path = tmp_path / "s.toml"
    path.write_text(SUITE.replace('defenses = ["none", "fine_tuning", "clp", "dbr", "abl"]',
                                  'defenses = ["none", "_t_nohint"]'))
    store = Store(tmp_path / "r").ensure()
    jobs, _ = plan(expand(load_suite(path)), store, tmp_path / "r" / "cache", folder_salt(tmp_path / "r"))
    est = estimate("s", jobs, data_root=None, cache_dir=tmp_path / "r" / "cache", workers=1,
                   calibrate_fn=_fake_calibration)
    text = "\n".join(est.lines())
    assert "_t_nohint: 4 job(s), no cost phases declared on its card: counted as 0" in text


def test_every_shipped_defense_declares_its_cost():
    import defenses  # noqa: F401

    missing = [n for n in DEFENSES.list("*") if not n.startswith("_")
               and getattr(DEFENSES.get(n).card, "cost_phases", None) is None]
    assert not missing, f"defenses without cost_phases on their card: {missing}"


def test_a_defense_that_starts_from_the_victim_is_charged_its_first_phase_without_time(tmp_path):
    """MeCa's full warm-up is the cell's backdoored model: counted in its trainings, no compute."""
    from bench.estimate import CellFacts, job_cost
    from bench.plan import Job
    from bench.spec import RunSpec

    facts = CellFacts(400, 10, (3, 32, 32), 100)
    costs = {}
    for warmup in ("epochs", "full"):
        spec = RunSpec(dataset="digits", model="cnn_tiny", attack="badnet", poison_ratio=0.1, defense="meca",
                       defense_params={"warmup": warmup}, train={"epochs": 2, "batch_size": 32})
        costs[warmup] = job_cost(Job("repair" if warmup == "full" else "train", spec), facts)
    own, charged = costs["epochs"].phases[0], costs["full"].phases[0]
    assert charged.what.startswith("warm-up") and "charged" in charged.what and charged.weight == 0
    assert charged.images == costs["full"].standard and own.images != charged.images
    assert costs["full"].trainings == pytest.approx(
        costs["epochs"].trainings + (charged.images - own.images) / costs["full"].standard)
    assert costs["full"].work == pytest.approx(costs["epochs"].work - own.work)
