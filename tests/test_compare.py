"""``compare`` with the audit: a candidate run that looks impossible fails the check, shown with
its reason, whether or not the baseline has the run."""
import subprocess
import sys

import pandas as pd
import pytest

from bench.compare import assert_no_regression, compare
from test_leaderboard import nodef, run_row, save, table


@pytest.fixture
def baseline():
    return table(nodef(), run_row("ft", "defense_a", 0.88, 0.40), run_row("cl", "defense_b", 0.86, 0.10, attack="blend"))


def with_run(df, row):
    return pd.concat([df, table(row)], ignore_index=True)


def test_same_results_pass(baseline):
    result = compare(baseline, baseline)
    assert result.ok and result.flagged.empty and "OK: no regression" in result.summary()


def test_a_flagged_candidate_run_is_a_regression_and_shows_its_reason(baseline):
    cand = baseline.copy()
    cand.loc[cand.run_id == "ft", "acc"] = 0.99                      # 9 points above its own no-defense ACC
    result = compare(baseline, cand, max_acc_drop=100, max_asr_increase=100)
    assert result.regressions.empty and not result.ok
    assert list(result.flagged["run_id"]) == ["ft"]
    summary = result.summary()
    assert "FLAGGED BY THE AUDIT" in summary and "above the cell's no-defense ACC" in summary and "FAILED" in summary
    assert compare(baseline, cand, audit_acc_margin=10).ok          # the margin is settable (points)


def test_runs_only_the_candidate_has_are_audited_too(baseline):
    cand = with_run(baseline, run_row("new", "my_defense", 0.88, 0.0, tpr=1.0, fpr=0.0, epochs_equiv=0.0,
                                      wall_s=0.01))
    result = compare(baseline, cand)
    assert list(result.flagged["run_id"]) == ["new"] and "perfect detection" in result.summary()
    with pytest.raises(AssertionError, match="FLAGGED"):
        assert_no_regression(baseline, cand)
    wrong_model = with_run(baseline, run_row("new", "my_defense", 0.88, 0.0, arch_ok=False))
    assert "architecture" in compare(baseline, wrong_model).summary()


def test_negative_tolerances_are_refused(baseline):
    with pytest.raises(ValueError, match="max_acc_drop"):
        compare(baseline, baseline, max_acc_drop=-1)


def test_command_exit_codes(tmp_path, baseline):
    cand = baseline.copy()
    cand.loc[cand.run_id == "cl", "arch_ok"] = False
    save(baseline, tmp_path / "base")
    save(cand, tmp_path / "cand")
    cli = [sys.executable, "run_bench.py", "compare", str(tmp_path / "base")]
    res = subprocess.run(cli + [str(tmp_path / "cand")], capture_output=True, text=True)
    assert res.returncode == 1 and "arch_ok false" in res.stdout, res.stdout + res.stderr
    res = subprocess.run(cli + [str(tmp_path / "base"), "--audit-acc-margin", "-3"], capture_output=True, text=True)
    assert res.returncode == 2 and "audit_acc_margin" in res.stdout
