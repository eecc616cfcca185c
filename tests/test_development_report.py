"""The development report (bench.reports.development): claims read from the plug-ins, references
from the no-defense and clean rows, per-round detection paired with the poison mask after the run,
evaluation cells left out, failed runs counted; on hand-made records (nothing trains)."""
from __future__ import annotations

import json

import pytest
import torch

from bench.files import atomic_torch_save
from bench.registry import DEFENSES, params_to_dict
from bench.reports import development as dev


def _params(**over):
    return params_to_dict(DEFENSES.create("meca", **over).params)


def _record(run_id, defense, cell, *, seed=11, target=3, ratio=0.05, params=None, **metrics):
    return {"run_id": run_id, "cell_id": cell, "defense": defense, "attack": "trojan", "dataset": "cifar10",
            "model": "cnn_small", "seed": seed, "poison_ratio": ratio, "target": target, "status": "ok",
            "defense_params": params or {}, "n_train": 100, "budget_scale": 0.2, "epochs_equiv": 30.0,
            "acc_nodef": 0.68, "asr_nodef": 0.98, **metrics}


def _diag(accs, asrs, poison, flags_per_round, dc_per_round):
    return {"checkpoints": [{"tag": f"enhance_round{k}", "acc": a, "asr": s, "ra": 0.0}
                            for k, (a, s) in enumerate(zip(accs, asrs))],
            "sample_logs": {**{f"flags_round{k}": f.float() for k, f in enumerate(flags_per_round)},
                            **{f"dc_round{k + 1}": d.float() for k, d in enumerate(dc_per_round)}},
            "logs": {}, "poison_mask": poison, "cover_mask": torch.zeros_like(poison), "scores": None,
            "flags": flags_per_round[-1]}


def _write(root, records, diags):
    (root / "records").mkdir(parents=True)
    for r in records:
        (root / "records" / f"{r['run_id']}.json").write_text(json.dumps(r))
    for run_id, d in diags.items():
        atomic_torch_save(d, root / "diagnostics" / f"{run_id}.pt")


@pytest.fixture
def results(tmp_path):
    poison = torch.zeros(100, dtype=torch.bool)
    poison[:10] = True
    good_flags = [torch.ones(100, dtype=torch.bool), poison | (torch.arange(100) < 40), poison.clone()]
    dc = [torch.arange(100) >= 90, torch.arange(100) >= 50]
    records = [
        _record("clean", "none", "clean-cell", ratio=0.0, acc=0.70, asr=0.01, ra=0.69),
        _record("nodef", "none", "cell", acc=0.68, asr=0.98, ra=0.02),
        # c01: the defaults; Fig. 6 right, detection right, final model right: passes
        _record("good", "meca", "cell", params=_params(), acc=0.67, asr=0.01, ra=0.66, tpr=1.0, fpr=0.0),
        # c02: ACC rises over the rounds and detection flags most clean samples: fails
        _record("bad", "meca", "cell", params=_params(dc_select="accumulate"), acc=0.60, asr=0.30, ra=0.4,
                tpr=1.0, fpr=0.7),
        # an evaluation cell (target 1): never counted
        _record("eval", "meca", "eval-cell", target=1, seed=0, params=_params(), acc=0.9, asr=0.0, tpr=1.0,
                fpr=0.0),
        # a failed run of a third configuration (its record keeps only the spec's overrides)
        {"run_id": "boom", "defense": "meca", "attack": "trojan", "seed": 11, "status": "failed",
         "error": "DivergenceError: loss is nan", "spec": {"attack_params": {"target": 3},
                                                           "defense_params": {"coef_on": "learn"}}},
    ]
    diags = {"good": _diag([0.68, 0.5, 0.3], [0.98, 0.99, 0.99], poison, good_flags, dc),
             "bad": _diag([0.4, 0.5, 0.62], [0.98, 0.97, 0.9], poison, good_flags, dc)}
    _write(tmp_path, records, diags)
    return tmp_path


