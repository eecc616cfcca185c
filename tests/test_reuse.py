"""Artifact reuse inside a cell: a run depends on its own spec only, and a defense's output on a
clean cell (ratio 0) is computed once for every attack's clean cell."""
from __future__ import annotations

import torch

from bench.defense import Defense, DefenseOutput
from bench.runner import build_cell, build_context, clean_defense_id, execute
from bench.registry import DEFENSES
from bench.spec import RunSpec

BASE = dict(dataset="digits", model="cnn_tiny", seed=0, dataset_params={"image_size": 16},
            train={"epochs": 1, "batch_size": 64}, budget_scale=0.1, n_train=400, n_test=200)


@DEFENSES.register("_reuse_probe")
class ReuseProbe(Defense):
    """Test-only: reports the budget and the first draw of its generator, returns the model."""

    stage = "repair"

    def run(self, ctx):
        draw = torch.randint(0, 10**9, (1,), generator=ctx.generator).item()
        return DefenseOutput(ctx.model, info={"scale": ctx.budget.scale, "draw": draw})


def _probe(rec):
    return rec["defense_info"]["scale"], rec["defense_info"]["draw"]


def test_the_budget_names_the_cell_of_an_attack_that_trains_a_model():
    """A surrogate-based attack's poison depends on the attacker's scaled budget: two budget scales
    must not share its cell (nor its cached backdoored model); static attacks still share one."""
    for attack in ("narcissus", "lc", "iad"):
        a = RunSpec(attack=attack, poison_ratio=0.05, **BASE)
        b = RunSpec(attack=attack, poison_ratio=0.05, **{**BASE, "budget_scale": 0.5})
        assert a.cell_id != b.cell_id and a.model_id != b.model_id, attack
        # a clean cell trains on unpoisoned data: one model whatever the attack or its budget
        assert (RunSpec(attack=attack, poison_ratio=0.0, **BASE).model_id
                == RunSpec(attack="badnet", poison_ratio=0.0, **{**BASE, "budget_scale": 0.5}).model_id)
    a = RunSpec(attack="blend", poison_ratio=0.05, **BASE)
    assert a.cell_id == RunSpec(attack="blend", poison_ratio=0.05, **{**BASE, "budget_scale": 0.5}).cell_id


def test_a_run_takes_its_defense_fields_from_its_own_spec():
    from bench.cell import clear_memo

    a = RunSpec(attack="badnet", poison_ratio=0.1, defense="_reuse_probe", **BASE)
    b = RunSpec(attack="badnet", poison_ratio=0.1, defense="_reuse_probe", **{**BASE, "budget_scale": 0.5})
    assert a.cell_id == b.cell_id        # one memoised cell serves both
    assert [_probe(execute(s)[0])[0] for s in (a, b)] == [0.1, 0.5]
    cell = build_cell(a)
    assert build_context(DEFENSES.create("none"), cell, None, spec=b).budget.scale == 0.5
    # the generator stream belongs to the run's defense, not to whichever run built the cell
    clear_memo()
    execute(RunSpec(attack="badnet", poison_ratio=0.1, defense="none", **BASE))   # builds the cell
    after_other = _probe(execute(a)[0])[1]
    clear_memo()
    assert _probe(execute(a)[0])[1] == after_other                                # builds it itself


def test_clean_cells_of_several_attacks_share_one_defense_output(tmp_path):
    specs = [RunSpec(attack=a, poison_ratio=0.0, defense="fine_tuning", **BASE) for a in ("badnet", "blend", "sig")]
    assert len({clean_defense_id(s, "salt") for s in specs}) == 1
    assert len({s.run_id for s in specs}) == 3
    records = [execute(s, cache_dir=tmp_path)[0] for s in specs]
    assert [r["defense_cache_hit"] for r in records] == [False, True, True]
    assert len({r["defense_artifact"] for r in records}) == 1
    assert len({r["acc"] for r in records}) == 1                       # the same model ...
    assert len({(r["wall_s"], r["epochs_equiv"]) for r in records}) == 1  # ... at the cost measured once
    assert all(r["n_poison"] == 0 for r in records)
    # a poisoned cell never reuses, and another defense or budget is another output
    poisoned, _ = execute(RunSpec(attack="badnet", poison_ratio=0.1, defense="fine_tuning", **BASE), cache_dir=tmp_path)
    assert poisoned["defense_cache_hit"] is False and poisoned["defense_artifact"] is None
    other = RunSpec(attack="badnet", poison_ratio=0.0, defense="fine_tuning", **{**BASE, "budget_scale": 0.2})
    assert clean_defense_id(other, "salt") != clean_defense_id(specs[0], "salt")
    assert clean_defense_id(specs[0], "salt") != clean_defense_id(specs[0], "another salt")


def test_scheduler_queues_reusing_jobs_last(tmp_path):
    from bench.scheduler import Job, reuse_last

    jobs = [Job("train", RunSpec(attack=a, poison_ratio=r, defense="meca", **BASE))
            for a in ("badnet", "blend") for r in (0.0, 0.1)]
    order = [(j.spec.attack, j.spec.poison_ratio) for j in reuse_last(jobs)]
    assert order == [("badnet", 0.0), ("badnet", 0.1), ("blend", 0.1), ("blend", 0.0)]


def test_a_cached_artifact_holding_a_phase_count_loads_back(tmp_path):
    """An artifact that stores what ``Budget.epochs`` returned (a PhaseEpochs, a float subclass the
    data-only loader refuses) is saved with base types, so the second preparation loads it."""
    import enum
    from collections import OrderedDict

    from bench import artifacts
    from bench.budget import Budget

    class Colour(enum.IntEnum):
        RED = 1

    epochs = Budget(scale=0.5).epochs(4)
    state = OrderedDict(w=torch.ones(2))
    state._metadata = {"": {"version": 1}}
    data = {"epochs": epochs, "nested": [(epochs, Colour.RED)], "state": state, "flag": True}
    computed, _, hit = artifacts.cached(tmp_path, "k", lambda: (data, {}))
    assert not hit
    loaded, _, hit = artifacts.cached(tmp_path, "k", lambda: (_ for _ in ()).throw(AssertionError))
    assert hit
    assert type(loaded["epochs"]) is float and loaded["epochs"] == float(epochs)
    assert loaded["nested"] == [(float(epochs), 1)] and type(loaded["nested"][0][1]) is int
    assert loaded["flag"] is True and torch.equal(loaded["state"]["w"], torch.ones(2))
    assert state._metadata == {"": {"version": 1}}
