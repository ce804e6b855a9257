"""Synthetic anomalies made on the fly: one function per family of
:mod:`skipganomaly.specs.corruptions` (where each family's facts live), each damaging images in a
region and returning the region's pixel mask.

Images are model inputs, float in [-1, 1], (N, C, H, W), on any device. Every draw comes from
``generator`` (a :class:`torch.Generator` on the images' device) or, when it is None, from
PyTorch's global stream, which a resumed run restores: training corrupts from the global stream,
the synthetic validation set from its own seeded generator, so it is the same set every epoch
and every run with the same seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..specs.corruptions import CORRUPTIONS

# A blob covers between these shares of the image (drawn per image).
BLOB_COVERAGE = (0.02, 0.20)


def _rand(shape, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=x.device, dtype=torch.float32)


def smooth_blobs(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    coverage_range: tuple[float, float] = BLOB_COVERAGE,
) -> torch.Tensor:
    """A binary mask (N, 1, H, W) per image: low-resolution noise upsampled smoothly (a one-octave
    Perlin-like field) and cut at the quantile that gives a coverage drawn from
    ``coverage_range``, so every mask is one or a few smooth blobs and never empty."""
    n, _, h, w = x.shape
    masks = torch.empty(n, 1, h, w, device=x.device)
    for cells in (4, 8):  # coarse and finer blobs, half the images each
        chosen = torch.arange(n, device=x.device) % 2 == (cells == 8)
        k = int(chosen.sum())
        if k == 0:
            continue
        grid = (max(2, h // cells), max(2, w // cells))
        field = F.interpolate(
            _rand((k, 1, *grid), x, generator), size=(h, w), mode="bicubic", align_corners=False
        )
        low, high = coverage_range
        coverage = low + (high - low) * _rand((k,), x, generator)
        flat = field.flatten(1)
        cut = flat.sort(dim=1, descending=True).values
        index = (coverage * flat.shape[1]).long().clamp(1, flat.shape[1]) - 1
        threshold = cut.gather(1, index[:, None])
        masks[chosen] = (flat >= threshold).float().view(k, 1, h, w)
    return masks


def blend(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """DRAEM's anomaly: inside a blob, another image of the batch (turned by a quarter turn, so an
    image never fills its own hole), blended over the original at an opacity of 0.2 to 1."""
    mask = smooth_blobs(x, generator)
    source = x.roll(1, dims=0).transpose(2, 3).flip(3) if x.shape[2] == x.shape[3] else x.roll(1, dims=0)
    if x.shape[0] == 1:  # no other image: a mirrored, inverted copy is foreign enough
        source = -x.flip(2).flip(3)
    opacity = (0.2 + 0.8 * _rand((x.shape[0], 1, 1, 1), x, generator)) * mask
    return x * (1 - opacity) + source * opacity, mask


def _box(n: int, size: int, low: float, high: float, x, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, a length in pixels between ``low`` and ``high`` of ``size`` (at least 1) and a
    start that keeps it inside."""
    length = (size * (low + (high - low) * _rand((n,), x, generator))).long().clamp(1, size)
    start = (_rand((n,), x, generator) * (size - length + 1).float()).long()
    return length, start


