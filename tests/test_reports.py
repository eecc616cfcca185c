"""Reports from a synthetic tidy table: pivots, averages, missing cells, figures, compare."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from bench.compare import assert_no_regression, compare
from bench.report import build_report
from bench.reports.leaderboard import leaderboard
from bench.reports.tables import attack_defense_table, clean_vs_poisoned_table, paper_tables, variants_table
from bench.reports.tidy import normalise


def _row(run_id, attack, defense, acc, asr, seed=0, ratio=0.05, dataset="cifar10", model="resnet18", params=None,
         acc_nodef=0.90, asr_nodef=0.95):
    from bench.metrics import der

    return {"run_id": run_id, "suite": "t", "dataset": dataset, "model": model, "attack": attack,
            "poison_ratio": ratio, "target": 1, "defense": defense, "seed": seed, "acc": acc, "asr": asr,
            "ra": 0.5, "acc_nodef": acc_nodef, "asr_nodef": asr_nodef, "der": der(acc, asr, acc_nodef, asr_nodef),
            "tpr": np.nan, "fpr": np.nan, "auroc": np.nan, "wall_s": 10.0, "epochs_equiv": 1.5, "status": "ok",
            "error": None, "defense_params": json.dumps(params or {}), "attack_params": "{}"}


@pytest.fixture
def tidy():
    rows = [
        _row("a", "badnet", "none", 0.90, 0.95), _row("b", "badnet", "fine_tuning", 0.88, 0.50),
        _row("c", "badnet", "fine_tuning", 0.86, 0.40, seed=1), _row("d", "blend", "none", 0.80, 1.00),
        _row("e", "blend", "fine_tuning", 0.78, 0.90),
        _row("f", "badnet", "meca", 0.85, 0.00, params={"relabel_relearn": False}),
        _row("g", "badnet", "meca", 0.87, 0.00, params={"relabel_relearn": True}),
        _row("h", "badnet", "none", 0.91, 0.10, ratio=0.0), _row("i", "badnet", "meca", 0.89, 0.05, ratio=0.0, params={"relabel_relearn": False},
             acc_nodef=0.91, asr_nodef=0.10),
        _row("x", "badnet", "clp", 0.5, 0.5),
    ]
    df = pd.DataFrame(rows)
    df.loc[df.run_id == "x", "status"] = "failed"  # failed runs never enter a table
    return df


def test_table2_pivot_averages_and_missing(tidy):
    t = attack_defense_table(normalise(tidy), "Table II", "t", ["badnet", "blend", "sig"],
                             ["none", "fine_tuning", "clp", "meca"])
    row = ("CIFAR10", "BadNet")
    assert t.mean(row, "FineTuning", "acc") == pytest.approx(0.87)         # mean over two seeds
    assert t.cells[(row, "FineTuning", "asr")][2] == 2
    assert t.mean(("CIFAR10", "Average"), "FineTuning", "asr") == pytest.approx((0.45 + 0.90) / 2)
    assert ("CIFAR10", "SIG") not in t.rows                                # never run: no row
    assert (("CIFAR10", "Blend"), "MeCa", "acc") not in t.cells             # missing, not zero
    md = t.markdown()
    assert "87.00 ± 1.41" in md and "—" in md
    assert t.mean(row, "MeCa", "acc") == pytest.approx(0.85)               # relabel variant excluded
    assert (row, "CLP", "acc") not in t.cells                              # failed run left out
    assert r"\begin{tabular}" in t.latex()


def test_table7_clean_rows_and_all_tables(tidy):
    t = clean_vs_poisoned_table(normalise(tidy))
    assert t.mean(("Clean data", "BadNet"), "MeCa", "acc") == pytest.approx(0.89)
    assert t.mean(("Poisoned data", "BadNet"), "No Defense", "asr") == pytest.approx(0.95)
    tables = paper_tables(normalise(tidy))
    assert {"table2", "table4", "table7"} <= set(tables)
    t4 = tables["table4"]
    assert t4.mean(("CIFAR10", "BadNet"), "with RR", "acc") == pytest.approx(0.87)


def test_variants_table_shows_each_parameter_set_of_a_defense(tidy):
    t = variants_table(normalise(tidy))
    assert t.columns == ["No Defense", "MeCa", "MeCa (relabel_relearn=True)"]   # one-set defenses left out
    row = ("CIFAR10", "BadNet")
    assert t.mean(row, "MeCa", "acc") == pytest.approx(0.85)
    assert t.mean(row, "MeCa (relabel_relearn=True)", "acc") == pytest.approx(0.87)
    assert t.mean(row, "No Defense", "asr") == pytest.approx(0.95)
    assert ("CIFAR10", "Blend") not in t.rows                               # no variant was run there
    assert "variants" in paper_tables(normalise(tidy))
    single = normalise(tidy[tidy.defense != "meca"])
    assert "variants" not in paper_tables(single)                           # nothing to show: no file


def test_runs_at_another_budget_scale_are_a_variant_never_more_seeds(tidy):
    other = pd.DataFrame([_row("y", "badnet", "fine_tuning", 0.50, 0.05), _row("z", "badnet", "none", 0.90, 0.95)])
    other["budget_scale"] = 0.5
    df = normalise(pd.concat([tidy, other], ignore_index=True))
    t2 = attack_defense_table(df, "Table II", "t", ["badnet"], ["none", "fine_tuning"])
    row = ("CIFAR10", "BadNet")
    assert t2.mean(row, "FineTuning", "acc") == pytest.approx(0.87)        # the two main-budget seeds only
    assert t2.cells[(row, "No Defense", "acc")][2] == 1                    # the re-evaluated model is not a seed
    v = variants_table(df)
    assert "FineTuning (budget x0.5)" in v.columns and "FineTuning" in v.columns
    assert v.mean(row, "FineTuning (budget x0.5)", "asr") == pytest.approx(0.05)
    assert v.cells[(row, "No Defense", "acc")][2] == 1


def test_leaderboard_ranks_by_der(tidy):
    board = leaderboard(normalise(tidy))
    assert list(board["name"])[0] == "meca"
    ft = board[board["name"] == "fine_tuning"].iloc[0]
    assert ft["cells"] == 2 and ft["seeds"] == 2
    assert ft["success rate"] == 0.0
    assert board[board["name"] == "meca"].iloc[0]["clean ACC cost"] == pytest.approx(0.02)


def _write_results(folder, df, with_diagnostics=True):
    folder.mkdir(parents=True)
    df.to_parquet(folder / "runs.parquet")
    if with_diagnostics:
        (folder / "diagnostics").mkdir()
        g = torch.Generator().manual_seed(0)
        mask = torch.rand(200, generator=g) < 0.1
        for run_id in df[df.defense == "meca"].run_id:
            torch.save({"sample_logs": {"kl_round1": torch.rand(200, generator=g) + (~mask).float()},
                        "poison_mask": mask, "scores": mask.float() + torch.rand(200, generator=g),
                        "checkpoints": [{"tag": f"enhance_round{k}", "acc": 0.9 - 0.1 * k, "asr": 0.5 + 0.1 * k}
                                        for k in range(1, 4)]}, folder / "diagnostics" / f"{run_id}.pt")


def test_report_writes_every_file(tmp_path, tidy):
    df = tidy.copy()
    df.loc[df.defense == "meca", "auroc"] = 0.9
    _write_results(tmp_path / "res", df)
    written = build_report(tmp_path / "res")
    out = tmp_path / "res" / "report"
    for name in ["table2.md", "table2.tex", "table2.csv", "leaderboard.md", "index.html",
                 "fig4_kl_hist.png", "fig4_kl_hist.pdf", "fig6_enhancement.png", "heatmap_asr.png",
                 "heatmap_acc_drop.png", "scatter_acc_asr.png", "asr_vs_ratio.png", "roc.png"]:
        assert (out / name).exists() and (out / name).stat().st_size > 0, name
    page = (out / "index.html").read_text()
    assert "Measured vs the MeCa paper" in page and "<td>BadNet</td>" in page   # the paper comparison's rows
    assert "Where the defaults come from" in page and "<td>MeCa</td><td>patch_size</td>" in page   # MeCa declares its settings
    assert page.count("data:image/png;base64,") == sum(
        1 for paths in written["figures"].values() for p in paths if p.suffix == ".png")


def test_compare_exit_codes(tmp_path, tidy):
    _write_results(tmp_path / "base", tidy, with_diagnostics=False)
    _write_results(tmp_path / "same", tidy, with_diagnostics=False)
    worse = tidy.copy()
    worse.loc[worse.run_id == "b", "asr"] += 0.10  # +10 points ASR in one cell
    _write_results(tmp_path / "worse", worse, with_diagnostics=False)
    cli = [sys.executable, "run_bench.py", "compare"]
    assert subprocess.run(cli + [str(tmp_path / "base"), str(tmp_path / "same")]).returncode == 0
    res = subprocess.run(cli + [str(tmp_path / "base"), str(tmp_path / "worse"), "--max-asr-increase", "2"],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "REGRESSIONS" in res.stdout
    assert compare(tidy, worse, max_asr_increase=20).ok  # within a loose tolerance
    fewer = tidy[tidy.run_id != "e"]
    assert not compare(tidy, fewer).ok  # a missing cell fails
    with pytest.raises(AssertionError, match="missing in candidate"):
        assert_no_regression(tidy, fewer)


def test_html_page_renders_in_a_headless_browser(tmp_path, tidy):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        pytest.skip("no headless chromium installed")
    df = tidy.copy()
    df.loc[df.defense == "meca", "auroc"] = 0.9
    _write_results(tmp_path / "res", df)
    build_report(tmp_path / "res")
    page = tmp_path / "res" / "report" / "index.html"
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert "Leaderboard" in dom.stdout
    n_imgs = (tmp_path / "res" / "report" / "index.html").read_text().count("<img")
    assert n_imgs >= 5 and dom.stdout.count("<img") == n_imgs
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}", "--window-size=1200,3000",
                    page.as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10000


def test_oracle_runs_are_shown_separately(tidy):
    df = tidy.copy()
    extra = _row("o", "badnet", "mcldef", 0.85, 0.01, params={"oracle_target": 1})
    plain = _row("p", "badnet", "mcldef", 0.85, 0.30, params={"oracle_target": None})
    df = pd.concat([df, pd.DataFrame([extra, plain])])
    board = leaderboard(normalise(df))
    assert {"MCLDef", "MCLDef (oracle)"} <= set(board["defense"])


# -- what the reports know comes from the plug-ins' cards -----------------------------------------
@pytest.fixture
def probe_defense():
    """A defense registered for one test, with a card that puts it in Table II beside MeCa."""
    from dataclasses import dataclass

    from bench.card import DefenseCard
    from bench.defense import Defense, DefenseOutput
    from bench.registry import DEFENSES

    @dataclass
    class ProbeParams:
        strength: float = 1.0
        sweep: bool = False

    class Probe(Defense):
        """A defense only this test knows."""

        card = DefenseCard(name="_report_probe", label="Probe (ours)", stage="repair", tables=("table2",),
                           order=9, variant_params={"sweep": True}, variant_name="sweep")
        Params = ProbeParams

        def run(self, ctx):
            return DefenseOutput(ctx.model)

    DEFENSES.register(Probe)
    yield "_report_probe"
    DEFENSES.remove("_report_probe")


def test_a_new_defense_appears_from_its_card_with_no_report_edit(tidy, probe_defense):
    df = tidy.copy()
    df = pd.concat([df, pd.DataFrame([_row("p1", "badnet", probe_defense, 0.83, 0.07),
                                      _row("p2", "badnet", probe_defense, 0.60, 0.01, params={"sweep": True})])])
    tables = paper_tables(normalise(df))
    row = ("CIFAR10", "BadNet")
    t2 = tables["table2"]
    assert "Probe (ours)" in t2.columns                                    # label and membership: the card
    assert t2.columns.index("Probe (ours)") == t2.columns.index("MeCa") + 1  # its order: after MeCa (8)
    assert t2.mean(row, "Probe (ours)", "acc") == pytest.approx(0.83)      # the variant left out
    assert t2.mean(row, "Probe (ours)", "asr") == pytest.approx(0.07)
    assert "Probe (ours) (sweep=True)" in tables["variants"].columns
    board = leaderboard(normalise(df))
    assert board.loc[board["name"] == probe_defense, "defense"].item() == "Probe (ours)"


def test_a_defense_run_but_not_in_the_paper_tables_shows_in_the_extended_ones(tidy):
    df = pd.concat([tidy, pd.DataFrame([_row("q", "badnet", "nt_ml", 0.80, 0.20),
                                        _row("r", "badnet", "elsewhere.pkg:Thing", 0.70, 0.30)])])
    tables = paper_tables(normalise(df))
    assert "NT-ML" not in tables["table2"].columns
    ext = tables["table2_extended"]
    assert ext.mean(("CIFAR10", "BadNet"), "NT-ML", "acc") == pytest.approx(0.80)
    assert ext.mean(("CIFAR10", "BadNet"), "elsewhere.pkg:Thing", "acc") == pytest.approx(0.70)
    assert "elsewhere" not in sys.modules                                # a name read from results is never imported


class _Payload:
    """Unpickling this runs code (it touches a marker file): what a crafted diagnostics file holds."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_report_refuses_a_crafted_diagnostics_file_and_runs_nothing(tmp_path, tidy, capsys):
    from argparse import Namespace

    from bench.report import main as report_main

    df = tidy.copy()
    _write_results(tmp_path / "res", df)
    marker = tmp_path / "executed"
    meca_run = df[(df.defense == "meca") & (df.poison_ratio > 0)].run_id.iloc[0]
    torch.save({"sample_logs": {"kl_round1": _Payload(marker)}}, tmp_path / "res" / "diagnostics" / f"{meca_run}.pt")
    code = report_main(Namespace(results=str(tmp_path / "res"), out=None, asr_threshold=0.2, max_acc_drop=0.1,
                                  acc_margin=0.05))
    assert code == 2 and not marker.exists()
    assert "refused to load diagnostics file" in capsys.readouterr().out


