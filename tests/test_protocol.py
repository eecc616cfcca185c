"""The fair protocol: a defense gets what it declares and nothing else; poison hides nothing."""
from dataclasses import dataclass

import pytest
import torch

from bench.attack import Attack, AttackParams
from bench.data import Split
from bench.defense import Defense, DefenseOutput, ProtocolError
from bench.metrics import auroc
from bench.registry import ATTACKS, DEFENSES
from bench.cell import split_reserve
from bench.runner import build_cell, build_context, execute
from bench.spec import RunSpec

from conftest import toy_split


@dataclass
class StampParams(AttackParams):
    alpha: float = 0.3


@ATTACKS.register("_test_stamp")
class StampAttack(Attack):
    """Test attack: a blended bright corner (off the 8-bit grid before quantisation)."""

    Params = StampParams

    def apply_poison(self, x, idx):
        out = x.clone()
        out[:, :, -4:, -4:] = torch.lerp(out[:, :, -4:, -4:], torch.ones_like(out[:, :, -4:, -4:]),
                                         self.params.alpha)
        return out


@DEFENSES.register("_test_cheater")
class Cheater(Defense):
    """Tries to read everything the protocol forbids, and reports what happened in its info."""

    stage = "repair"

    def run(self, ctx):
        seen = {}
        for name in ["test", "test_set", "poison_mask", "cover_mask", "target", "poison_ratio", "attack",
                     "attack_name", "source_classes", "reserve", "train"]:
            try:
                getattr(ctx, name)
                seen[name] = "GOT IT"
            except ProtocolError as exc:
                seen[name] = str(exc)
        seen["attrs"] = [a for a in dir(ctx) if not a.startswith("__")]
        return DefenseOutput(ctx.model, info=seen)


@DEFENSES.register("_test_reserve_user")
class ReserveUser(Defense):
    """Declares an unlabeled reserve."""

    stage = "repair"
    needs_reserve = True
    reserve_labels = False

    def run(self, ctx):
        return DefenseOutput(ctx.model, info={"reserve_len": len(ctx.reserve),
                                              "reserve_labelled": ctx.reserve.y is not None})


@DEFENSES.register("_test_trainer")
class Trainer(Defense):
    """A train-stage defense that does not start from the victim, yet asks for the model."""

    stage = "train"

    def run(self, ctx):
        try:
            ctx.model
            got = "GOT IT"
        except ProtocolError as exc:
            got = str(exc)
        return DefenseOutput(ctx.new_model(), info={"model": got})


@DEFENSES.register("_test_from_victim")
class FromVictim(Defense):
    """A train-stage defense that starts from the victim and returns it unchanged."""

    stage = "train"
    starts_from_victim = True

    def run(self, ctx):
        return DefenseOutput(ctx.model, info={"train": len(ctx.train)})


SPEC = dict(dataset="digits", model="cnn_tiny", attack="_test_stamp", poison_ratio=0.1,
            dataset_params={"image_size": 16}, train={"epochs": 1, "batch_size": 64, "lr": 0.05})


def test_cheating_defense_gets_errors_and_no_data():
    record, _ = execute(RunSpec(defense="_test_cheater", **SPEC))
    SEEN = record["defense_info"]
    for name in ["test", "test_set", "poison_mask", "cover_mask", "target", "poison_ratio", "attack",
                 "attack_name", "source_classes"]:
        assert SEEN[name] != "GOT IT", name
        assert "fair protocol" in SEEN[name]
    assert "did not declare needs_reserve" in SEEN["reserve"]
    assert "did not declare needs_train" in SEEN["train"]
    # nothing in the context's namespace carries test data or ground truth
    for attr in SEEN["attrs"]:
        assert not any(w in attr.lower() for w in ("test", "mask", "target", "ratio", "attack")), attr
    assert record["status"] == "ok"


