"""Trigger catalogue: every geometric and procedural trigger the shipped attacks use (as the peers' code draws them),
user-supplied trigger images, and the masked stamp/blend every patch attack uses.

A trigger is a pair ``(pattern, mask)``: ``pattern`` is a float ``(3, H, W)`` tensor in [0, 1],
``mask`` a float ``(1, H, W)`` tensor (0/1 for hard masks, [0, 1] for a soft user mask). It is
applied as ``x + alpha * mask * (pattern - x)`` (:func:`stamp`). Triggers are generated at any
resolution by the rules of ``common.md`` section 6:

* fixed-position patch triggers (``grid3``, ``white3``, ``grid4``, ``grid4_dup``, ``lc_corners``,
  ``trojan_square``, ``phoenix5``, ``phoenix5x2``, ``firefox_badge``, ``firefox_split_1..4``)
  are defined on a 32x32 canvas and resized to (H, W) with nearest interpolation (pixel-centre
  rule, ``nearest-exact``; identical to plain nearest for integer multiples such as 64 and 224);
* the analytic full-frame cartoon ``kitty`` is evaluated at (H, W) directly, rendered at 4x and
  box-averaged;
* ``noise`` (full-frame i.i.d. uniform RGB) is drawn directly at (H, W) from its seed.

Choices where the spec leaves room:

* ``firefox_badge`` and its quadrants are rendered at the pixel centres of the 32-px canvas
  without supersampling (the mask ``d <= R`` is hard, and the spec describes the 224-px version
  as the nearest upscale of the 32-px one), then nearest-resized like every other patch trigger.
* Random patch triggers (``trojan_square``, ``phoenix5``, ``phoenix5x2``) and ``noise`` draw from
  ``torch.Generator().manual_seed(seed)``; the default seed is 2333 (the toolbox's TrojanNN seed).
* ``lc_corners`` is returned as a 0/1 pattern with its 3x3-per-corner mask; the label-consistent
  attack applies it additively (``+a`` where the pattern is 1, ``-a`` where it is 0).

User files (``trigger`` given as a path instead of a catalogue name) are opened as RGB (alpha
dropped) and scaled to [0, 1]. A *patch* file is a canvas of the trigger's placement: it must have
the images' aspect ratio and is nearest-resized to (H, W); its mask is the optional mask file
(channel 0 / 255) or else "any channel > 0". A *full* file (a blend picture) is resized bilinearly
with antialias, any size, and its mask is all ones. A missing, unreadable or ill-sized file raises
:class:`TriggerFileError` (an :class:`~bench.attack.AttackConfigError`) with the path and reason.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from bench.attack import AttackConfigError

CANVAS = 32
DEFAULT_SEED = 2333
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


class TriggerError(AttackConfigError):
    """An unknown trigger name or a trigger that cannot be built."""


class TriggerFileError(TriggerError):
    """A user trigger file that is missing, unreadable or of an unusable size."""


@dataclass
class Trigger:
    """A built trigger at one resolution: pattern (3, H, W), mask (1, H, W), name and kind."""

    name: str
    pattern: torch.Tensor
    mask: torch.Tensor
    kind: str  # patch | full

    def to(self, device) -> "Trigger":
        return Trigger(self.name, self.pattern.to(device), self.mask.to(device), self.kind)


# -- application ------------------------------------------------------------------------------------
def stamp(x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``x + alpha * mask * (pattern - x)`` on a float batch ``(B, 3, H, W)``.

    ``pattern`` may be ``(3, H, W)`` or ``(B, 3, H, W)``; ``mask`` ``(1, H, W)`` or ``(B, 1, H, W)``.
    With ``alpha = 1`` and a 0/1 mask this is an exact overwrite of the masked pixels.
    """
    p = pattern.to(x.device, x.dtype)
    m = mask.to(x.device, x.dtype)
    if p.dim() == 3:
        p = p.unsqueeze(0)
    if m.dim() == 3:
        m = m.unsqueeze(0)
    w = m * alpha if alpha != 1.0 else m
    # lerp is exact at the ends: weight 1 gives the pattern, weight 0 the image, bit for bit
    return torch.lerp(x, p.expand_as(x), w.expand(x.shape[0], 1, *x.shape[-2:]))


