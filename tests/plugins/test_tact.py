"""TaCT (attacks/tact.py, source-specific): the cover samples' patch, the false trigger rate, bad
source and cover classes."""
import pytest
import torch

from bench.attack import AttackConfigError
from bench.registry import ParamsError

from conftest import ATTACK_CLASSES as C, attack_data as data, make_attack as make, run_attack as run


def test_tact_cover_patch_and_false_trigger_rate():
    att, clean, out = run("tact")
    cov = out.data.x[out.cover_mask]
    assert torch.equal(cov[:, 0, 29:, 29:], torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]],
                                                         dtype=torch.uint8).expand(len(cov), -1, -1))
    always = lambda x: torch.full((len(x),), 1)  # noqa: E731
    ftr = att.extra_metrics(always, data(seed=1))
    assert ftr == {"false_trigger_rate": 1.0}
    assert att.source_specific and att.extra_metrics(lambda x: torch.zeros(len(x), dtype=torch.long),
                                                     data(seed=1))["false_trigger_rate"] == 0.0


def test_bad_input_is_refused_before_compute():
    split = data()
    with pytest.raises(AttackConfigError, match="source class 11 does not exist"):
        make("tact", source_classes=[11]).check(C, split.y, split.image_shape, 0.05)
    with pytest.raises(AttackConfigError, match="cover class 13 does not exist"):
        make("tact", cover_classes=[13]).check(C, split.y, split.image_shape, 0.05)
    with pytest.raises(ParamsError, match="must not contain a source class or the target"):
        make("tact", cover_classes=[0, 5])
    with pytest.raises(ParamsError, match="cannot also be a source class"):
        make("tact", source_classes=[1])
