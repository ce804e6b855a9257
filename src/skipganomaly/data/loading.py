"""ImageSet -> batches of uint8 tensors -> model input in [-1, 1].

In-memory sets are sliced straight from one uint8 tensor (no per-image Python work per epoch); on
a GPU that tensor is copied to the device once when it fits, so batches never cross the bus.
File-backed sets are decoded by DataLoader workers as batches are drawn (into pinned memory for a
GPU), so memory stays bounded. Shuffling is seeded per epoch (seed, epoch), so a resumed run draws
the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .base import ImageSet
from .images import BadImageError, load_image_and_size


@dataclass
class Batch:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,), -1 where unknown
    indices: torch.Tensor  # int64 (N,), positions in the ImageSet
    sizes: torch.Tensor | None = None  # int64 (N, 2): each file's own (width, height); files only


# Copy an in-memory set to the GPU when it takes at most this share of the free device memory.
DEVICE_PRELOAD_SHARE = 0.25


def images_tensor(image_set: ImageSet, device: torch.device | str | None = None) -> torch.Tensor:
    """The in-memory images as one uint8 (N, C, H, W) tensor, converted once and cached; with a
    CUDA ``device``, a copy on that device (also cached) when it fits, else the CPU tensor."""
    cached = getattr(image_set, "_tensor", None)
    if cached is None:
        cached = torch.from_numpy(np.ascontiguousarray(image_set.images)).permute(0, 3, 1, 2).contiguous()
        image_set._tensor = cached
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda":
        return cached
    on_device = getattr(image_set, "_device_tensor", None)
    if on_device is not None and on_device.device == device:
        return on_device
    free, _ = torch.cuda.mem_get_info(device)
    if cached.numel() > DEVICE_PRELOAD_SHARE * free:
        return cached
    image_set._device_tensor = cached.to(device)
    return image_set._device_tensor


class FileImageDataset(Dataset):
    """Decodes image files on demand; a bad file raises, or yields None when ``skip_bad``."""

    def __init__(self, paths: list[str], image_size: int, channels: int, skip_bad: bool = False):
        self.paths = paths
        self.image_size = image_size
        self.channels = channels
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            array, size = load_image_and_size(self.paths[index], self.image_size, self.channels)
        except BadImageError:
            if self.skip_bad:
                return None
            raise
        return torch.from_numpy(array).permute(2, 0, 1), index, size


def _collate_skipping_bad(items):
    good = [item for item in items if item is not None]
    skipped = len(items) - len(good)
    if not good:
        return None, skipped
    images = torch.stack([image for image, _, _ in good])
    indices = torch.tensor([index for _, index, _ in good], dtype=torch.int64)
    sizes = torch.tensor([size for _, _, size in good], dtype=torch.int64)
    return (images, indices, sizes), skipped


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator)


class BadImageCounter:
    """Counts images skipped with ``--skip-bad-images`` while batches are drawn."""

    def __init__(self) -> None:
        self.skipped = 0


def iterate_batches(
    image_set: ImageSet,
    batch_size: int,
    *,
    image_size: int,
    channels: int,
    order: torch.Tensor | None = None,
    drop_last: bool = False,
    workers: int = 0,
    skip_bad: bool = False,
    counter: BadImageCounter | None = None,
    device: torch.device | str | None = None,
) -> Iterator[Batch]:
    """Yield batches of ``image_set`` in ``order`` (default: stored order).

    ``device`` is where the batches go next: for a GPU, in-memory images are sliced on the device
    when the set fits there, and file-backed batches arrive in pinned memory (fast, asynchronous
    copies). ``Batch.labels`` and ``Batch.indices`` stay on the CPU."""
    n = len(image_set)
    order = torch.arange(n) if order is None else order
    labels_all = (
        torch.from_numpy(image_set.labels)
        if image_set.labels is not None
        else torch.full((n,), -1, dtype=torch.int64)
    )
    stop = (len(order) // batch_size) * batch_size if drop_last and len(order) >= batch_size else len(order)
    cuda = device is not None and torch.device(device).type == "cuda"
    if image_set.in_memory:
        images = images_tensor(image_set, device)
        order_on_images = order.to(images.device)
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            batch = images[order_on_images[start : start + batch_size]]
            if cuda and not batch.is_cuda:
                batch = batch.pin_memory()
            yield Batch(images=batch, labels=labels_all[index], indices=index)
        return
    dataset = FileImageDataset(image_set.paths, image_size, channels, skip_bad)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order[:stop].tolist(),
        num_workers=workers,
        collate_fn=_collate_skipping_bad,
        persistent_workers=False,
        pin_memory=cuda,
    )
    for item, skipped in loader:
        if counter is not None:
            counter.skipped += skipped
        if item is None:
            continue
        images, index, sizes = item
        yield Batch(images=images, labels=labels_all[index], indices=index, sizes=sizes)


def random_horizontal_flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror each image of a batch left-right with probability 1/2 (``train.augment_flip``), from
    the global torch generator, so a resumed run draws the same flips."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def to_model_input(
    images: torch.Tensor, device: torch.device | str = "cpu", channels_last: bool = False
) -> torch.Tensor:
    """uint8 (N, C, H, W) in [0, 255] -> float32 in [-1, 1] on ``device``."""
    x = images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
