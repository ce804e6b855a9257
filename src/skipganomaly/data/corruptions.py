"""Synthetic anomalies made on the fly: one function per family of
:mod:`skipganomaly.specs.corruptions` (where each family's facts live), each damaging images in a
region and returning the region's pixel mask.

Images are model inputs, float in [-1, 1], (N, C, H, W), on any device. Every family takes the
blobs' ``scale`` (:func:`smooth_blobs`); those without blobs (cutpaste, shuffle, chimera) already
scale with the image and ignore it. Every draw comes from
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
# At train.blob_scale=image: the most noise cells across the image for the finer and the
# coarser blobs (a 32 px image's).
BLOB_GRID = (8, 4)
# A warped pixel counts as damaged when it moved this far in value (5% of the range [-1, 1]).
WARP_VISIBLE = 0.1


def _rand(shape, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=x.device, dtype=torch.float32)


def regional_blobs(n: int, scale: str, device=None) -> torch.Tensor:
    """Which of ``n`` images :func:`smooth_blobs` gives a region at ``scale`` (bool, (n,)):
    all at ``"image"``, none at ``"pixels"``, images 2 and 3 of every 4 at ``"both"``."""
    position = torch.arange(n, device=device)
    if scale == "both":
        return (position // 2) % 2 == 1
    return torch.full((n,), scale == "image", device=device)


def smooth_blobs(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    coverage_range: tuple[float, float] = BLOB_COVERAGE,
    scale: str = "pixels",
) -> torch.Tensor:
    """A binary mask (N, 1, H, W) per image: low-resolution noise upsampled smoothly (a one-octave
    Perlin-like field) and cut at the quantile that gives a coverage drawn from
    ``coverage_range``, so every mask is one or a few smooth blobs and never empty.

    ``scale`` (``train.blob_scale``): ``"pixels"``, noise cells of 4 and 8 pixels at every size,
    so at 128 px a "blob" is a spray of specks (fine damage, like a thin crack's); ``"image"``,
    the same up to 32 px and at most :data:`BLOB_GRID` cells across above, so a blob is a share of
    the image at every size (a region, like a broken part's); ``"both"``, half the images at
    each. Which suits which data is measured in docs/normal-only.md."""
    n, _, h, w = x.shape
    masks = torch.empty(n, 1, h, w, device=x.device)
    position, regional_of = torch.arange(n, device=x.device), regional_blobs(n, scale, x.device)
    # Each half split by regional_blobs: one group per half at "pixels" and "image" (as they
    # always drew), two at "both".
    regions = (False, True) if scale == "both" else (scale == "image",)
    for (cells, most), regional in itertools.product(zip((4, 8), BLOB_GRID, strict=True), regions):
        # finer and coarser, half the images each; specks or regions as regional_blobs says
        chosen = (position % 2 == (cells == 8)) & (regional_of == regional)
        k = int(chosen.sum())
        if k == 0:
            continue
        if regional:
            grid = (max(2, min(h // cells, most)), max(2, min(w // cells, most)))
        else:
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


def blend(
    x: torch.Tensor, generator: torch.Generator | None = None, scale: str = "pixels"
) -> tuple[torch.Tensor, torch.Tensor]:
    """DRAEM's anomaly: inside a blob, another image of the batch (turned by a quarter turn, so an
    image never fills its own hole), blended over the original at an opacity of 0.2 to 1."""
    mask = smooth_blobs(x, generator, scale=scale)
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


def cutpaste(
    x: torch.Tensor, generator: torch.Generator | None = None, scale: str = "pixels"
) -> tuple[torch.Tensor, torch.Tensor]:
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


def intensity(
    x: torch.Tensor, generator: torch.Generator | None = None, scale: str = "pixels"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inside a blob, the brightness shifted by 0.25 to 0.6 (either way) and the contrast scaled
    by 0.4 to 1.6; in a third of the images the blob is blurred (5x5 box) instead."""
    n = x.shape[0]
    mask = smooth_blobs(x, generator, scale=scale)
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


def stain(
    x: torch.Tensor, generator: torch.Generator | None = None, scale: str = "pixels"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inside a small blob (0.5% to 8% of the image), one random colour with fine noise, at an
    opacity of 0.3 to 1: a stain, a hole, a foreign body, from faint to plain. Smaller and fainter
    than the training families, so that the synthetic validation does not saturate at 1."""
    n, c = x.shape[:2]
    mask = smooth_blobs(x, generator, (0.005, 0.08), scale)
    colour = 2 * _rand((n, c, 1, 1), x, generator) - 1
    grain = 0.1 * (2 * _rand(x.shape, x, generator) - 1)
    opacity = (0.3 + 0.7 * _rand((n, 1, 1, 1), x, generator)) * mask
    out = x * (1 - opacity) + (colour + grain).clamp(-1, 1) * opacity
    return out, mask * ((out - x).abs().amax(1, keepdim=True) > 1e-3).float()


def shuffle(
    x: torch.Tensor, generator: torch.Generator | None = None, scale: str = "pixels"
) -> tuple[torch.Tensor, torch.Tensor]:
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


def chimera(
    x: torch.Tensor, generator: torch.Generator | None = None, scale: str = "pixels"
) -> tuple[torch.Tensor, torch.Tensor]:
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


def warp(
    x: torch.Tensor, generator: torch.Generator | None = None, scale: str = "pixels"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inside a blob, the image bent: every pixel moved by a smooth random flow of 3% to 8% of the
    side (2 pixels at least) that tapers to nothing at the blob's edge, so nothing is torn.
    Colours and textures stay the image's own, only their shapes change: a dent, a bend, a
    broken line. No training family changes geometry, which is why the synthetic validation can
    use it to ask which map finds damage of a kind nothing was trained on. The mask is the bent
    region near the pixels that changed by more than :data:`WARP_VISIBLE` (a bend across a flat
    region changes nothing). Measured at ``scale="image"``; at ``"pixels"`` above 32 px its
    blobs are specks, and so are its bends."""
    n, _, h, w = x.shape
    blob = smooth_blobs(x, generator, (0.03, 0.15), scale)
    # A soft version of the blob, so the flow fades out over a few pixels at its edge.
    taper = F.avg_pool2d(blob, 2 * max(1, h // 32) + 1, stride=1, padding=max(1, h // 32))
    grid = (max(2, min(h // 8, BLOB_GRID[1])), max(2, min(w // 8, BLOB_GRID[1])))  # a bend, not a ripple
    flow = F.interpolate(
        2 * _rand((n, 2, *grid), x, generator) - 1, size=(h, w), mode="bicubic", align_corners=False
    )
    flow = flow / flow.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    # A share of the side, and at least 2 pixels, so a small image bends visibly too ([-1, 1] spans 2).
    amplitude = 2 * (0.03 + 0.05 * _rand((n, 1, 1, 1), x, generator)).clamp_min(2 / min(h, w))
    ys = torch.linspace(-1, 1, h, device=x.device)
    xs = torch.linspace(-1, 1, w, device=x.device)
    base = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)  # (H, W, 2) as (x, y)
    moved = base + (amplitude * taper * flow).permute(0, 2, 3, 1)
    out = F.grid_sample(x, moved, mode="bilinear", padding_mode="border", align_corners=True)
    visible = ((out - x).abs().amax(1, keepdim=True) > WARP_VISIBLE).float()
    # A real defect's mask covers the damaged region, flat parts included, not only the pixels
    # that changed: where the flow moves pixels, wherever a visible change lies within 1/16 of
    # the side.
    reach = max(1, h // 16)
    near_change = F.max_pool2d(visible, 2 * reach + 1, stride=1, padding=reach)
    return out, (taper > 0).float() * near_change


CORRUPTION_FUNCTIONS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "blend": blend,
    "cutpaste": cutpaste,
    "intensity": intensity,
    "stain": stain,
    "shuffle": shuffle,
    "chimera": chimera,
    "warp": warp,
}
if tuple(CORRUPTION_FUNCTIONS) != CORRUPTIONS:  # one function per spec, in the specs' order
    raise ImportError(f"corruptions {tuple(CORRUPTION_FUNCTIONS)} differ from the specs {CORRUPTIONS}")


def corrupt(
    x: torch.Tensor,
    families: tuple[str, ...],
    fraction: float = 1.0,
    generator: torch.Generator | None = None,
    scale: str = "pixels",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x~, mask)``: each image of ``x`` corrupted with probability ``fraction`` by one of
    ``families`` drawn uniformly, and its anomaly mask (N, 1, H, W) in {0, 1} (all zeros for the
    images left clean), blobs at ``scale`` (:func:`smooth_blobs`). ``x`` itself is not changed."""
    n = x.shape[0]
    chosen = _rand((n,), x, generator) < fraction
    family = (_rand((n,), x, generator) * len(families)).long().clamp(max=len(families) - 1)
    out, mask = x.clone(), torch.zeros(n, 1, *x.shape[2:], device=x.device, dtype=x.dtype)
    for k, name in enumerate(families):
        picked = (chosen & (family == k)).nonzero().flatten()
        if len(picked) == 0:
            continue
        damaged, region = CORRUPTION_FUNCTIONS[name](x[picked], generator, scale)
        out[picked] = damaged.to(x.dtype)
        mask[picked] = region.to(x.dtype)
    return out, mask