def test_paper_comparison_puts_each_cifar10_cell_beside_the_papers_value(tidy):
    from bench.reports.paper import paper_comparison, paper_values

    paper = paper_values()
    assert len(paper) == 8 * 9                                   # Tables II + III CIFAR-10 rows x 9 columns
    badnet_ft = paper[(paper.attack == "BadNet") & (paper.defense == "FineTuning")].iloc[0]
    assert (badnet_ft["paper ACC"], badnet_ft["paper ASR"]) == (83.30, 96.81)
    cmp = paper_comparison(normalise(tidy))
    row = cmp[(cmp.attack == "BadNet") & (cmp.defense == "FineTuning")].iloc[0]
    assert row["ACC %"] == pytest.approx(87.0) and row["seeds"] == 2
    assert row["ACC gap"] == pytest.approx(87.0 - 83.30) and row["ASR gap"] == pytest.approx(45.0 - 96.81)
    assert row["gap > 10"] == "ASR"
    # its own victim (ASR 95 %) lost 50 points, the paper's victim (95.2 %) gained 1.6 under fine-tuning
    assert row["victim ASR gap"] == pytest.approx(95.0 - 95.20)
    assert row["reading"] == "ASR: the defense changed its victim by -50.0 points, the paper's by +1.6 (victim gap -0.2)"
    nodef = cmp[(cmp.attack == "Blend") & (cmp.defense == "No Defense")].iloc[0]
    assert nodef["ACC gap"] == pytest.approx(80.0 - 84.50) and nodef["gap > 10"] == "" and nodef["reading"] == ""
    # a gap the victim explains: the victim 30 points below the paper's, the defense as close to it
    far = normalise(tidy.assign(acc=tidy["acc"] - 0.30))
    row = paper_comparison(far).query("attack == 'BadNet' and defense == 'FineTuning'").iloc[0]
    assert row["reading"].startswith("ACC: the victim's gap (-32.0); the defense changed it as in the paper (-3.0 vs -8.7)")
    assert not ((cmp.attack == "BadNet") & (cmp.defense == "CLP")).any()   # failed run: not measured
    assert paper_comparison(normalise(tidy.assign(dataset="digits"))).empty
    # the budget scale is a setting, printed as given (0.25, not 0.2 at one decimal)
    from bench.reports.paper import comparison_markdown

    md = comparison_markdown(paper_comparison(normalise(tidy.assign(budget_scale=0.25))))
    assert "| 0.25 |" in md and "defense budget x0.25" in md


