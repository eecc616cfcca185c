"""Suite files: loading, expansion (wildcards, presets, target, exclusions, blocks), filters,
validation (which writes nothing and never calls what the registry refuses), and the shipped
suites."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

from bench.attack import Attack, AttackParams
from bench.registry import ATTACKS, DEFENSES
from bench.suite import (SuiteError, apply_filters, expand, list_suites, load_suite, suite_from_dict,
                         validate)

SHIPPED = [name for name, _ in list_suites()]     # every file in bench/suites/, checked below
EXPECTED = ["smoke", "cifar10-cpu-quick", "cifar10-cpu", "cifar10-cpu-paper", "meca-table2", "meca-table3",
            "meca-table4", "meca-table5", "meca-table6", "meca-table7", "meca-fig7", "meca-dev-coarse", "ntml-dev"]


def toml(tmp_path, body: str, name="s.toml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


BASE = """
datasets = [{name = "digits", params = {image_size = 16}}]
models = ["cnn_tiny"]
seeds = [0]
budget = {epochs = 1, scale = 0.1, n_train = 200}
"""


def test_list_suites_has_the_shipped_suites_with_descriptions():
    suites = dict(list_suites())
    for name in EXPECTED:
        assert name in suites, name
    for name in SHIPPED:
        assert suites[name], f"{name} has no description"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_suites_expand_and_name_only_registered_plugins(name):
    suite = load_suite(name)
    specs = expand(suite)
    assert specs and len({s.run_id for s in specs}) == len(specs)
    assert all(s.suite == name for s in specs)
    # names and parameters are valid (data presence is not checked here: no CIFAR in tests)
    problems = validate(specs, check_data=False)
    assert problems == [], "\n".join(problems)


def test_smoke_suite_is_offline_and_fully_valid(tmp_path):
    specs = expand(load_suite("smoke"))
    assert {s.dataset for s in specs} == {"digits"}
    labels = {ATTACKS.get(s.attack).obj.label_mode for s in specs if s.defense != "none"}
    assert {"dirty", "clean"} <= labels
    # every registered (public) defense runs against the dirty- and the clean-label attack
    public = {d for d in DEFENSES.names() if not d.startswith("_")}
    for mode in ("dirty", "clean"):
        assert {s.defense for s in specs if ATTACKS.get(s.attack).obj.label_mode == mode} >= public
    assert validate(specs, cache_dir=tmp_path / "cache") == []


def test_meca_suites_use_the_paper_settings():
    t2 = expand(load_suite("meca-table2"))
    assert {s.dataset for s in t2} == {"cifar10", "cifar100", "tinyimagenet", "imagenette"}
    assert {s.attack for s in t2} == {"badnet", "blend", "sig", "wanet", "physicalba"}
    assert {s.defense for s in t2} == {"none", "fine_tuning", "fine_pruning", "cutmix", "clp", "dbr", "scan_ft",
                                       "abl", "meca", "nt_ml", "mcldef", "bcu"}
    assert {s.model for s in t2} == {"resnet18"} and {s.poison_ratio for s in t2} == {0.05}
    assert all(s.attack_params.get("target") == 1 for s in t2)
    assert all(s.attack_params.get("preset") == "meca" for s in t2 if "meca" in (getattr(ATTACKS.get(s.attack).obj, "presets", None) or {}))
    assert {s.poison_ratio for s in expand(load_suite("meca-table5"))} == {0.10, 0.15, 0.20}
    assert {s.poison_ratio for s in expand(load_suite("meca-table7"))} == {0.0, 0.05}
    assert {s.model for s in expand(load_suite("meca-table6"))} == {"resnet34", "mobilenetv2"}
    rr = {s.defense_params.get("relabel_relearn") for s in expand(load_suite("meca-table4")) if s.defense == "meca"}
    assert rr == {None, True}
    rates = {s.defense_params.get("partition_rate", 0.05) for s in expand(load_suite("meca-fig7"))
             if s.defense == "meca"}
    assert rates == {0.01, 0.02, 0.03, 0.05, 0.10}
    quick = expand(load_suite("cifar10-cpu-quick"))
    assert {s.poison_ratio for s in quick} == {0.0, 0.05} and {s.seed for s in quick} == {0, 1}
    assert {s.attack for s in expand(load_suite("cifar10-cpu"))} == set(ATTACKS.list("*")) - {"clean"} - {
        n for n in ATTACKS.names() if n.startswith("_")}


def test_wildcards_exclusions_blocks_and_preset(tmp_path):
    @dataclass
    class P(AttackParams):
        alpha: float = 0.5

    @ATTACKS.register("_suite_a")
    class WithPreset(Attack):
        """test attack with a preset"""
        Params = P
        presets = {"paper": {"alpha": 0.2}}

        def apply_poison(self, x, idx):
            return x
    suite = load_suite(toml(tmp_path, BASE + """
        attacks = ["_suite_*", "clean", "!clean"]
        ratios = [0.1, 0.2]
        defenses = ["*", "!none"]
        target = 3
        preset = "paper"
        [[exclude]]
        ratio = 0.2
        defense = "fine*"
        [[grid]]
        [[grid]]
        attacks = ["clean"]
        ratios = [0.0]
        defenses = ["none"]
    """))
    specs = expand(suite)
    a = [s for s in specs if s.attack == "_suite_a"]
    assert a and all(s.attack_params == {"preset": "paper", "target": 3} for s in a)
    assert not any(s.defense == "none" for s in a)
    assert not any(s.poison_ratio == 0.2 and s.defense.startswith("fine") for s in a)
    assert not any(s.defense.startswith("_") for s in specs)          # private plug-ins need "_" patterns
    clean = [s for s in specs if s.attack == "clean"]
    assert len(clean) == 1 and clean[0].attack_params == {} and clean[0].defense == "none"
    assert a[0].train == {"epochs": 1} and a[0].budget.scale == 0.1 and a[0].n_train == 200


def test_filters_narrow_and_refuse_values_not_in_the_suite(tmp_path):
    specs = expand(load_suite(toml(tmp_path, BASE.replace("seeds = [0]", "seeds = [0, 1]") + """
        attacks = ["badnet", "sig"]
        ratios = [0.05, 0.08]
        defenses = ["none", "fine_tuning"]
    """)))
    assert len(specs) == 16
    out = apply_filters(specs, attacks="sig", defenses=["none"], ratios="0.08", seeds="1")
    assert len(out) == 1 and out[0].attack == "sig" and out[0].seed == 1
    assert len(apply_filters(specs, defenses="fine*,none")) == 16
    with pytest.raises(SuiteError) as exc:
        apply_filters(specs, attacks="wanet", seeds="7")
    assert len(exc.value.problems) == 2


def test_a_filter_picks_one_variant_of_a_defense_by_its_label(tmp_path):
    specs = expand(load_suite(toml(tmp_path, BASE + """
        attacks = ["badnet"]
        ratios = [0.05]
        defenses = ["none", {name = "fine_tuning", params = {epochs = 3, lr = 0.01}},
                    {name = "fine_tuning", params = {epochs = 5, lr = 0.01}}]
    """)))
    assert len(specs) == 3
    out = apply_filters(specs, defenses="none,fine_tuning(epochs=5,lr=0.01)")   # commas inside the label
    assert sorted(s.label().split("/")[3] for s in out) == ["fine_tuning(epochs=5,lr=0.01)", "none"]
    assert len(apply_filters(specs, defenses="fine_tuning(epochs=*)")) == 2
    assert len(apply_filters(specs, defenses="fine_tuning")) == 2    # the name alone: every variant
    with pytest.raises(SuiteError, match="did you mean fine_tuning"):
        apply_filters(specs, defenses="fine_tuning(epochs=4,lr=0.01)")


def test_a_preset_shows_in_the_job_label_and_either_form_filters(tmp_path):
    specs = expand(load_suite(toml(tmp_path, BASE + """
        attacks = ["badnet"]
        ratios = [0.05]
        defenses = ["meca", {name = "meca", params = {preset = "spec-v1"}},
                    {name = "meca", params = {preset = "spec-v1", rounds = 8}}]
    """)))
    labels = sorted(s.label().split("/")[3] for s in specs)
    assert labels == ["meca", "meca(preset=spec-v1)", "meca(preset=spec-v1,rounds=8)"]
    assert [s.defense_params for s in apply_filters(specs, defenses="meca(preset=spec-v1)")] == [{"preset": "spec-v1"}]
    assert len(apply_filters(specs, defenses="meca(rounds=8)")) == 1     # the form without the preset
    assert len(apply_filters(specs, defenses="meca(preset=*)")) == 2


def test_malformed_and_structurally_wrong_suites_list_every_problem(tmp_path):
    with pytest.raises(SuiteError, match="malformed TOML"):
        load_suite(toml(tmp_path, "datasets = [", "m.toml"))
    with pytest.raises(SuiteError) as exc:
        load_suite(toml(tmp_path, """
            datasets = ["digits"]
            models = []
            attacks = [{params = {}}]
            seeds = [-1]
            defenses = ["none"]
            colour = "blue"
            budget = {epochs = 0, speed = 2}
        """, "w.toml"))
    text = str(exc.value)
    for needle in ("ratios", "models", "needs a 'name'", "seed -1", "colour", "epochs", "speed"):
        assert needle in text, needle
    with pytest.raises(SuiteError, match="Did you mean"):
        load_suite("smok")


def test_validation_collects_names_params_ratios_and_cell_checks(tmp_path):
    suite = suite_from_dict({
        "datasets": ["digits", "nosuchdata"], "models": ["cnn_tiny", "nosuchnet"],
        "attacks": ["badnet", {"name": "sig", "params": {"delta": "x", "nosuchparam": 1}}, "badnett"],
        "ratios": [0.3, 1.2], "seeds": [0], "defenses": ["none", "fine_tuning", {"name": "meca", "params": {"bogus": 1}}],
        "budget": {"n_train": 500}, "reserve_fraction": 0.001,
    })
    specs = expand(suite)
    problems = validate(specs, cache_dir=tmp_path / "cache")
    text = "\n".join(problems)
    for needle in ("nosuchdata", "nosuchnet", "nosuchparam", "badnett", "Did you mean", "1.2", "bogus",
                   "reserve"):
        assert needle in text, (needle, text)
    assert len(problems) == len(set(problems))


def test_train_and_budget_epochs_that_disagree_are_refused(tmp_path):
    def suite(train_epochs):
        return BASE + f"""
            attacks = ["badnet"]
            ratios = [0.1]
            defenses = ["none"]
            [train]
            epochs = {train_epochs}
        """

    with pytest.raises(SuiteError, match=r"\[budget\] epochs = 1 and \[train\] epochs = 3 disagree"):
        load_suite(toml(tmp_path, suite(3)))
    agreeing = expand(load_suite(toml(tmp_path, suite(1), "ok.toml")))
    assert {s.train["epochs"] for s in agreeing} == {1}
    with pytest.raises(SuiteError, match=r"\[\[grid\]\] #1: \[budget\] epochs"):
        load_suite(toml(tmp_path, suite(1) + """
            [[grid]]
            train = {epochs = 2}
        """, "grid.toml"))


def _refused_suite(tmp_path, **axes) -> str:
    data = {"datasets": '[{name = "digits", params = {image_size = 16}}]', "models": '["cnn_tiny"]',
            "attacks": '["badnet"]', "ratios": "[0.1]", "seeds": "[0]", "defenses": '["none"]', **axes}
    return str(toml(tmp_path, "\n".join(f"{k} = {v}" for k, v in data.items())
                    + "\nbudget = {epochs = 1, n_train = 200}\n", "refused.toml"))


def _cli(*argv) -> int:
    from bench.cli import main

    return main(["run", *argv, "--no-progress"])


def test_a_refused_suite_writes_nothing(tmp_path, capsys):
    """Validation decodes data in memory: a refused suite leaves no results, cache or dataset files."""
    path = _refused_suite(tmp_path, defenses='["none", "fine_tunning"]')
    results, cache = tmp_path / "results", tmp_path / "cache"
    problems = validate(expand(load_suite(path)), cache_dir=cache)
    assert any("fine_tunning" in p for p in problems)
    assert not cache.exists()
    for dry in ([], ["--dry-run"]):
        assert _cli("--suite", path, "--results", str(results), "--cache-dir", str(cache), *dry) != 0
        assert "fine_tunning" in capsys.readouterr().out
        assert not results.exists() and not cache.exists()


_SHELL = 'args = ["touch", "{marker}"]'


@pytest.mark.parametrize("axis,name,params", [
    ("attacks", "subprocess:run", _SHELL), ("defenses", "subprocess:run", _SHELL),
    ("defenses", "subprocess:Popen", _SHELL),
    ("defenses", "numpy:save", 'file = "{marker}", arr = [1]'),   # importable, but not a Defense
])
def test_a_suite_naming_a_non_plugin_is_refused_and_nothing_is_called(tmp_path, capsys, axis, name, params):
    """``module:Object`` names resolve only to plug-ins of the axis' kind; anything else is refused
    with a problem naming it, before it is ever called, under validate and --dry-run alike."""
    marker = tmp_path / "marker.npy"
    entry = f'[{{name = "{name}", params = {{{params.format(marker=marker)}}}}}]'
    path = _refused_suite(tmp_path, **{axis: entry})
    problems = validate(expand(load_suite(path), strict=False), cache_dir=tmp_path / "cache")
    assert any(name in p for p in problems), problems
    assert not marker.exists()
    assert _cli("--suite", path, "--results", str(tmp_path / "results"), "--dry-run") != 0
    assert name in capsys.readouterr().out
    assert not marker.exists()
