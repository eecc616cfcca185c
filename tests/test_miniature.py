"""``run --miniature``: every shipped suite runs in miniature on the CPU.

The paper suites are GPU-sized and need data this machine does not have; in miniature
(:mod:`bench.miniature`) they keep their datasets, models, attacks, defenses, ratios and grid blocks
at a few hundred images, one epoch and a tiny defense budget, on generated stand-ins in each
dataset's real layout. The slow test runs every shipped suite that way (in three groups, one results
folder each), each as the covering subset of its grid that the earlier suites' miniature runs in the
same results folder have not exercised
yet (``--miniature cover``: each dataset, model, attack, defense, ratio and seed, each model with
each defense and each dataset; the whole grid of every suite is validated), requires every run to
finish ok, and builds the report. The whole grid (``--miniature``) is the same code on more cells:
attacks on every dataset, every parameter variant.
"""
from __future__ import annotations

import dataclasses
import json

import pytest

from bench import miniature
from bench.spec import RunSpec
from bench.suite import expand, list_suites, load_suite

SUITES = [name for name, _ in list_suites()]


def _axes(specs):
    """What a suite crosses (what the miniature sets, ``cap_to_class``, ``image_size`` and the
    defenses' ``miniature_params``, left out)."""
    from bench.registry import DEFENSES

    shrunk = {"cap_to_class", "image_size"}
    for name in DEFENSES.names():
        shrunk |= set(miniature._miniature_params(name))
    named = lambda n, p: n + json.dumps({k: v for k, v in p.items() if k not in shrunk}, sort_keys=True)  # noqa: E731
    return {(s.dataset, named("", s.dataset_params), s.model, named(s.attack, s.attack_params),
             named(s.defense, s.defense_params), s.poison_ratio, s.seed) for s in specs}


def test_a_miniature_run_has_its_own_ids_and_real_ids_do_not_move():
    real = RunSpec(dataset="cifar10", model="resnet18", attack="badnet", poison_ratio=0.05, defense="meca",
                   n_train=300, n_test=100, budget={"scale": 0.001})
    h = real.hashed()
    assert "miniature" not in h and set(h["budget"]) == {"scale", "min_steps"}   # ids of real runs kept
    mini = miniature.shrink_spec(real)
    assert mini.miniature and mini.budget.min_epochs < 1 and mini.budget.min_steps == 0
    assert mini.n_train <= 300 and mini.train["epochs"] == miniature.EPOCHS
    tiny = miniature.shrink_spec(dataclasses.replace(real, dataset="tinyimagenet", n_train=None), classes=200)
    steps = tiny.train["epochs"] * tiny.n_train / tiny.train["batch_size"]
    assert tiny.train["epochs"] < 1 and steps == pytest.approx(miniature.MAX_STEPS)
    assert mini.run_id != real.run_id and mini.cell_id != real.cell_id and mini.model_id != real.model_id
    # the same sizes written by hand are still not a miniature run
    assert RunSpec.from_dict({**mini.to_dict(), "miniature": False}).run_id != mini.run_id
    assert mini.budget.epochs(100) < 1 and real.budget.epochs(100) == 1.0


def test_a_miniature_run_takes_the_defenses_miniature_params():
    from bench.registry import DEFENSES

    shrunk = {}
    for name in DEFENSES.names():
        card = getattr(DEFENSES.get(name).obj, "card", None)
        spec = RunSpec(dataset="cifar10", model="resnet18", attack="badnet", poison_ratio=0.05, defense=name,
                       defense_params={"preset": "x"} if name == "meca" else {})
        params = miniature.shrink_spec(spec, classes=10).defense_params
        own = dict(getattr(card, "miniature_params", None) or {})
        assert params == {**spec.defense_params, **own}
        shrunk[name] = own
    assert shrunk["meca"]["iterations"] < DEFENSES.create("meca").params.iterations   # its rounds


@pytest.mark.parametrize("name", SUITES)
def test_miniature_keeps_every_axis_of_the_suite(name):
    specs = expand(load_suite(name))
    small = miniature.shrink(specs)
    assert _axes(small) == _axes(specs)
    assert all(s.miniature for s in small)
    chosen = miniature.cover(small)
    assert _axes(chosen) <= _axes(small) and chosen
    for axis in ("dataset", "model", "attack", "defense", "poison_ratio", "seed"):
        assert {getattr(s, axis) for s in chosen} == {getattr(s, axis) for s in small}, axis