def test_development_table_checks_the_declared_claims(results):
    runs, failed, notes = dev.development_runs(results)
    assert notes["evaluation_cells"] == 1 and len(runs) == 2 and len(failed) == 1
    configs, cells = dev.development_table(runs, failed)
    by = {r["configuration"]: r for _, r in configs.iterrows()}
    good, bad, boom = by["defaults"], by["dc_select=accumulate"], by["coef_on=learn"]
    assert (good["config"], boom["config"], bad["config"]) == ("c01", "c02", "c03")   # defaults first, then by name
    assert good["pass"] and good["fig6_acc_falls"] == pytest.approx(0.38) and good["detection_fpr"] == 0.0
    assert not bad["pass"] and not bad["fig6_acc_falls ok"] and not bad["fig6_acc_never_rises ok"]
    assert not bad["detection_fpr ok"] and bad["detection_tpr ok"]
    assert not bad["fig6_asr_never_falls ok"]   # 0.98 -> 0.90: an 7-point drop in the last round
    assert boom["failed"] == 1 and boom["cells"] == 0 and not boom["pass"]
    # the clean-training reference comes from the clean cell (0.70), not the backdoored model
    acc_rows = cells[(cells["claim"] == "acc_near_clean")]
    assert set(acc_rows["threshold"].round(6)) == {0.65} and set(acc_rows["clean_ref"]) == {"clean cell"}


def test_rounds_pair_the_logged_flags_with_the_poison_mask_after_the_run(results):
    runs, _, _ = dev.development_runs(results)
    rounds = {r["round"]: r for r in next(r for r in runs if r["row"]["run_id"] == "good")["rounds"]}
    assert rounds[0]["tpr"] == 1.0 and rounds[0]["fpr"] == 1.0          # round 0: everything agrees
    assert rounds[1]["fpr"] == pytest.approx(30 / 90)                     # 40 flagged, 10 of them poison
    assert rounds[2]["tpr"] == 1.0 and rounds[2]["fpr"] == 0.0
    assert rounds[1]["dc_poison_share"] == 0.0 and rounds[2]["du_poison_share"] == pytest.approx(0.2)
    assert rounds[2]["acc"] == 0.3


def test_build_writes_the_table_and_figures(results, tmp_path):
    written = dev.build(results, tmp_path / "out")
    text = written["table"].read_text()
    assert "| c01 | defaults |" in text and "**pass**" in text and "Left out: 1 run(s)" in text
    assert "precisely distinguishes" in text   # each claim's sentence is printed under the table
    names = {p.name for p in written["figures"]}
    assert {"dev_configs.png", "dev_rounds.png"} <= names
    assert dev.main(["--results", str(results), "--out", str(tmp_path / "again")]) == 0


def test_claims_that_cannot_be_read_are_refused():
    with pytest.raises(dev.ClaimError):
        dev._check_value("enhance_round*.median.acc", "x")
    with pytest.raises(dev.ClaimError):
        dev._check_value("final.loss", "x")
    for name in ("meca", "nt_ml"):   # the shipped declarations read
        assert dev.claims_of(name)


def test_configuration_ids_follow_the_suite_file():
    """c01, c02, ... are the numbers the suite's comments use, whichever runs are there yet."""
    from bench.reports.development import _config_labels, suite_order

    order = suite_order("meca", {"meca-dev-coarse", "no-such-suite"})
    assert len(order) == 10 and len(set(order)) == 10
    assert '"warmup": "full"' in order[1] and '"warmup": "full"' not in order[0]
    # only c02 and c07 finished: they keep their numbers; a configuration no suite declares comes after
    extra = json.dumps({"iterations": 3}, sort_keys=True)
    labels = _config_labels("meca", [order[6], order[1], extra], order)
    assert labels[order[1]][0] == "c02" and labels[order[6]][0] == "c07" and labels[extra][0] == "c11"
    assert "rho_schedule=step" in labels[order[1]][1]   # told apart from today's defaults


