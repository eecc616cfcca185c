"""The leaderboard and the audit on synthetic tidy tables: a broken model cannot win, success needs
both thresholds, impossible-looking runs are flagged and shown instead of ranked."""
import argparse
import json

import numpy as np
import pandas as pd
import pytest

from bench.card import NO_DEFENSE
from bench.metrics import der
from bench.reports import audit
from bench.reports.leaderboard import (add_threshold_arguments, flagged_markdown, flagged_runs, leaderboard,
                                       leaderboard_markdown, main, ranking_comparison, threshold_options)
from bench.reports.tidy import normalise

ACC_NODEF, ASR_NODEF = 0.90, 1.00


def run_row(run_id, defense, acc, asr, ra=None, attack="badnet", seed=0, ratio=0.05, acc_nodef=ACC_NODEF,
            asr_nodef=ASR_NODEF, **fields):
    """One tidy row; RA defaults to ``acc * (1 - asr)`` (the model's accuracy on what the trigger
    leaves alone), other columns (tpr, fpr, wall_s, epochs_equiv, arch_ok, ...) via ``fields``."""
    row = {"run_id": run_id, "suite": "t", "dataset": "cifar10", "model": "resnet18", "attack": attack,
           "poison_ratio": ratio, "target": 1, "defense": defense, "seed": seed, "acc": acc, "asr": asr,
           "ra": acc * (1 - asr) if ra is None else ra, "acc_nodef": acc_nodef, "asr_nodef": asr_nodef,
           "der": der(acc, asr, acc_nodef, asr_nodef), "tpr": np.nan, "fpr": np.nan, "wall_s": 30.0,
           "epochs_equiv": 2.0, "status": "ok", "defense_params": json.dumps({}), "attack_params": "{}"}
    row.update(fields)
    return row


def table(*rows) -> pd.DataFrame:
    return normalise(pd.DataFrame(list(rows)))


def save(df: pd.DataFrame, folder) -> None:
    """Write a normalised table as a results folder's runs.parquet (parameters as JSON text again)."""
    folder.mkdir(parents=True, exist_ok=True)
    df.assign(defense_params=df["defense_params"].map(json.dumps)).to_parquet(folder / "runs.parquet")


def nodef(run_id="n", attack="badnet", seed=0):
    return run_row(run_id, NO_DEFENSE, ACC_NODEF, ASR_NODEF, attack=attack, seed=seed)


@pytest.fixture
def broken_vs_weak():
    """A defense that breaks the model (ACC 10 %, ASR 0) and a weak one that keeps it (ASR 85 %):
    DER prefers the broken one, 0.60 against 0.565."""
    return table(nodef("n1", "badnet"), nodef("n2", "blend", 0),
                 run_row("b1", "breaker", 0.10, 0.0, ra=0.08), run_row("b2", "breaker", 0.12, 0.0, ra=0.09, attack="blend"),
                 run_row("w1", "weak", 0.88, 0.85), run_row("w2", "weak", 0.87, 0.80, attack="blend"))


def test_a_broken_model_does_not_rank_above_a_working_one(broken_vs_weak):
    board = leaderboard(broken_vs_weak)
    assert list(board["name"]) == ["weak", "breaker"]
    assert board.set_index("name")["broken"].to_dict() == {"weak": False, "breaker": True}
    md = leaderboard_markdown(board)
    breaker_line = next(line for line in md.splitlines() if "breaker" in line)
    assert audit.BROKEN_MARK in breaker_line and audit.BROKEN_MARK not in md.replace(breaker_line, "")
    cmp = ranking_comparison(broken_vs_weak).set_index("name")
    assert cmp.loc["breaker", "rank by mean DER"] == 1 and cmp.loc["breaker", "rank by mean RA"] == 2
    assert cmp.loc["weak", "mean DER"] < cmp.loc["breaker", "mean DER"]    # the flaw the new score removes