@pytest.mark.parametrize("classes", [10, 100, 200])
def test_the_reserve_holds_two_images_of_every_class(classes):
    n, _ = miniature.sizes(classes)
    f = miniature.reserve_fraction(n, classes, 0.05)
    k = int(f * n)
    assert k >= 2 * classes and n - k >= miniature.MIN_VICTIM   # SCAn's reserve, ABL's 1 %
    assert classes * miniature._short_class_chance(n / classes, f) < 1e-3


def test_real_data_is_linked_and_absent_data_stood_in(tmp_path):
    from bench.datasets import load_dataset
    from bench.datasets.standins import write_cifar10

    real = tmp_path / "real"
    write_cifar10(real, per_batch=4, n_test=3)
    specs = miniature.shrink([RunSpec(dataset=d, model="resnet18", attack="badnet", poison_ratio=0.05)
                              for d in ("cifar10", "cifar100")])
    root = miniature.prepare_data(specs, real, tmp_path / "cache")
    assert (root / "cifar-10-batches-py").is_symlink()
    assert not (root / "cifar-100-python").is_symlink()
    with pytest.warns(UserWarning, match="md5"):
        b = load_dataset("cifar100", root, tmp_path / "cache")
    assert len(b.classes) == 100 and len(b.train) == miniature.sizes(100)[0]
    assert b.train.y.bincount(minlength=100).min() == miniature.PER_CLASS
    # once the real data is there, the stand-in gives way to a link
    from bench.datasets.standins import write_cifar100

    write_cifar100(real, n_train=6, n_test=2)
    miniature.prepare_data(specs, real, tmp_path / "cache")
    assert (root / "cifar-100-python").is_symlink()


def _group(name: str) -> str:
    """Which of three results folders a suite's miniature runs in: the CPU suites (the CPU models),
    the paper suites over several datasets, the other paper suites. A group's suites share runs
    (``cover`` skips what an earlier suite of the group exercised); groups share almost nothing
    (each model meets each defense in its own group anyway), so pytest-xdist runs them side by side."""
    specs = expand(load_suite(name))
    if all(s.model.startswith("cnn_") for s in specs):
        return "cpu"
    return "datasets" if len({s.dataset for s in specs}) > 1 else "paper"


GROUPS = {g: [n for n in SUITES if _group(n) == g] for g in ("cpu", "datasets", "paper")}


def test_the_groups_hold_every_shipped_suite():
    assert sorted(n for names in GROUPS.values() for n in names) == sorted(SUITES)
    assert "smoke" in GROUPS["cpu"] and "meca-table2" in GROUPS["datasets"] and "meca-table6" in GROUPS["paper"]


@pytest.mark.slow
@pytest.mark.parametrize("group", [
    # the smoke suite runs every installed defense: it shares an xdist group with the tests that
    # install one (tests/test_examples.py, the guide's page in tests/test_docs.py)
    pytest.param(g, marks=[pytest.mark.xdist_group("environment")] if g == "cpu" else []) for g in sorted(GROUPS)])
def test_every_shipped_suite_runs_in_miniature(group, tmp_path, monkeypatch, capsys):
    from bench.cli import main
    from bench.store import Store

    from bench import dispatch

    monkeypatch.setenv("BENCH_NO_DOWNLOAD", "1")
    # one in-process worker on one thread: the groups run side by side on pytest-xdist's workers,
    # and a worker given every core would oversubscribe them (measured: 466 s instead of 214 s)
    monkeypatch.setattr(dispatch, "cpu_cores", lambda: 1)
    results = tmp_path / "results"
    args = ["--results", str(results), "--data-root", str(tmp_path / "no-data"), "--no-progress", "--workers", "1"]
    order = sorted(GROUPS[group], key=lambda n: n != "smoke")   # smoke first: the README's suite
    for name in order:
        code = main(["run", "--suite", name, "--miniature", "cover", *args])
        assert code == 0, f"{name}: exit code {code}\n{capsys.readouterr().out[-3000:]}"
    records = list(Store(results).iter_records())
    failed = [(r["spec"]["suite"], r.get("error")) for r in records if r["status"] != "ok"]
    assert records and not failed
    assert all(r["miniature"] for r in records)
    assert {r["suite"] for r in records} <= set(order) and order[0] in {r["suite"] for r in records}

    assert main(["report", "--results", str(results)]) == 0
    report = results / "report"
    assert "miniature" in (report / "leaderboard.md").read_text()
    if group != "cpu":
        tables = sorted(p.name for p in report.glob("table*.md"))
        assert tables, "the report wrote no paper table"
