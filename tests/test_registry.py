import dataclasses
import sys
import textwrap

import pytest

from bench.registry import ATTACKS, DATASETS, DEFENSES, MODELS, ParamsError, Registry, UnknownNameError


def test_decorator_registration_listing_and_factory():
    reg = Registry("widget")

    @dataclasses.dataclass
    class P:
        size: int = 3

    @reg.register("round_widget", params=P, shape="round")
    class Round:
        """A round widget."""

        def __init__(self, params):
            self.params = params

    @reg.register("square_widget", shape="square")
    class Square:
        """A square widget."""

    assert reg.list("*_widget") == ["round_widget", "square_widget"]
    assert reg.list("round*") == ["round_widget"]
    assert reg.list(shape="square") == ["square_widget"]
    w = reg.create("round_widget", size=5)
    assert w.params.size == 5
    assert reg.create("round_widget").params.size == 3
    assert reg.get("round_widget").doc == "A round widget."


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownNameError) as err:
        MODELS.get("resnet81")
    assert "resnet18" in str(err.value)


def test_unknown_parameter_is_refused_with_hint():
    with pytest.raises(ParamsError) as err:
        DATASETS.create("digits", image_sise=16)
    assert "image_size" in str(err.value)


def test_module_path_is_accepted(tmp_path, monkeypatch):
    (tmp_path / "my_plugin_mod.py").write_text(textwrap.dedent('''
        from bench.defense import Defense, DefenseOutput
        class PathDefense(Defense):
            """A defense found by module path."""
            def run(self, ctx):
                return DefenseOutput(ctx.model)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = DEFENSES.get("my_plugin_mod:PathDefense")
    assert entry.obj.__name__ == "PathDefense"
    assert entry.source == "path"


def test_entry_point_plugins_are_found(tmp_path, monkeypatch):
    pkg = tmp_path / "ep_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from bench.defense import Defense, DefenseOutput
        class EPDefense(Defense):
            """A defense from an entry point."""
            def run(self, ctx):
                return DefenseOutput(ctx.model)
    '''))
    dist = tmp_path / "ep_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[bench.defenses]\nep_defense = ep_pkg:EPDefense\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("defense")  # a fresh registry re-reads entry points
    reg.group = "bench.defenses"
    assert "ep_defense" in reg.names()
    assert reg.get("ep_defense").source == "entry-point"


def test_builtin_registries_have_the_foundation_entries():
    assert "none" in DEFENSES.names()
    assert "clean" in ATTACKS.names()
    assert "digits" in DATASETS.names()
    for m in ["resnet18", "resnet34", "mobilenetv2", "cnn_small"]:
        assert m in MODELS.names()


def test_timm_models_by_prefix():
    import torch

    from bench.models import create_model

    model = create_model("timm:resnet10t", num_classes=7, image_size=32)
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert model.features(torch.rand(2, 3, 32, 32)).dim() == 2
    with pytest.raises(ValueError):
        MODELS.get("timm:not_a_model_at_all")


# -- cards --------------------------------------------------------------------------------------
from bench.attack import Attack  # noqa: E402
from bench.card import AttackCard, CardError, DefenseCard  # noqa: E402
from bench.defense import Defense, DefenseOutput  # noqa: E402
from bench.registry import NameCollisionError, PluginKindError  # noqa: E402


@dataclasses.dataclass
class _ProbeParams:
    epochs: float = 2.0
    strong: bool = False


def _defense_class(card, name="Probe"):
    """A defense class with ``card``, built the way a plug-in module defines one."""
    return type(name, (Defense,), {"card": card, "Params": _ProbeParams,
                                   "run": lambda self, ctx: DefenseOutput(ctx.model)})


def test_a_card_declares_once_and_the_class_attributes_follow():
    cls = _defense_class(DefenseCard(name="_probe", stage="train", needs_reserve=True, reserve_labels=False,
                                     detects=True))
    assert (cls.stage, cls.needs_reserve, cls.reserve_labels, cls.detects) == ("train", True, False, True)
    assert cls.declaration() == {"stage": "train", "needs_train": True, "needs_reserve": True,
                                 "reserve_labels": False, "detects": True, "starts_from_victim": False}
    assert cls.declaration() == cls.card.declaration()
    with pytest.raises(CardError, match="declared both in its card and as class attribute"):
        type("Twice", (Defense,), {"card": DefenseCard(name="_twice", stage="train"), "stage": "train"})
    attack = type("A", (Attack,), {"card": AttackCard(name="_a", label_mode="clean", needs_model=True)})
    assert (attack.label_mode, attack.needs_model, attack.source_specific) == ("clean", True, False)


def test_an_instance_can_still_override_its_declaration():
    clp = DEFENSES.create("clp")
    assert DEFENSES.get("clp").obj.declaration()["needs_reserve"] is False
    assert clp.declaration()["needs_reserve"] is (clp.params.repair_epochs > 0)


