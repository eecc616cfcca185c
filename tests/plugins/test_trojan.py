"""Trojan (attacks/trojan.py): the square patch, exact pixels and nothing outside it."""
import torch

from bench.data import to_uint8
from bench.triggers import procedural

from conftest import run_attack as run


def test_trojan_patch_is_exact():
    att, clean, out = run("trojan")
    pat = to_uint8(procedural("trojan_square", 32)[0])
    px = out.data.x[out.poison_mask]
    assert torch.equal(px[:, :, 21:29, 21:29], pat[:, 21:29, 21:29].expand(len(px), -1, -1, -1))
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[21:29, 21:29] = False
    assert torch.equal(px[:, :, outside], clean.x[out.poison_mask][:, :, outside])