def test_a_gap_reading_names_the_detection_and_the_steps_each_phase_took(tidy):
    """The reading of a gap gives what the record measured about the defense: how well it found the
    poisoned images, the optimiser steps of each phase (repeated rounds folded), and, for a defense
    that trained nothing, that the budget cannot be the cause."""
    from bench.reports.paper import paper_comparison

    df = tidy.assign(budget_scale=0.25, tpr=float("nan"), fpr=float("nan"), phases=None)
    ft = (df.defense == "fine_tuning") & (df.attack == "badnet")
    df.loc[ft, "tpr"], df.loc[ft, "fpr"] = 0.5, 0.012
    df["phases"] = [json.dumps([{"phase": "unlearn 0", "steps": 19, "epochs": 1.0},
                                {"phase": "unlearn 1", "steps": 19, "epochs": 1.0},
                                {"phase": "relearn", "steps": 75, "epochs": 2.5012}]) if f else None for f in ft]
    row = paper_comparison(normalise(df)).query("attack == 'BadNet' and defense == 'FineTuning'").iloc[0]
    assert row["reading"].endswith("its detection: TPR 50 %, FPR 1.2 %; "
                                   "defense budget x0.25 (unlearn 2x19 steps = 1 ep, relearn 75 steps = 2.5 ep)")
    df["phases"] = [json.dumps([]) if f else None for f in ft]     # it trained nothing
    row = paper_comparison(normalise(df)).query("attack == 'BadNet' and defense == 'FineTuning'").iloc[0]
    assert row["reading"].endswith("no training phase ran (the budget does not apply)")
    assert "x0.25" not in row["reading"]


