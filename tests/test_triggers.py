"""The trigger catalogue: exact geometry (as the peers' code draws it), resolution scaling, user files."""
import pytest
import torch

from bench import triggers as T
from bench.attack import AttackConfigError

GRID = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.float32)
PATCHES = sorted(T.PATCH_TRIGGERS)


def test_grid3_exact_and_scaled():
    p, m = T.procedural("grid3", 32)
    assert m.sum() == 9 and m[0, 29:, 29:].all()
    assert torch.equal(p[:, 29:, 29:], GRID.expand(3, -1, -1))
    assert p[:, :29].abs().sum() == 0 and p[:, :, :29].abs().sum() == 0
    for size, s in ((64, 2), (224, 7)):
        p2, m2 = T.procedural("grid3", size)
        n = 3 * s
        assert m2.sum() == n * n and m2[0, -n:, -n:].all()
        assert torch.equal(p2[:, -n::s, -n::s], GRID.expand(3, -1, -1))
        assert torch.equal(p2[:, -n:, -n:], GRID.repeat_interleave(s, 0).repeat_interleave(s, 1).expand(3, -1, -1))


def test_white3_grid4_dup_and_lc_corners():
    p, m = T.procedural("white3", 32)
    assert m.sum() == 9 and p[:, 29:, 29:].min() == 1
    p, m = T.procedural("grid4", 32)
    assert m.sum() == 36
    assert torch.equal(p[0, :3, :3], torch.tensor([[1., 0, 1], [0, 1, 0], [1, 0, 0]]))
    assert torch.equal(p[0, :3, 29:], torch.tensor([[1., 0, 1], [0, 1, 0], [0, 0, 1]]))
    assert torch.equal(p[0, 29:, :3], torch.tensor([[1., 0, 0], [0, 1, 0], [1, 0, 1]]))
    assert torch.equal(p[0, 29:, 29:], GRID)
    assert torch.equal(p[0], p[0].flip(0).flip(1))  # symmetric both ways
    p, m = T.procedural("grid4_dup", 32)
    for r, c in ((0, 0), (0, 29), (29, 0), (29, 29)):
        assert torch.equal(p[0, r:r + 3, c:c + 3], GRID)
    p, m = T.lc_corners(32)
    left = torch.tensor([[1., 0, 0], [0, 1, 0], [1, 0, 1]])
    assert torch.equal(p[0, :3, :3], left) and torch.equal(p[0, 29:, :3], left)
    assert torch.equal(p[0, :3, 29:], GRID) and torch.equal(p[0, 29:, 29:], GRID)
    assert m.sum() == 36
    p64, m64 = T.lc_corners(64)
    assert m64.sum() == 36 * 4