def cutpaste(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste: a rectangle (half the images) or a thin scar (the others) cut from the image
    itself, brightened or darkened a little, and pasted at another place."""
    n, _, h, w = x.shape
    scar = torch.arange(n, device=x.device) % 2 == 1
    hh, top = _box(n, h, 0.15, 0.45, x, generator)
    ww, left = _box(n, w, 0.15, 0.45, x, generator)
    thin = torch.clamp(torch.tensor(max(1, h // 16), device=x.device), max=h)
    vertical = _rand((n,), x, generator) < 0.5
    hh = torch.where(scar & ~vertical, thin.expand(n), hh)
    ww = torch.where(scar & vertical, thin.expand(n), ww)
    # The scars are long: redraw their length along the image.
    long_h, _ = _box(n, h, 0.3, 0.6, x, generator)
    long_w, _ = _box(n, w, 0.3, 0.6, x, generator)
    hh = torch.where(scar & vertical, long_h, hh)
    ww = torch.where(scar & ~vertical, long_w, ww)
    top_to = (_rand((n,), x, generator) * (h - hh + 1).float()).long()
    left_to = (_rand((n,), x, generator) * (w - ww + 1).float()).long()
    top = torch.minimum(top, h - hh)
    left = torch.minimum(left, w - ww)
    shift = 0.3 * (2 * _rand((n,), x, generator) - 1)
    out, mask = x.clone(), torch.zeros(n, 1, h, w, device=x.device)
    for i, (a, b, c, d, e, f) in enumerate(
        zip(
            hh.tolist(),
            ww.tolist(),
            top.tolist(),
            left.tolist(),
            top_to.tolist(),
            left_to.tolist(),
            strict=True,
        )
    ):
        patch = x[i, :, c : c + a, d : d + b]
        out[i, :, e : e + a, f : f + b] = (patch + shift[i]).clamp(-1, 1)
        mask[i, :, e : e + a, f : f + b] = 1.0
    # Where the pasted pixels equal what was there (a flat region), nothing is anomalous.
    changed = ((out - x).abs().amax(1, keepdim=True) > 1e-3).float()
    return out, mask * changed


def intensity(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inside a blob, the brightness shifted by 0.25 to 0.6 (either way) and the contrast scaled
    by 0.4 to 1.6; in a third of the images the blob is blurred (5x5 box) instead."""
    n = x.shape[0]
    mask = smooth_blobs(x, generator)
    sign = torch.where(_rand((n, 1, 1, 1), x, generator) < 0.5, -1.0, 1.0)
    shift = sign * (0.25 + 0.35 * _rand((n, 1, 1, 1), x, generator))
    contrast = 0.4 + 1.2 * _rand((n, 1, 1, 1), x, generator)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    changed = ((x - mean) * contrast + mean + shift).clamp(-1, 1)
    blurred = F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    blur = (torch.arange(n, device=x.device) % 3 == 2).view(n, 1, 1, 1)
    changed = torch.where(blur, blurred, changed)
    out = x * (1 - mask) + changed * mask
    return out, mask * ((out - x).abs().amax(1, keepdim=True) > 1e-3).float()


def stain(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inside a small blob (0.5% to 8% of the image), one random colour with fine noise, at an
    opacity of 0.3 to 1: a stain, a hole, a foreign body, from faint to plain. Smaller and fainter
    than the training families, so that the synthetic validation does not saturate at 1."""
    n, c = x.shape[:2]
    mask = smooth_blobs(x, generator, (0.005, 0.08))
    colour = 2 * _rand((n, c, 1, 1), x, generator) - 1
    grain = 0.1 * (2 * _rand(x.shape, x, generator) - 1)
    opacity = (0.3 + 0.7 * _rand((n, 1, 1, 1), x, generator)) * mask
    out = x * (1 - opacity) + (colour + grain).clamp(-1, 1) * opacity
    return out, mask * ((out - x).abs().amax(1, keepdim=True) > 1e-3).float()


def shuffle(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The four quadrants of each image moved around by one of the 23 orders that move at least
    one (drawn per image); the whole image is the anomaly (its mask is all ones)."""
    n, _, h, w = x.shape
    hh, ww = h // 2, w // 2
    quadrants = torch.stack(
        [x[:, :, :hh, :ww], x[:, :, :hh, ww:], x[:, :, hh:, :ww], x[:, :, hh:, ww:]], 1
    )  # (N, 4, C, h/2, w/2)
    orders = torch.tensor([p for p in itertools.permutations(range(4)) if p != (0, 1, 2, 3)], device=x.device)
    pick = orders[(_rand((n,), x, generator) * len(orders)).long().clamp(max=len(orders) - 1)]
    moved = quadrants[torch.arange(n, device=x.device)[:, None], pick]
    top = torch.cat([moved[:, 0], moved[:, 1]], 3)
    bottom = torch.cat([moved[:, 2], moved[:, 3]], 3)
    return torch.cat([top, bottom], 2), torch.ones(n, 1, h, w, device=x.device)


def chimera(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One side of a straight cut (at 35% to 65% of the image, across rows or columns) taken
    from another image of the batch: each side is normal, the whole is two things at once (a
    semantic anomaly made of normal parts). The mask is the pasted side where it changed."""
    n, _, h, w = x.shape
    # Half the batch away, so that the damaged copies of one image, which sit side by side in
    # the synthetic validation's batches, do not paste into each other.
    source = x.roll(max(1, n // 2), dims=0) if n > 1 else x.flip(2).flip(3)
    across_columns = (_rand((n, 1, 1, 1), x, generator) < 0.5).float()
    cut = 0.35 + 0.3 * _rand((n, 1, 1, 1), x, generator)
    first_side = _rand((n, 1, 1, 1), x, generator) < 0.5
    rows = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5).view(1, 1, h, 1) / h
    columns = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5).view(1, 1, 1, w) / w
    position = across_columns * columns + (1 - across_columns) * rows
    mask = ((position < cut) == first_side).float()
    out = x * (1 - mask) + source * mask
    return out, mask * ((out - x).abs().amax(1, keepdim=True) > 1e-3).float()


CORRUPTION_FUNCTIONS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "blend": blend,
    "cutpaste": cutpaste,
    "intensity": intensity,
    "stain": stain,
    "shuffle": shuffle,
    "chimera": chimera,
}
if tuple(CORRUPTION_FUNCTIONS) != CORRUPTIONS:  # one function per spec, in the specs' order
    raise ImportError(f"corruptions {tuple(CORRUPTION_FUNCTIONS)} differ from the specs {CORRUPTIONS}")


def corrupt(
    x: torch.Tensor,
    families: tuple[str, ...],
    fraction: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x~, mask)``: each image of ``x`` corrupted with probability ``fraction`` by one of
    ``families`` drawn uniformly, and its anomaly mask (N, 1, H, W) in {0, 1} (all zeros for the
    images left clean). ``x`` itself is not changed."""
    n = x.shape[0]
    chosen = _rand((n,), x, generator) < fraction
    family = (_rand((n,), x, generator) * len(families)).long().clamp(max=len(families) - 1)
    out, mask = x.clone(), torch.zeros(n, 1, *x.shape[2:], device=x.device, dtype=x.dtype)
    for k, name in enumerate(families):
        picked = (chosen & (family == k)).nonzero().flatten()
        if len(picked) == 0:
            continue
        damaged, region = CORRUPTION_FUNCTIONS[name](x[picked], generator)
        out[picked] = damaged.to(x.dtype)
        mask[picked] = region.to(x.dtype)
    return out, mask