def test_a_broken_model_is_marked_in_the_tables_and_kept_off_the_pareto_front(tidy, tmp_path):
    """A cell whose defended ACC is more than 10 points below no defense's is marked † in the paper
    tables, the heatmaps and the scatter, whose Pareto front leaves it out however low its ASR."""
    from bench.reports.figures import heatmaps, scatter_acc_asr

    df = normalise(pd.concat([tidy, pd.DataFrame([_row("z", "blend", "fine_pruning", 0.30, 0.00)])],
                             ignore_index=True))
    t = attack_defense_table(df, "Table II", "t", ["badnet", "blend"], ["none", "fine_tuning", "fine_pruning"])
    # the fixture's Blend rows compare with a no-defense ACC of 0.90: FineTuning's 0.78 is 12 points below
    assert t.broken == {(("CIFAR10", "Blend"), "FinePruning"), (("CIFAR10", "Blend"), "FineTuning")}
    md = t.markdown()
    assert "30.00†" in md and "78.00†" in md and "† = broken model" in md and "87.00 ± 1.41†" not in md
    assert heatmaps(df, tmp_path) and scatter_acc_asr(df, tmp_path)
    clean = attack_defense_table(normalise(tidy), "Table II", "t", ["badnet"], ["none", "fine_tuning"])
    assert not clean.broken and "†" not in clean.markdown()


