"""bench.detection, the building block ABL, DBR and SCAn share: the rotate-translate transform,
top/bottom-k masks, the MAD anomaly index. SCAn's statistics are tested with SCAn
(tests/plugins/test_scan_ft.py)."""
from __future__ import annotations

import torch

from bench import detection


def test_rotate_translate_moves_pixels_as_asked():
    x = torch.zeros(2, 1, 8, 8)
    x[:, :, 1, 2] = 1.0
    out = detection.random_rotate_translate(x, torch.tensor([0.0, 180.0]), torch.tensor([[3.0, 1.0], [0.0, 0.0]]))
    assert out[0, 0, 2, 5] == 1.0 and out[0].sum() == 1.0          # shifted right 3, down 1
    assert out[1, 0, 6, 5] == 1.0 and out[1].sum() == 1.0          # rotated half a turn
    big = detection.random_rotate_translate(x, torch.tensor([0.0, 0.0]), torch.tensor([[8.0, 0.0], [0.0, 8.0]]))
    assert big.sum() == 0                                          # zero fill


def test_masks_and_anomaly_index():
    s = torch.tensor([0.3, 0.9, 0.1, 0.9, 0.5])
    assert detection.top_k_mask(s, 2).tolist() == [False, True, False, True, False]
    assert detection.bottom_k_mask(s, 2).tolist() == [True, False, True, False, False]
    a = detection.mad_anomaly_index(torch.tensor([1.0, 1.1, 0.9, 1.0, 10.0]))
    assert a[-1] > 20 and a[:4].max() < 2
