"""PhysicalBA (attacks/physicalba.py): the stamped badge, the physical transforms against
torchvision's, the physical ASR; a trigger file of the wrong aspect ratio."""
import pytest
import torch

from bench.data import to_uint8
from bench.triggers import TriggerFileError, procedural

from conftest import ATTACK_CLASSES as C, attack_data as data, make_attack as make, run_attack as run


def test_physicalba_stamp_transforms_and_physical_asr():
    att, clean, out = run("physicalba")
    pat, mask = procedural("firefox_badge", 32)
    m = mask[0].bool()
    px = out.data.x[out.poison_mask]
    assert torch.equal(px[:, :, m], to_uint8(pat)[:, m].expand(len(px), -1, -1))
    assert torch.equal(px[:, :, ~m], clean.x[out.poison_mask][:, :, ~m])
    tf = att.train_transform()
    x = torch.rand(8, 3, 32, 32)
    y1 = tf(x, torch.Generator().manual_seed(0))
    assert y1.shape == x.shape and torch.equal(y1, tf(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(y1, x)
    assert make("physicalba", phys_on="none").train_transform() is None
    # the affine part agrees with torchvision's RandomAffine (nearest, zero fill)
    import torchvision.transforms.functional as TF
    from attacks.physicalba import physical_transform
    prm = make("physicalba", p_flip=0.0, brightness=0.0, contrast=0.0).params
    g = torch.Generator().manual_seed(0)
    got = physical_transform(x, g, prm)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        torch.rand(8, generator=g)
    ang = -10 + 20 * torch.rand(8, generator=g)
    tx = torch.round(-3.2 + 6.4 * torch.rand(8, generator=g))
    ty = torch.round(-3.2 + 6.4 * torch.rand(8, generator=g))
    sc = 0.8 + 0.1 * torch.rand(8, generator=g)
    for i in range(8):
        ref = TF.affine(x[i], angle=float(ang[i]), translate=[int(tx[i]), int(ty[i])], scale=float(sc[i]),
                        shear=[0.0], interpolation=TF.InterpolationMode.NEAREST)
        assert ((ref - got[i]).abs().amax(0) > 1e-6).sum() <= 8
    always = lambda xx: torch.full((len(xx),), 1)  # noqa: E731
    assert att.extra_metrics(always, data(seed=1)) == {"asr_physical": 1.0}


def test_bad_input_is_refused_before_compute(tmp_path):
    split = data()
    from PIL import Image
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "wide.png")
    with pytest.raises(TriggerFileError, match="aspect ratio"):
        make("physicalba", trigger=str(tmp_path / "wide.png")).check(C, split.y, split.image_shape, 0.1)