def test_the_clean_acc_cost_alone_marks_a_defense_broken():
    df = table(nodef(), run_row("d", "costly", 0.86, 0.05),
               run_row("c", "costly", 0.50, np.nan, ratio=0.0, ra=np.nan, asr_nodef=np.nan))
    row = leaderboard(df).iloc[0]
    assert row["mean ACC drop"] == pytest.approx(0.04) and row["clean ACC cost"] == pytest.approx(0.40)
    assert row["broken"]


@pytest.fixture
def three_cells():
    """One defense on three cells: a success, a low ASR bought with 30 points of ACC, a high ASR."""
    return table(run_row("s", "d", 0.88, 0.05, attack="badnet"), run_row("a", "d", 0.60, 0.05, attack="blend"),
                 run_row("h", "d", 0.90, 0.50, attack="sig"))


def test_success_needs_both_a_low_asr_and_a_bounded_acc_drop(three_cells):
    assert leaderboard(three_cells).iloc[0]["success rate"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("options, rate", [({"max_acc_drop": 0.35}, 2 / 3), ({"asr_threshold": 0.6}, 2 / 3),
                                           ({"asr_threshold": 0.6, "max_acc_drop": 0.35}, 1.0),
                                           ({"asr_threshold": 0.01}, 0.0)])
def test_thresholds_are_settable_and_printed(three_cells, options, rate):
    board = leaderboard(three_cells, **options)
    assert board.iloc[0]["success rate"] == pytest.approx(rate)
    head = leaderboard_markdown(board).splitlines()[0]
    t, d = options.get("asr_threshold", 0.20), options.get("max_acc_drop", audit.MAX_ACC_DROP)
    assert f"success (ASR ≤ {t * 100:g}, ACC drop ≤ {d * 100:g})" in head


def test_thresholds_from_the_command_line_and_bad_values_refused(three_cells):
    p = argparse.ArgumentParser()
    add_threshold_arguments(p)
    options = threshold_options(p.parse_args(["--max-acc-drop", "0.35", "--asr-threshold", "0.6"]))
    assert leaderboard(three_cells, **options).iloc[0]["success rate"] == pytest.approx(1.0)
    with pytest.raises(SystemExit):
        p.parse_args(["--max-acc-drop", "10"])               # points instead of a fraction
    with pytest.raises(ValueError, match="asr_threshold"):
        leaderboard(three_cells, asr_threshold=20)


IMPOSSIBLE = {
    "acc above": dict(acc=0.99, asr=0.0),
    "perfect detection": dict(acc=0.88, asr=0.0, tpr=1.0, fpr=0.0, epochs_equiv=0.0, wall_s=0.02),
    "architecture": dict(acc=0.88, asr=0.0, arch_ok=False),
}
EXPECTED_WORDS = {"acc above": "above the cell's no-defense ACC", "perfect detection": "perfect detection",
                  "architecture": "architecture"}


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
def test_audit_flags_each_impossible_run_and_not_a_normal_one(case):
    df = table(nodef(), run_row("bad", "cheat", **IMPOSSIBLE[case]),
               run_row("ok", "honest", 0.88, 0.02, tpr=1.0, fpr=0.0, epochs_equiv=3.0, wall_s=40.0, arch_ok=True),
               run_row("gain", "honest", 0.93, 0.02, attack="blend", arch_ok=None))   # +3 points: plausible
    reasons = audit.flag_reasons(df).set_axis(df["run_id"])
    assert EXPECTED_WORDS[case] in reasons["bad"]
    assert reasons.drop("bad").eq("").all()
    assert list(flagged_runs(df)["run_id"]) == ["bad"]


def test_unknown_cost_or_architecture_is_not_flagged():
    df = table(run_row("a", "d", 0.88, 0.0, tpr=1.0, fpr=0.0, epochs_equiv=np.nan, wall_s=np.nan),
               run_row("b", "d", 0.88, 0.0, attack="blend", arch_ok=np.nan))
    assert not audit.flagged(df).any()


@pytest.mark.parametrize("stored, flagged", [("false", True), ("true", False), (0, True), (None, False)])
def test_arch_ok_as_read_back_from_a_table(stored, flagged):
    df = pd.DataFrame([run_row("a", "d", 0.88, 0.0, arch_ok=stored), run_row("b", "d", 0.88, 0.0, arch_ok=True)])
    assert list(audit.flagged(normalise(df))) == [flagged, False]


def test_audit_margin_is_settable():
    df = table(run_row("a", "d", 0.99, 0.0))
    assert audit.flagged(df).all() and not audit.flagged(df, acc_margin=0.10).any()


def test_flagged_runs_are_shown_and_left_out_of_the_ranking():
    df = table(nodef(), run_row("c1", "cheat", 0.99, 0.0), run_row("c2", "cheat", 0.80, 0.9, attack="blend"),
               run_row("h1", "honest", 0.88, 0.10), run_row("x1", "only_cheats", 1.0, 0.0))
    board = leaderboard(df).set_index("name")
    assert "only_cheats" not in board.index                       # every run flagged: no rank at all
    assert board.loc["cheat", "cells"] == 1 and board.loc["cheat", "flagged runs"] == 1
    assert board.loc["cheat", "mean ASR"] == pytest.approx(0.9)   # only the unflagged run counts
    assert board.loc["honest", "rank"] == 1
    shown = flagged_runs(df)
    assert sorted(shown["run_id"]) == ["c1", "x1"] and shown["reason"].str.len().gt(0).all()
    md = flagged_markdown(shown)
    assert md.count("\n|") == 1 + 1 + 2 and "above the cell's no-defense ACC" in md
    assert "no run" in flagged_markdown(flagged_runs(table(nodef(), run_row("h", "honest", 0.88, 0.1))))
    assert "1 flagged run(s) not ranked" in leaderboard_markdown(leaderboard(df))


def test_compare_rankings_command(tmp_path, broken_vs_weak, capsys):
    save(broken_vs_weak, tmp_path)
    assert main([str(tmp_path), "--compare-rankings"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[3].strip().split(" ")[0]: line.split("|")[1:3] for line in out.splitlines()[2:]}
    assert [c.strip() for c in rows["weak"]] == ["1", "2"] and [c.strip() for c in rows["breaker"]] == ["2", "1"]
    assert main([str(tmp_path)]) == 0 and "Flagged runs" in capsys.readouterr().out
    assert main([str(tmp_path / "nothing")]) == 2


def test_a_partly_run_suite_says_so_and_ranks_on_the_cells_all_defenses_share(tmp_path, capsys):
    df = table(run_row("a", "fine_tuning", 0.85, 0.90, attack="badnet"), run_row("b", "fine_tuning", 0.85, 0.90, attack="blend"),
               run_row("c", "clp", 0.85, 0.10, attack="badnet"),
               run_row("d", "fine_tuning", 0.85, 0.00, attack="sig"))     # only Fine-Tuning has Blend and SIG
    board = leaderboard(df).set_index("defense")
    assert board.loc["FineTuning", "cells"] == 3 and board.loc["CLP", "cells"] == 1
    assert "cover different cells (1-3)" in leaderboard_markdown(leaderboard(df))
    shared = leaderboard(df, shared_cells=True).set_index("defense")
    assert list(shared["cells"]) == [1, 1] and shared.loc["FineTuning", "mean ASR"] == pytest.approx(0.90)
    assert "Ranked on the 1 attacked cell(s) every defense has run" in leaderboard_markdown(leaderboard(df, shared_cells=True))
    cmp = ranking_comparison(df, shared_cells=True).set_index("defense")
    assert cmp.loc["CLP", "rank by mean DER"] == 1 and cmp.loc["CLP", "rank by mean RA"] == 1
    save(df, tmp_path / "r")
    assert main([str(tmp_path / "r"), "--shared-cells"]) == 0
    assert "every defense has run" in capsys.readouterr().out