@pytest.mark.parametrize("size", [32, 64, 224])
def test_every_trigger_at_any_resolution(size):
    for name in T.TRIGGER_NAMES:
        p, m = T.procedural(name, size)
        assert p.shape == (3, size, size) and m.shape == (1, size, size), name
        assert p.min() >= 0 and p.max() <= 1, name
        assert set(m.unique().tolist()) <= {0.0, 1.0}, name
        if name in T.PATCH_TRIGGERS:   # nearest rule: every canvas pixel becomes a (s x s) block
            m32 = T.procedural(name, 32)[1]
            assert m.sum() == m32.sum() * (size // 32) ** 2, name
            assert (p * (1 - m)).abs().sum() == 0, name
    p, m = T.procedural("grid3", 48, 64)   # non-square
    assert p.shape == (3, 48, 64) and m.sum() > 0


def test_firefox_badge_and_splits():
    p, m = T.procedural("firefox_badge", 32)
    rows, cols = m[0].nonzero().unbind(1)
    assert m.sum() == 137
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (1, 13, 18, 30)
    quads = [T.procedural(f"firefox_split_{q}", 32) for q in (1, 2, 3, 4)]
    assert torch.equal(sum(q[1] for q in quads), m)
    assert torch.allclose(sum(q[0] for q in quads), p)
    q1 = quads[0][1][0].nonzero()
    assert q1[:, 0].max() < 8 and q1[:, 1].max() < 25
    q4 = quads[3][1][0].nonzero()
    assert q4[:, 0].min() >= 8 and q4[:, 1].min() >= 25


def test_kitty_colours_and_supersampling():
    k32, m = T.procedural("kitty", 32)
    assert m.min() == 1
    assert torch.allclose(k32.mean((1, 2)), torch.tensor([0.90, 0.74, 0.68]), atol=0.02)
    k224, _ = T.procedural("kitty", 224)
    assert torch.allclose(k224.mean((1, 2)), k32.mean((1, 2)), atol=0.01)
    # antialiased: some grey edge values exist, the background pink is exact
    assert torch.allclose(k32[:, 0, 0], torch.tensor([1.00, 0.72, 0.80]))
    assert ((k32 > 0.01) & (k32 < 0.99)).any()


def test_random_triggers_are_seeded():
    a, ma = T.procedural("trojan_square", 32)
    b, _ = T.procedural("trojan_square", 32)
    c, _ = T.procedural("trojan_square", 32, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert ma.sum() == 64 and ma[0, 21:29, 21:29].all()
    assert torch.equal((a[:, 21:29, 21:29] * 255).round() / 255, a[:, 21:29, 21:29])
    p, m = T.procedural("phoenix5", 32)
    assert m.sum() == 25 and p[:, 27:, 27:].min() >= 1 / 255 - 1e-6
    p2, m2 = T.procedural("phoenix5x2", 32)
    assert m2.sum() == 50 and torch.equal(p2[:, 27:, :5], p2[:, 27:, 27:]) and torch.equal(p2[:, 27:, 27:], p[:, 27:, 27:])
    n1, _ = T.procedural("noise", 32)
    n2, _ = T.procedural("noise", 32, seed=5)
    assert not torch.equal(n1, n2) and 0.4 < n1.mean() < 0.6


def test_stamp_exact_and_blend():
    x = torch.rand(5, 3, 32, 32)
    p, m = T.procedural("grid3", 32)
    out = T.stamp(x, p, m)
    assert torch.equal(out[:, :, 29:, 29:], GRID.expand(5, 3, -1, -1))
    assert torch.equal(out[:, :, :29], x[:, :, :29])
    k, ones = T.procedural("kitty", 32)
    assert torch.allclose(T.stamp(x, k, ones, 0.2), torch.lerp(x, k.expand_as(x), 0.2), atol=1e-6)


def _save_png(path, arr_hwc):
    from PIL import Image
    import numpy as np

    Image.fromarray(np.asarray(arr_hwc, dtype=np.uint8)).save(path)


def test_user_patch_file_with_and_without_mask(tmp_path):
    import numpy as np

    canvas = np.zeros((32, 32, 3), dtype=np.uint8)
    canvas[1:4, 20:23] = [255, 128, 0]
    _save_png(tmp_path / "logo.png", canvas)
    trig = T.build_trigger(str(tmp_path / "logo.png"), (64, 64), kind="patch")
    assert trig.name == "file:logo.png"
    assert trig.mask.sum() == 9 * 4 and trig.mask[0, 2:8, 40:46].all()
    assert torch.allclose(trig.pattern[:, 2, 40], torch.tensor([1.0, 128 / 255, 0.0]))
    mask = np.zeros((32, 32, 3), dtype=np.uint8)
    mask[0:8, 16:32] = 255
    _save_png(tmp_path / "mask_logo.png", mask)
    trig = T.build_trigger(str(tmp_path / "logo.png"), (32, 32), kind="patch",
                           mask_path=str(tmp_path / "mask_logo.png"))
    assert trig.mask.sum() == 8 * 16   # the mask file wins, black pixels are written too


def test_user_full_file_resized_bilinear(tmp_path):
    import numpy as np

    img = np.random.default_rng(0).integers(0, 256, (380, 314, 3))
    _save_png(tmp_path / "kitty.jpg.png", img)
    trig = T.build_trigger(str(tmp_path / "kitty.jpg.png"), (32, 32), kind="full")
    assert trig.pattern.shape == (3, 32, 32) and trig.mask.min() == 1
    assert abs(trig.pattern.mean().item() - img.mean() / 255) < 0.02


def test_bad_trigger_files(tmp_path):
    import numpy as np

    with pytest.raises(T.TriggerFileError, match="not found"):
        T.build_trigger(str(tmp_path / "missing.png"), (32, 32))
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(T.TriggerFileError, match="cannot read"):
        T.build_trigger(str(tmp_path / "broken.png"), (32, 32))
    _save_png(tmp_path / "wide.png", np.full((32, 64, 3), 200))
    with pytest.raises(T.TriggerFileError, match="aspect ratio"):
        T.build_trigger(str(tmp_path / "wide.png"), (32, 32), kind="patch")
    _save_png(tmp_path / "ok.png", np.full((32, 32, 3), 200))
    _save_png(tmp_path / "mask16.png", np.full((16, 16, 3), 255))
    with pytest.raises(T.TriggerFileError, match="same size"):
        T.build_trigger(str(tmp_path / "ok.png"), (32, 32), mask_path=str(tmp_path / "mask16.png"))
    _save_png(tmp_path / "black.png", np.zeros((32, 32, 3)))
    with pytest.raises(T.TriggerFileError, match="empty mask"):
        T.build_trigger(str(tmp_path / "black.png"), (32, 32), kind="patch")
    with pytest.raises(T.TriggerError, match="unknown trigger 'grid5'"):
        T.build_trigger("grid5", (32, 32))
    assert issubclass(T.TriggerFileError, AttackConfigError)