def test_a_defense_that_breaks_a_clean_model_is_marked_in_the_figures(tidy, tmp_path, monkeypatch):
    """FinePruning keeps the BadNet cell's model but costs the clean cell 21 points: the heatmaps
    name it with ‡ (no attacked cell would show it), and the scatter keeps it off the Pareto front."""
    from bench.reports import figures

    df = normalise(pd.concat([tidy, pd.DataFrame([
        _row("fp", "badnet", "fine_pruning", 0.89, 0.02),
        _row("fp0", "badnet", "fine_pruning", 0.70, 0.05, ratio=0.0, acc_nodef=0.91, asr_nodef=0.10)])],
        ignore_index=True))
    assert figures.broken_on_clean(df) == {"fine_pruning"}
    assert figures.defense_name("fine_pruning", {"fine_pruning"}) == "FinePruning ‡"
    drawn = []
    heatmap = figures.sns.heatmap
    monkeypatch.setattr(figures.sns, "heatmap", lambda data, **k: (drawn.append(list(data.columns)), heatmap(data, **k))[1])
    assert figures.heatmaps(df, tmp_path)
    assert all("FinePruning ‡" in cols and "MeCa" in cols for cols in drawn) and len(drawn) == 2
    fronts = []
    plot = figures.plt.Axes.plot
    monkeypatch.setattr(figures.plt.Axes, "plot", lambda ax, x, y, *a, **k: (fronts.append(list(x)), plot(ax, x, y, *a, **k))[1])
    assert figures.scatter_acc_asr(df, tmp_path)
    # FinePruning (ASR 2 %, ACC 89 %) would dominate the front; marked, it is left off
    assert fronts and 2.0 not in [round(v, 6) for v in fronts[0]]
    assert not figures.broken_on_clean(normalise(tidy))


