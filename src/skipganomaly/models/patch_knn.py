"""The ``patch`` score term and map: how far each small region of an image lies, in the
discriminator's own mid-level features, from every region of the normal training images.

The skips let G reconstruct a defect as faithfully as the normal image around it, so |x - G(x)|
mostly lights edges (docs/diagnosis.md). D, the paper's feature extractor (Eq. 3), sees the same
image at every scale on the way to f(x); its intermediate maps describe each region of the image
by its neighbourhood. A region unlike any region of any normal image is an anomaly there, wherever
it lies in the image: the nearest-neighbour idea of PatchCore (Roth et al., CVPR 2022), with D's
features in place of an ImageNet network (nothing here is pretrained).

* :func:`patch_features`: D's features after its second and third convolution blocks (1/4 and
  1/8 of the image side), each averaged over its 3x3 neighbourhood, the coarser one upsampled to
  the finer, stacked: (N, C, H/4, W/4).
* :func:`nearest_patch_distance`: each position's distance to its nearest row of the bank (the
  normal training images' patch features, a model buffer the trainer fills).
* The term is the map's highest value; the map, upsampled to the image, is one of the anomaly
  maps validation chooses among.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The distances are computed against this many bank rows at a time, keeping a running minimum,
# so that memory stays bounded for a large bank and a large batch (a static loop: the export
# traces it, as the bank's size is fixed in the model).
BANK_CHUNK = 1024
# The convolution blocks of D's trunk whose outputs describe a region (1-based, the first block
# being the stride-2 convolution on the image), as PatchCore takes a backbone's middle layers.
PATCH_BLOCKS = (2, 3)


def patch_grid_size(image_size: int) -> int:
    """The side of the region grid :func:`patch_features` gives: 1/4 of the image's (block 2's)."""
    return image_size // 4


def patch_feature_width(image_size: int, ndf: int) -> int:
    """The channels of :func:`patch_features` for a discriminator of width ``ndf`` on images of
    ``image_size`` (its trunk has log2(size / 4) blocks: a 16-pixel image has no third)."""
    blocks = round(math.log2(image_size)) - 2
    return sum(ndf * 2 ** (block - 1) for block in PATCH_BLOCKS if block <= blocks)


def patch_features(trunk: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """D's region features of ``x``: (N, C, H/4, W/4); ``trunk`` is D's convolutional layers
    (each block ends in a LeakyReLU; the last layer, the 4x4 convolution to f(x), is not run)."""
    taken, block, h = [], 0, x
    for layer in trunk:
        h = layer(h)
        if isinstance(layer, nn.LeakyReLU):
            block += 1
            if block in PATCH_BLOCKS:
                taken.append(F.avg_pool2d(h, 3, stride=1, padding=1, count_include_pad=False))
            if block == max(PATCH_BLOCKS):
                break
    size = taken[0].shape[-2:]
    return torch.cat(
        [taken[0]] + [F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in taken[1:]],
        dim=1,
    )


def nearest_patch_distance(features: torch.Tensor, bank: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """The Euclidean distance from each position of ``features`` (N, C, h, w) to its nearest row
    of the bank: (N, h, w). ``bank`` (B, C) holds the normal rows less ``centre``, their mean.

    The features are measured from the same centre, which keeps the expanded
    ||a||^2 + ||b||^2 - 2 a.b from cancelling to noise in float32."""
    n, c, h, w = features.shape
    a = features.permute(0, 2, 3, 1).reshape(-1, c).float() - centre
    # min_j ||a - b_j||^2 = ||a||^2 + min_j (||b_j||^2 - 2 a.b_j): one fused matrix product per
    # chunk, and the query's own norm added once after the minimum.
    best = None
    for start in range(0, bank.shape[0], BANK_CHUNK):
        b = bank[start : start + BANK_CHUNK]
        chunk_min = torch.addmm((b * b).sum(1), a, b.T, alpha=-2.0).amin(1)
        best = chunk_min if best is None else torch.minimum(best, chunk_min)
    return (best + (a * a).sum(1)).clamp_min(0.0).sqrt().reshape(n, h, w)


def patch_map(distances: torch.Tensor, image_size: int) -> torch.Tensor:
    """The patch distances (N, h, w) as a map of the image (N, H, W), bilinearly upsampled."""
    return F.interpolate(distances[:, None], size=image_size, mode="bilinear", align_corners=False)[:, 0]


def bank_positions(total: int, rows: int, seed: int) -> torch.Tensor:
    """Which of ``total`` region positions (flat over the images, image-major) fill a bank of
    ``rows``: drawn without replacement from ``seed``; all of them, repeated to ``rows``, when
    there are fewer (a tiny training set; the buffer keeps its shape)."""
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    if total < rows:
        order = order.repeat((rows + total - 1) // total)
    return order[:rows]


def sample_bank(features: torch.Tensor, rows: int, seed: int) -> torch.Tensor:
    """``rows`` region features of ``features`` (N, C, h, w) at :func:`bank_positions`: (rows, C)."""
    flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    return flat[bank_positions(flat.shape[0], rows, seed).to(flat.device)]
