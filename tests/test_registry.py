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
