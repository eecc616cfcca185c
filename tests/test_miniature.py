"""``run --miniature``: every shipped suite runs in miniature on the CPU.

The paper suites are GPU-sized and need data this machine does not have; in miniature
(:mod:`bench.miniature`) they keep their datasets, models, attacks, defenses, ratios and grid blocks
at a few hundred images, one epoch and a tiny defense budget, on generated stand-ins in each
dataset's real layout. The slow test runs every shipped suite that way, each as the covering subset
of its grid that the earlier suites' miniature runs in the same results folder have not exercised
yet (``--miniature cover``: each dataset, model, attack, defense, ratio and seed, each model with
each defense and each dataset; the whole grid of every suite is validated), requires every run to
finish ok, and builds the report. The whole grid (``--miniature``) is the same code on more cells:
attacks on every dataset, every parameter variant.
"""
from __future__ import annotations

import json
import resource
import time

import pytest

from bench import miniature
from bench.spec import RunSpec
from bench.suite import expand, list_suites, load_suite

SUITES = [name for name, _ in list_suites()]


def _axes(specs):
    """What a suite crosses (what the miniature sets, ``cap_to_class`` and ``image_size``, left out)."""
    named = lambda n, p: n + json.dumps({k: v for k, v in p.items() if k not in ("cap_to_class", "image_size")},  # noqa: E731
                                        sort_keys=True)
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
    assert mini.run_id != real.run_id and mini.cell_id != real.cell_id and mini.model_id != real.model_id
    # the same sizes written by hand are still not a miniature run
    assert RunSpec.from_dict({**mini.to_dict(), "miniature": False}).run_id != mini.run_id
    assert mini.budget.epochs(100) < 1 and real.budget.epochs(100) == 1.0


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


@pytest.mark.slow
def test_every_shipped_suite_runs_in_miniature(tmp_path, monkeypatch, capsys):
    from bench.cli import main
    from bench.store import Store

    monkeypatch.setenv("BENCH_NO_DOWNLOAD", "1")
    results = tmp_path / "results"
    args = ["--results", str(results), "--data-root", str(tmp_path / "no-data"), "--no-progress"]
    took, t0 = {}, time.time()
    order = ["smoke"] + [s for s in SUITES if s != "smoke"]
    for name in order:
        t = time.time()
        code = main(["run", "--suite", name, "--miniature", "cover", *args])
        took[name] = round(time.time() - t, 1)
        assert code == 0, f"{name}: exit code {code}\n{capsys.readouterr().out[-3000:]}"
    records = list(Store(results).iter_records())
    failed = [(r["spec"]["suite"], r.get("error")) for r in records if r["status"] != "ok"]
    assert records and not failed
    assert all(r["miniature"] for r in records)
    ran = {r["suite"] for r in records}
    assert "meca-table2" in ran and "smoke" in ran

    assert main(["report", "--results", str(results)]) == 0
    report = results / "report"
    tables = sorted(p.name for p in report.glob("table*.md"))
    assert tables, "the report wrote no paper table"
    assert "miniature" in (report / "leaderboard.md").read_text()
    assert (report / "index.html").exists()
    rusage = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    cpu = sum(r.ru_utime + r.ru_stime for r in rusage)
    print(f"\nminiature suites: {len(records)} runs in {time.time() - t0:.0f} s wall, {cpu:.0f} s CPU; "
          f"per suite: {took}; tables: {tables}")