def test_reserve_is_only_what_was_declared():
    record, _ = execute(RunSpec(defense="_test_reserve_user", **SPEC))
    n_total = record["n_train"] + record["reserve_size"]   # the reserve was carved out first
    assert record["defense_info"]["reserve_len"] == record["reserve_size"] == int(0.05 * n_total)
    assert record["defense_info"]["reserve_labelled"] is False


def test_a_train_stage_defense_gets_the_victim_only_when_it_starts_from_it(tmp_path):
    from bench.plan import defense_stage

    record, _ = execute(RunSpec(defense="_test_trainer", **SPEC), cache_dir=tmp_path)
    assert "did not declare" in record["defense_info"]["model"] and "starts_from_victim" in record["defense_info"]["model"]
    assert defense_stage(RunSpec(defense="_test_trainer", **SPEC)) == "train"

    spec = RunSpec(defense="_test_from_victim", **SPEC)
    assert defense_stage(spec) == "repair"     # it waits for the cell's model as a repair does
    record, _ = execute(spec, cache_dir=tmp_path)
    none, _ = execute(RunSpec(defense="none", **SPEC), cache_dir=tmp_path)
    # the very model the no-defense row evaluates, and the training set as declared
    assert (record["acc"], record["asr"]) == (none["acc"], none["asr"])
    assert record["defense_info"]["train"] == record["n_train"]
    # charged with that training: its passes, time and phases, marked, ahead of its own (none here)
    assert record["epochs_equiv"] == pytest.approx(none["epochs_equiv"]) and record["epochs_equiv"] > 0
    assert record["wall_s"] >= none["wall_s"]
    assert [ph["steps"] for ph in record["phases"]] == [ph["steps"] for ph in none["phases"]]
    assert all(ph["charged"] and "charged" in ph["phase"] for ph in record["phases"])


def test_starts_from_victim_is_refused_on_a_repair_card():
    from bench.card import CardError, DefenseCard

    with pytest.raises(CardError, match="starts_from_victim is for train-stage"):
        DefenseCard(name="x", stage="repair", starts_from_victim=True)


def test_poisoned_samples_keep_positions_and_8bit_grid():
    cell = build_cell(RunSpec(defense="none", **SPEC))
    data, mask = cell.poisoned.data, cell.poisoned.poison_mask
    assert data.x.dtype == torch.uint8  # quantised exactly like clean images
    _, victim_idx = split_reserve(len(cell.bundle.train), cell.spec.reserve_fraction, cell.seeds)
    victim = cell.bundle.train.subset(victim_idx)
    assert len(data) == len(victim) == len(cell.bundle.train) - len(cell.reserve)  # nothing appended
    unchanged = ~mask & ~cell.poisoned.cover_mask
    assert torch.equal(data.x[unchanged], victim.x[unchanged])  # positions kept
    # the index says nothing about poison: AUROC of "index" as a poison score is near chance
    idx_score = torch.arange(len(mask)).float()
    assert abs(auroc(idx_score, mask) - 0.5) < 0.1
    # no value off the 8-bit grid: the float view times 255 is integral everywhere
    xf = data.x.float() / 255
    assert torch.equal((xf * 255).round(), xf * 255)


def test_ratio_zero_cell_runs_end_to_end():
    record, _ = execute(RunSpec(defense="none", **dict(SPEC, poison_ratio=0.0)))
    assert record["n_poison"] == 0
    assert 0 <= record["asr"] <= 1  # the trigger's chance-level ASR on a clean model
    assert record["epochs_equiv"] == pytest.approx(1.0)


def test_forbidden_names_cannot_be_placed_in_a_context():
    cell = build_cell(RunSpec(defense="none", **SPEC))
    ctx = build_context(DEFENSES.create("none"), cell, cell.new_model())
    with pytest.raises(ProtocolError):
        ctx.target = 1


def test_shared_backdoored_fixture_is_backdoored(backdoored_cell):
    cell, model, nodef = backdoored_cell
    assert nodef["acc"] > 0.8
    assert nodef["asr"] > 0.8