@pytest.mark.parametrize("fields, message", [
    ({"stage": "retrain"}, "stage must be one of repair, train"),
    ({"needs_reserve": "yes"}, "needs_reserve must be a bool"),
    ({"tables": ("table9",)}, "unknown table"),
    ({"order": 1.5}, "order must be a int"),
    ({"tables": ("table4",)}, "give variant_params"),
    ({"miniature_params": ["iterations"]}, "miniature_params must map"),
    ({"settings": {"lr": "paper"}}, r"settings\['lr'\] must be \(source, note\)"),
    ({"settings": {"lr": ("folklore", "everyone uses it")}}, "source 'folklore'; known: paper"),
])
def test_bad_defense_cards_are_refused(fields, message):
    with pytest.raises(CardError, match=message):
        DefenseCard(name="_bad", **fields)


def test_bad_attack_cards_and_unknown_variant_params_are_refused():
    with pytest.raises(CardError, match="label_mode must be one of"):
        AttackCard(name="_bad", label_mode="dirt")
    with pytest.raises(CardError, match=r"variant_params name parameter\(s\) \['nope'\]"):
        _defense_class(DefenseCard(name="_bad", variant_params={"nope": True}))
    with pytest.raises(CardError, match=r"miniature_params name parameter\(s\) \['rounds'\]"):
        _defense_class(DefenseCard(name="_bad", miniature_params={"rounds": 1}))
    with pytest.raises(CardError, match=r"settings name parameter\(s\) \['rounds'\]"):
        _defense_class(DefenseCard(name="_bad", settings={"epochs, rounds": ("paper", "section 4")}))


def test_every_builtin_plugin_has_a_card_named_as_registered():
    for reg in (ATTACKS, DEFENSES):
        for name in reg.names():
            entry = reg.get(name)
            assert entry.card is not None and entry.card.name == name
            for attr in entry.card.CLASS_ATTRIBUTES:
                assert getattr(entry.obj, attr) == getattr(entry.card, attr), (name, attr)


def test_a_plugin_without_a_card_gets_one_from_its_class_attributes():
    reg = Registry("defense", card=DefenseCard)
    cls = type("Old", (Defense,), {"stage": "train", "detects": True, "run": lambda self, ctx: None})
    reg.add("_old", cls, paper="Someone, 2020")
    card = reg.get("_old").card
    assert (card.name, card.stage, card.detects, card.paper, card.display) == ("_old", "train", True,
                                                                               "Someone, 2020", "_old")
    assert "_old" in reg.list(stage="train") and "_old" not in reg.list(stage="repair")
    with pytest.raises(CardError, match="unknown card field"):
        reg.add("_old2", cls, colour="red")


def test_list_filters_on_card_fields():
    assert "meca" in DEFENSES.list(stage="train") and "fine_tuning" not in DEFENSES.list(stage="train")
    assert set(ATTACKS.list(label_mode="clean")) >= {"sig", "lc", "narcissus"}


# -- registry checks ----------------------------------------------------------------------------
def test_a_taken_name_is_refused_for_another_object_but_not_for_the_same():
    reg = Registry("defense", card=DefenseCard)
    first = _defense_class(DefenseCard(name="_dup"))
    reg.register(first)
    reg.register(first)                                         # the same object again: fine
    reg.register(_defense_class(DefenseCard(name="_dup")))      # the same definition again: fine
    other = _defense_class(DefenseCard(name="_dup"), name="Other")
    with pytest.raises(NameCollisionError, match="'_dup' is already registered"):
        reg.register(other)
    with pytest.raises(NameCollisionError):
        DEFENSES.add("fine_tuning", other)
    assert DEFENSES.get("fine_tuning").obj.__name__ == "FineTuning"


def test_entries_must_be_of_the_registry_kind():
    class NotADefense:
        """Looks like a defense, does not subclass Defense."""

        stage = "repair"

    with pytest.raises(PluginKindError, match="not a subclass of bench.defense.Defense"):
        DEFENSES.add("_not_a_defense", NotADefense)
    with pytest.raises(PluginKindError, match="not a subclass of bench.attack.Attack"):
        ATTACKS.add("_a_defense", _defense_class(DefenseCard(name="_a_defense")))
    with pytest.raises(PluginKindError):
        MODELS.add("_not_a_model", len)
    assert "_not_a_defense" not in DEFENSES.names()


@pytest.mark.parametrize("path", ["subprocess:run", "os:system", "builtins:eval", "this:s",
                                  "shutil:rmtree", "os.path:join"])
def test_standard_library_paths_are_refused_without_importing(path, capsys):
    module = path.partition(":")[0]
    was_imported = module in sys.modules
    for reg in (ATTACKS, DEFENSES, DATASETS, MODELS):
        with pytest.raises(UnknownNameError, match="standard library"):
            reg.create(path, "echo pwned")
    assert (module in sys.modules) == was_imported             # never imported ("this" prints on import)
    assert capsys.readouterr().out == ""