def _config(cid, ok, values, *, cells=4, cost=2.0, n_clean=100, n_ml=100):
    """A development-table row of NT-ML (its four claims) and its four runs."""
    from bench.reports.development import claims_of

    names = [c["name"] for c in claims_of("nt_ml")]
    row = {"name": "nt_ml", "defense": "NT-ML", "config": cid, "configuration": cid, "cells": cells, "failed": 0,
           "epochs_equiv": cost, "params": json.dumps({"n_clean": n_clean, "tag": cid})}
    for name, passed, value in zip(names, ok, values):
        row[name], row[f"{name} ok"] = value, passed
    row["pass"] = all(ok)
    runs = [{"row": {"defense": "nt_ml", "defense_info": {"n_clean": n_clean, "n_ml_clean": n_ml}},
             "params_key": row["params"]} for _ in range(cells)]
    return row, runs


def _select(*configs):
    import pandas as pd

    from bench.reports.selection import select

    rows, runs = zip(*configs)
    return select(pd.DataFrame(rows), [r for rs in runs for r in rs])[0]


def test_the_written_rule_picks_the_closest_when_none_passes():
    """NT-ML's rule: the most claims on every cell, then the higher worst-cell final ACC, then the
    fewest clean samples; a configuration run on fewer cells (screened out) cannot be chosen."""
    choice = _select(_config("c01", (1, 1, 0, 1), (0.54, 0.10, 0.086, 0.007)),
                     _config("c02", (1, 1, 0, 0), (0.54, 0.13, 0.50, 0.40)),
                     _config("c05", (1, 1, 0, 1), (0.54, 0.10, 0.171, 0.05), n_ml=250),
                     _config("c09", (1, 1, 1, 1), (0.54, 0.10, 0.60, 0.0), cells=1))
    assert (choice["config"], choice["kind"]) == ("c05", "closest")
    assert choice["misses"] == ["acc_near_clean (17.1)"]
    assert choice["order"] == ["c05", "c01", "c02"] and choice["left_out"] == ["c09"]


def test_the_written_rule_picks_the_winner_with_the_fewest_clean_samples():
    choice = _select(_config("c01", (1, 1, 1, 1), (0.54, 0.10, 0.60, 0.0), n_ml=250, cost=1.0),
                     _config("c02", (1, 1, 1, 1), (0.54, 0.10, 0.58, 0.0), cost=3.0),
                     _config("c03", (1, 1, 0, 1), (0.54, 0.10, 0.20, 0.0), cost=0.5))
    assert (choice["config"], choice["kind"], choice["misses"]) == ("c02", "winner", [])
    assert choice["order"] == ["c02", "c01"]


def test_a_selection_key_that_cannot_be_read_is_refused(monkeypatch):
    from bench.reports import selection

    monkeypatch.setattr(selection, "rule_of", lambda name: {"closest": ("worst:no_such_claim",)})
    with pytest.raises(selection.SelectionError, match="no claim 'no_such_claim'"):
        _select(_config("c01", (1, 1, 0, 1), (0.54, 0.10, 0.086, 0.007)))


def test_a_published_folder_rebuilds_the_same_table_from_its_summaries(results, tmp_path):
    """``publish`` ships no per-sample diagnostics, only each run's summary (checkpoint metrics,
    per-round rates): the development table and its per-round rows come out the same from it."""
    from bench.protocol import SALT_FILE
    from bench.reference import publish

    for path in (results / "records").glob("*.json"):   # publish wants whole run records
        rec = json.loads(path.read_text())
        path.write_text(json.dumps({"spec": {}, "model": "cnn_small", "dataset": "cifar10", **rec}))
    (results / SALT_FILE).write_text("s" * 32 + "\n")
    dest = tmp_path / "published"
    publish(results, dest)
    assert not (dest / "diagnostics").exists()
    assert sorted(p.stem for p in (dest / dev.SUMMARIES).glob("*.json")) == ["bad", "good"]
    mine, theirs = dev.build(results, tmp_path / "a"), dev.build(dest, tmp_path / "b")
    assert mine["configs"].equals(theirs["configs"])
    for name in ("development_cells.csv", "development_rounds.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
