"""WaNet (attacks/wanet.py): the warp, the noisy warp of cover samples, the seeded field."""
import torch

from bench.data import to_float, to_uint8

from conftest import run_attack as run


def test_wanet_warp_cover_noise_and_seed():
    att, clean, out = run("wanet")
    from attacks.wanet import warp
    idx = out.poison_mask.nonzero().flatten()
    assert torch.equal(out.data.x[idx], to_uint8(warp(to_float(clean.x[idx]), att.grid).clamp(0, 1)))
    cidx = out.cover_mask.nonzero().flatten()
    grid2 = (att.grid + att.noise / 32).clamp(-1, 1)
    assert torch.equal(out.data.x[cidx], to_uint8(warp(to_float(clean.x[cidx]), grid2).clamp(0, 1)))
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    dev = (att.grid[0] - torch.stack((xs, ys), -1)).abs()
    assert 0 < dev.max() < 0.5 * 8 / 32                      # a small, nonzero displacement
    att2, _, _ = run("wanet")
    att3, _, _ = run("wanet", seed=3)
    assert torch.equal(att.grid, att2.grid) and not torch.equal(att.grid, att3.grid)
    attp, _, outp = run("wanet", cover_noise="per_sample")
    attp2, _, outp2 = run("wanet", cover_noise="per_sample")
    assert torch.equal(outp.data.x, outp2.data.x)
    assert not torch.equal(outp.data.x[outp.cover_mask], out.data.x[out.cover_mask])