def test_a_path_to_an_object_of_another_kind_is_refused_before_it_is_called(tmp_path, monkeypatch):
    marker = tmp_path / "called"
    (tmp_path / "lure_mod.py").write_text(textwrap.dedent(f'''
        def run(*args, **kwargs):
            open({str(marker)!r}, "w").write("ran")

        class Gadget:
            def __init__(self, *args, **kwargs):
                open({str(marker)!r}, "w").write("ran")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ["lure_mod:run", "lure_mod:Gadget", "lure_mod:__builtins__", "lure_mod:nothing"]:
        with pytest.raises(UnknownNameError):
            DEFENSES.create(name, command="x")
        with pytest.raises(UnknownNameError):
            ATTACKS.create(name)
    assert not marker.exists()
    assert DEFENSES.lookup("lure_mod:run") is None


def test_an_attack_by_module_path_and_lookup_never_imports(tmp_path, monkeypatch):
    (tmp_path / "my_attack_mod.py").write_text(textwrap.dedent('''
        from bench.attack import Attack
        class Corner(Attack):
            """An attack found by module path."""
            def apply_poison(self, x, idx):
                return x
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert ATTACKS.lookup("my_attack_mod:Corner") is None and "my_attack_mod" not in sys.modules
    entry = ATTACKS.get("my_attack_mod:Corner")
    assert entry.source == "path" and entry.card.label_mode == "dirty"
    assert ATTACKS.create("my_attack_mod:Corner", target=3).params.target == 3
    assert "my_attack_mod:Corner" not in ATTACKS.names()        # never matched by a wildcard


# -- parameter types ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, params, message", [
    ("fine_tuning", {"epochs": "ten"}, "fine_tuning: parameter 'epochs' expects float, got str 'ten'"),
    ("fine_tuning", {"epochs": True}, "parameter 'epochs' expects float, got bool True"),
    ("meca", {"relabel_relearn": 1}, "parameter 'relabel_relearn' expects bool, got int 1"),
    ("mcldef", {"oracle_target": 1.5}, "parameter 'oracle_target' expects int | None, got float 1.5"),
    ("tact", {"source_classes": "0"}, "parameter 'source_classes' expects"),
    ("bcu", {"layerwise_ratio": [0.1, "a"]}, "parameter 'layerwise_ratio' expects tuple[float, ...], got list"),
    ("cutmix", {"lam_clip": [0.3]}, "parameter 'lam_clip' expects tuple[float, float] | None, got list [0.3]"),
])
def test_a_parameter_of_the_wrong_type_names_the_parameter(name, params, message):
    reg = ATTACKS if name in ATTACKS.names() else DEFENSES
    with pytest.raises(ParamsError) as err:
        reg.create(name, **params)
    assert message in str(err.value)


def test_parameters_of_the_right_type_pass():
    assert DEFENSES.create("fine_tuning", epochs=3).params.epochs == 3          # an int for a float
    assert DEFENSES.create("mcldef", oracle_target=None).params.oracle_target is None
    assert ATTACKS.create("tact", source_classes=[0, 2]).params.source_classes == [0, 2]
    assert DEFENSES.create("cutmix", lam_clip=[0.2, 0.8]).params.lam_clip == [0.2, 0.8]   # TOML arrays


def test_value_matches_understands_the_annotations_plugins_use():
    from typing import Literal, Optional

    from bench.registry import type_name, value_matches

    assert value_matches(3, float) and not value_matches(True, int) and not value_matches(1, bool)
    assert value_matches(None, Optional[int]) and value_matches((1, 2), tuple[int, ...])
    assert not value_matches((1, 2, 3), tuple[float, float]) and value_matches([1, 2.5], tuple[float, float])
    assert value_matches({"a": 1}, dict[str, int]) and not value_matches({"a": "b"}, dict[str, int])
    assert value_matches("sgd", Literal["sgd", "adam"]) and not value_matches("rmsprop", Literal["sgd", "adam"])
    assert type_name(tuple[float, ...] | None) == "tuple[float, ...] | None"


def test_a_plugins_fingerprint_follows_its_code_not_its_documentation(tmp_path, monkeypatch):
    from bench import spec as spec_module

    source = textwrap.dedent('''
        """A defense whose documentation is rewritten."""
        from bench.defense import Defense, DefenseOutput
        LIMIT = 3   # a constant
        """What LIMIT means."""
        class Reworded(Defense):
            """First wording."""
            def run(self, ctx):
                return DefenseOutput(ctx.model)   # as it is
    ''')
    path = tmp_path / "fingerprinted_mod.py"
    path.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = "fingerprinted_mod:Reworded"
    DEFENSES.get(name)

    def fingerprint(text):
        path.write_text(text)
        spec_module._CODE.clear()
        return spec_module.plugin_code("defense", name)

    first = fingerprint(source)
    assert first not in ("unknown", "builtin")
    reworded = source.replace("First wording.", "Second wording,\n    on two lines.").replace("# as it is", "")
    assert fingerprint(reworded.replace("What LIMIT", "\n\nWhat else LIMIT")) == first
    assert fingerprint(source.replace("LIMIT = 3", "LIMIT = 4")) != first
    assert fingerprint(source.replace("ctx.model)", "ctx.model, scores=None)")) != first
    spec_module._CODE.clear()