# -- resizing ---------------------------------------------------------------------------------------
def resize_nearest(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest (pixel-centre) resize of a (C, h, w) tensor to ``size``."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t.clone()
    return F.interpolate(t.unsqueeze(0), size=size, mode="nearest-exact").squeeze(0)


def resize_bilinear(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with antialias of a (C, h, w) tensor to ``size``, clipped to [0, 1]."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t.clone()
    out = F.interpolate(t.unsqueeze(0), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.squeeze(0).clamp_(0, 1)


# -- 32-px canvases ---------------------------------------------------------------------------------
def _blank() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(3, CANVAS, CANVAS), torch.zeros(1, CANVAS, CANVAS)


def _put(p: torch.Tensor, m: torch.Tensor, r0: int, c0: int, block) -> None:
    """Write a block (a nested list of grey values, or a (3, h, w) tensor) at (r0, c0)."""
    b = block if isinstance(block, torch.Tensor) else torch.tensor(block, dtype=torch.float32).expand(3, -1, -1)
    h, w = b.shape[-2:]
    p[:, r0:r0 + h, c0:c0 + w] = b
    m[:, r0:r0 + h, c0:c0 + w] = 1.0


GRID_BR = [[0, 0, 1], [0, 1, 0], [1, 0, 1]]
GRID4_TL = [[1, 0, 1], [0, 1, 0], [1, 0, 0]]
GRID4_TR = [[1, 0, 1], [0, 1, 0], [0, 0, 1]]
GRID4_BL = [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
LC_LEFT = [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
LC_RIGHT = [[0, 0, 1], [0, 1, 0], [1, 0, 1]]


def _canvas_grid3(seed):
    p, m = _blank()
    _put(p, m, 29, 29, GRID_BR)
    return p, m


def _canvas_white3(seed):
    p, m = _blank()
    _put(p, m, 29, 29, [[1] * 3] * 3)
    return p, m


def _canvas_grid4(seed):
    p, m = _blank()
    _put(p, m, 0, 0, GRID4_TL)
    _put(p, m, 0, 29, GRID4_TR)
    _put(p, m, 29, 0, GRID4_BL)
    _put(p, m, 29, 29, GRID_BR)
    return p, m


def _canvas_grid4_dup(seed):
    p, m = _blank()
    for r0, c0 in ((0, 0), (0, 29), (29, 0), (29, 29)):
        _put(p, m, r0, c0, GRID_BR)
    return p, m


def _canvas_lc_corners(seed):
    p, m = _blank()
    _put(p, m, 0, 0, LC_LEFT)
    _put(p, m, 29, 0, LC_LEFT)
    _put(p, m, 0, 29, LC_RIGHT)
    _put(p, m, 29, 29, LC_RIGHT)
    return p, m


def _random_block(seed, h, w, low):
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(low, 256, (3, h, w), generator=g).float() / 255.0


def _canvas_trojan_square(seed):
    p, m = _blank()
    _put(p, m, 21, 21, _random_block(seed, 8, 8, 0))
    return p, m


def _canvas_phoenix5(seed):
    p, m = _blank()
    _put(p, m, 27, 27, _random_block(seed, 5, 5, 1))
    return p, m


def _canvas_phoenix5x2(seed):
    p, m = _blank()
    block = _random_block(seed, 5, 5, 1)
    _put(p, m, 27, 0, block)
    _put(p, m, 27, 27, block)
    return p, m


FIREFOX_CENTRE = (7.5, 24.5)   # (row, col) in 32-px canvas pixels
FIREFOX_RADIUS = 6.5
FIREFOX_SPLIT = (8, 25)        # quadrant cut: row, col


def _lerp3(a, b, t):
    a = torch.tensor(a).view(3, 1, 1)
    b = torch.tensor(b).view(3, 1, 1)
    return a + (b - a) * t.unsqueeze(0)


def _canvas_firefox_badge(seed):
    rows = torch.arange(CANVAS, dtype=torch.float64).view(-1, 1) + 0.5
    cols = torch.arange(CANVAS, dtype=torch.float64).view(1, -1) + 0.5
    dv = (rows - FIREFOX_CENTRE[0]).expand(CANVAS, CANVAS)
    du = (cols - FIREFOX_CENTRE[1]).expand(CANVAS, CANVAS)
    d = torch.sqrt(dv ** 2 + du ** 2)
    r = FIREFOX_RADIUS
    t_ring = (1 + torch.sin(torch.atan2(dv, du))) / 2
    ring = _lerp3((1.00, 0.35, 0.05), (1.00, 0.80, 0.15), t_ring.float())
    t_core = ((dv + r) / (2 * r)).clamp(0, 1)
    core = _lerp3((0.15, 0.35, 0.85), (0.45, 0.20, 0.70), t_core.float())
    inside = d <= r
    p = torch.where((d <= 0.55 * r).unsqueeze(0), core, ring)
    p = torch.where(inside.unsqueeze(0), p, torch.zeros_like(p))
    return p.float(), inside.float().unsqueeze(0)


def _canvas_firefox_split(q):
    def build(seed):
        p, m = _canvas_firefox_badge(seed)
        r, c = FIREFOX_SPLIT
        rows = torch.arange(CANVAS).view(-1, 1)
        cols = torch.arange(CANVAS).view(1, -1)
        top, left = rows < r, cols < c
        region = {1: top & left, 2: top & ~left, 3: ~top & left, 4: ~top & ~left}[q].float().unsqueeze(0)
        return p * region, m * region

    return build


# -- full-frame triggers evaluated at (H, W) ----------------------------------------------------------
KITTY_PINK = (1.00, 0.72, 0.80)
KITTY_YELLOW = (1.00, 0.85, 0.15)
KITTY_BLUE = (0.25, 0.55, 0.90)
KITTY_RED = (0.95, 0.15, 0.25)
BLACK, WHITE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


@functools.lru_cache(maxsize=8)
def _render_kitty_cached(h: int, w: int, supersample: int) -> torch.Tensor:
    H, W = h * supersample, w * supersample
    v = ((torch.arange(H, dtype=torch.float32) + 0.5) / H).view(-1, 1)
    u = ((torch.arange(W, dtype=torch.float32) + 0.5) / W).view(1, -1)
    palette = torch.tensor([KITTY_PINK, KITTY_YELLOW, KITTY_BLUE, BLACK, WHITE, KITTY_RED])
    pink, yellow, blue, black, white, red = range(6)
    label = torch.zeros(H, W, dtype=torch.uint8)   # layer by layer, each overwriting the last

    def paint(region, colour):
        label[region] = colour

    def ellipse(cu, cv, ru, rv):
        return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1

    def disc(cu, cv, r):
        return (u - cu) ** 2 + (v - cv) ** 2 <= r * r

    body = ellipse(0.50, 0.95, 0.32, 0.22)
    paint(body, yellow)
    paint(body & ((v - 0.74).abs() < 0.025), blue)
    for cu in (0.25, 0.75):
        paint(disc(cu, 0.20, 0.10), black)
        paint(disc(cu, 0.20, 0.075), white)
    paint(ellipse(0.50, 0.45, 0.38, 0.28), black)
    paint(ellipse(0.50, 0.45, 0.355, 0.255), white)
    paint(ellipse(0.36, 0.47, 0.035, 0.05), black)
    paint(ellipse(0.64, 0.47, 0.035, 0.05), black)
    paint(ellipse(0.50, 0.55, 0.04, 0.028), yellow)
    span = ((u >= 0.14) & (u <= 0.28)) | ((u >= 0.72) & (u <= 0.86))
    for k in (-1, 0, 1):
        paint(span & ((v - (0.53 + 0.04 * k)).abs() < 0.008), black)
    for cu, cv in ((0.70, 0.20), (0.84, 0.26)):
        paint(disc(cu, cv, 0.07), black)
        paint(disc(cu, cv, 0.055), red)
    paint(disc(0.77, 0.23, 0.035), yellow)
    img = palette[label.long()].permute(2, 0, 1).unsqueeze(0)
    return (F.avg_pool2d(img, supersample) if supersample > 1 else img).squeeze(0)


def _render_kitty(h: int, w: int, supersample: int = 4) -> torch.Tensor:
    """The ``kitty`` cartoon at (h, w): painted at ``supersample``x, then box-averaged (cached)."""
    return _render_kitty_cached(int(h), int(w), int(supersample)).clone()


def _full_kitty(size, seed):
    return _render_kitty(*size)


def _full_noise(size, seed):
    g = torch.Generator().manual_seed(int(seed))
    return torch.rand(3, *size, generator=g)


# -- the catalogue ------------------------------------------------------------------------------------
CanvasFn = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
PATCH_TRIGGERS: dict[str, CanvasFn] = {
    "grid3": _canvas_grid3,
    "white3": _canvas_white3,
    "grid4": _canvas_grid4,
    "grid4_dup": _canvas_grid4_dup,
    "lc_corners": _canvas_lc_corners,
    "trojan_square": _canvas_trojan_square,
    "phoenix5": _canvas_phoenix5,
    "phoenix5x2": _canvas_phoenix5x2,
    "firefox_badge": _canvas_firefox_badge,
    **{f"firefox_split_{q}": _canvas_firefox_split(q) for q in (1, 2, 3, 4)},
}
FULL_TRIGGERS: dict[str, Callable[[tuple[int, int], int], torch.Tensor]] = {
    "kitty": _full_kitty,
    "noise": _full_noise,
}
TRIGGER_NAMES = sorted([*PATCH_TRIGGERS, *FULL_TRIGGERS])


def trigger_kind(name: str) -> str | None:
    """``patch`` or ``full`` for a catalogue name, None for anything else."""
    if name in PATCH_TRIGGERS:
        return "patch"
    if name in FULL_TRIGGERS:
        return "full"
    return None


def canvas(name: str, seed: int = DEFAULT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """The 32x32 canvas ``(pattern, mask)`` of a patch trigger."""
    if name not in PATCH_TRIGGERS:
        raise TriggerError(f"'{name}' is not a 32-px patch trigger; known: {', '.join(sorted(PATCH_TRIGGERS))}")
    return PATCH_TRIGGERS[name](seed)


def procedural(name: str, height: int, width: int | None = None,
               seed: int = DEFAULT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """A catalogue trigger at (height, width): ``(pattern (3,H,W), mask (1,H,W))``."""
    width = height if width is None else width
    size = (int(height), int(width))
    if name in PATCH_TRIGGERS:
        p, m = PATCH_TRIGGERS[name](seed)
        return resize_nearest(p, size), resize_nearest(m, size)
    if name in FULL_TRIGGERS:
        return FULL_TRIGGERS[name](size, seed), torch.ones(1, *size)
    raise TriggerError(f"unknown trigger '{name}'. Known triggers: {', '.join(TRIGGER_NAMES)}; "
                       f"or give the path of an image file")


def lc_corners(height: int = CANVAS, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The label-consistent four-corner 3x3 grids (0/1 pattern, mask) at (height, width)."""
    return procedural("lc_corners", height, width)


# -- user files ---------------------------------------------------------------------------------------
def looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.lower().endswith(IMAGE_EXTENSIONS)


def _read_rgb(path: str, what: str) -> torch.Tensor:
    if not os.path.exists(path):
        raise TriggerFileError(f"{what} file not found: {path}")
    if not os.path.isfile(path):
        raise TriggerFileError(f"{what} path is not a file: {path}")
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
            import numpy as np

            arr = np.asarray(rgb, dtype=np.uint8).copy()
    except Exception as exc:  # PIL raises several types for corrupt files
        raise TriggerFileError(f"cannot read {what} image {path}: {type(exc).__name__}: {exc}") from exc
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


def load_trigger_file(path: str, size: tuple[int, int], kind: str = "patch",
                      mask_path: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a user trigger image (and optional mask) and fit it to ``size`` = (H, W)."""
    h, w = int(size[0]), int(size[1])
    pat = _read_rgb(path, "trigger")
    ph, pw = pat.shape[-2:]
    if kind == "patch" and abs(pw / ph - w / h) > 0.02:
        raise TriggerFileError(
            f"trigger file {path} is {pw}x{ph} (WxH) but the images are {w}x{h}: a patch trigger "
            f"canvas must have the images' aspect ratio (e.g. 32x32 or {w}x{h})")
    if mask_path:
        mask = _read_rgb(mask_path, "trigger mask")[:1]
        if tuple(mask.shape[-2:]) != (ph, pw):
            raise TriggerFileError(f"trigger mask {mask_path} is {mask.shape[-1]}x{mask.shape[-2]} but its "
                                   f"trigger {path} is {pw}x{ph}; they must have the same size")
    elif kind == "patch":
        mask = (pat > 0).any(0, keepdim=True).float()
    else:
        mask = torch.ones(1, ph, pw)
    if kind == "patch":
        pat, mask = resize_nearest(pat, (h, w)), resize_nearest(mask, (h, w))
        if mask.sum() == 0:
            raise TriggerFileError(f"trigger file {path} has an empty mask at {w}x{h}: no pixel would be written")
    else:
        pat = resize_bilinear(pat, (h, w))
        mask = resize_bilinear(mask, (h, w)) if mask_path else torch.ones(1, h, w)
    return pat, mask


def build_trigger(spec: str, size: tuple[int, int], *, kind: str = "patch", mask_path: str | None = None,
                  seed: int = DEFAULT_SEED) -> Trigger:
    """A catalogue trigger (by name) or a user image (by path) at ``size`` = (H, W).

    ``kind`` tells how a user file is fitted (``patch``: nearest canvas, mask from the file;
    ``full``: bilinear, all-ones mask); catalogue names carry their own kind.
    """
    if not isinstance(spec, str) or not spec:
        raise TriggerError(f"a trigger must be a catalogue name or a file path, got {spec!r}")
    own = trigger_kind(spec)
    if own is not None:
        if mask_path:
            raise TriggerError(f"a mask file ({mask_path}) only applies to a trigger image file, "
                               f"not to the procedural trigger '{spec}'")
        p, m = procedural(spec, size[0], size[1], seed)
        return Trigger(spec, p, m, own)
    if not looks_like_path(spec) and not os.path.exists(spec):
        raise TriggerError(f"unknown trigger '{spec}'. Known triggers: {', '.join(TRIGGER_NAMES)}; "
                           f"or give the path of an image file")
    p, m = load_trigger_file(spec, size, kind, mask_path)
    return Trigger(f"file:{os.path.basename(spec)}", p, m, kind)


def trigger_label(spec: str, seed: int = DEFAULT_SEED) -> str:
    """The name recorded in results: the catalogue name (with its seed for random ones) or file:NAME."""
    if spec in ("trojan_square", "phoenix5", "phoenix5x2", "noise") and seed != DEFAULT_SEED:
        return f"{spec}(seed={seed})"
    if trigger_kind(spec) is not None:
        return spec
    return f"file:{os.path.basename(str(spec))}"


def piece_masks(n: int, height: int, width: int, pieces: int, masked: int,
                generator: torch.Generator) -> torch.Tensor:
    """``n`` random piece masks (n, 1, H, W): a g x g grid (g = sqrt(pieces)) with ``masked``
    blocks set to 0 per sample, drawn uniformly without replacement (Adaptive-Blend)."""
    g = math.isqrt(pieces)
    keep = torch.ones(n, pieces)
    if masked > 0:
        hidden = torch.rand(n, pieces, generator=generator).argsort(dim=1)[:, :masked]
        keep.scatter_(1, hidden, 0.0)
    keep = keep.view(n, 1, g, g)
    return keep.repeat_interleave(height // g, 2).repeat_interleave(width // g, 3)