def test_settings_say_where_each_default_comes_from(tmp_path, tidy):
    """NT-ML declares its settings: each row has the default the plug-in gives today, the source,
    and the value of the preset that changes it (spec-v1: ML on the teacher's clean set); the
    report writes the table for the defenses run, and leaves out those that declare nothing."""
    from bench.reports.settings import settings_frame

    frame = settings_frame(["nt_ml", "fine_tuning"])
    assert set(frame["Defense"]) == {"NT-ML"} and set(frame["Source"]) <= {"paper", "reconstructed", "development"}
    row = frame[frame["Parameter"] == "ml_clean, ml_clean_fraction"].iloc[0]
    assert (row["Default"], row["Source"]) == ("reserve, 1.0", "development")
    assert row["Presets"] == "spec-v1: ml_clean=same, ml_clean_fraction=1.0"
    df = tidy.copy()
    df.loc[df.defense == "meca", "defense"] = "nt_ml"
    _write_results(tmp_path / "res", df, with_diagnostics=False)
    build_report(tmp_path / "res")
    text = (tmp_path / "res" / "report" / "settings.md").read_text()
    assert "| NT-ML | ml_clean, ml_clean_fraction | reserve, 1.0 | development |" in text
    assert "Where the defaults come from" in (tmp_path / "res" / "report" / "index.html").read_text()


def test_cells_table_pools_seeds_and_names_a_preset_variant_beside_the_paper(tidy):
    from bench.reports.cells import cells_markdown, cells_table

    spec_v1 = pd.DataFrame([_row("p", "badnet", "meca", 0.60, 0.90, params={"relabel_relearn": False}),
                            _row("q", "badnet", "meca", 0.70, 0.80, seed=1, params={"relabel_relearn": False})])
    spec_v1["spec"] = json.dumps({"defense_params": {"preset": "spec-v1"}})
    df = pd.concat([tidy, spec_v1], ignore_index=True)
    df.loc[df.run_id.isin(["p", "q"]), "tpr"] = [0.5, 0.7]
    cells = cells_table(normalise(df))
    badnet = cells[cells["attack"] == "BadNet"].set_index("defense")
    assert list(badnet.index[:1]) == ["No Defense"]                    # the victim first
    v1 = badnet.loc["MeCa [spec-v1]"]
    assert v1["seeds"] == 2 and v1["ACC %"] == pytest.approx(65.0) and v1["TPR %"] == pytest.approx(60.0)
    assert v1["ACC sd"] == pytest.approx(100 * np.std([0.6, 0.7], ddof=1))
    assert bool(v1["broken model"]) and not bool(badnet.loc["MeCa", "broken model"])   # 65 vs 90 without defense
    assert v1["paper ACC"] == pytest.approx(85.72) and badnet.loc["MeCa", "paper ASR"] == pytest.approx(0.0)
    assert badnet.loc["FineTuning", "seeds"] == 2 and np.isnan(cells.loc[cells["attack"] == "Blend", "TPR %"]).all()
    text = cells_markdown(cells)
    assert "| MeCa [spec-v1] | 2 | 65.0 ± 7.1 † |" in text and "| 85.7 / 0.0 |" in text


def test_the_leaderboard_marks_runs_of_older_plugin_code(tidy):
    from bench.reports.leaderboard import leaderboard_markdown
    from bench.spec import plugin_code

    df = tidy.copy()
    df["plugin_code"] = [json.dumps({"attack": plugin_code("attack", a), "defense": plugin_code("defense", d)})
                         for a, d in zip(df["attack"], df["defense"])]
    df.loc[df.run_id == "e", "plugin_code"] = json.dumps({"attack": plugin_code("attack", "blend"),
                                                          "defense": "0000000000000000"})
    board = leaderboard(normalise(df)).set_index("defense")
    assert board.loc["FineTuning", "older code runs"] == 1 and board.loc["MeCa", "older code runs"] == 0
    text = leaderboard_markdown(board.reset_index())
    assert "FineTuning (1 run(s) of older plug-in code)" in text and "MeCa (" not in text
