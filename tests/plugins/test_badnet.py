"""BadNet (attacks/badnet.py): the 3x3 grid, bit-exact at 32 and 64 px; a missing trigger file."""
import pytest
import torch

from bench.triggers import TriggerFileError

from conftest import ATTACK_CLASSES as C, attack_data as data, make_attack as make, run_attack as run


def test_badnet_grid_is_bit_exact():
    att, clean, out = run("badnet")
    idx = out.poison_mask.nonzero().flatten()
    px = out.data.x[idx]
    grid = torch.tensor([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=torch.uint8)
    assert torch.equal(px[:, :, 29:, 29:], grid.expand(len(idx), 3, -1, -1))
    assert torch.equal(px[:, :, :29], clean.x[idx][:, :, :29])
    assert torch.equal(px[:, :, :, :29], clean.x[idx][:, :, :, :29])
    att64, clean64, out64 = run("badnet", split=data(size=64))
    px = out64.data.x[out64.poison_mask]
    assert torch.equal(px[:, :, 58:, 58:], grid.repeat_interleave(2, 0).repeat_interleave(2, 1).expand(len(px), 3, -1, -1))
    assert torch.equal(px[:, :, :58], clean64.x[out64.poison_mask][:, :, :58])


def test_bad_input_is_refused_before_compute(tmp_path):
    split = data()
    with pytest.raises(TriggerFileError, match="not found"):
        make("badnet", trigger=str(tmp_path / "nope.png")).check(C, split.y, split.image_shape, 0.1)
