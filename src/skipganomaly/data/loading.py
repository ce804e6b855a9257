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
from .images import DEFAULT_MAX_IMAGE_PIXELS, BadImageError, load_image_and_size


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


@dataclass(frozen=True)
class BadImage:
    """What a worker hands back for a file it could not read: its position and the one-line
    reason. The main process then skips it or raises :class:`BadImageError` with that line (an
    exception raised in a DataLoader worker would arrive with the worker's whole traceback)."""

    index: int
    message: str


class FileImageDataset(Dataset):
    """Decodes image files on demand; a bad file (unreadable, or over ``max_pixels``) yields a
    :class:`BadImage` instead of an image."""

    def __init__(
        self,
        paths: list[str],
        image_size: int,
        channels: int,
        skip_bad: bool = False,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ):
        self.paths = paths
        self.image_size = image_size
        self.channels = channels
        self.skip_bad = skip_bad
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            array, size = load_image_and_size(
                self.paths[index], self.image_size, self.channels, self.max_pixels
            )
        except BadImageError as exc:
            return BadImage(index, str(exc))
        return torch.from_numpy(array).permute(2, 0, 1), index, size


def _collate_skipping_bad(items):
    """One batch of the readable images, and the :class:`BadImage` of the others."""
    good = [item for item in items if not isinstance(item, BadImage)]
    bad = [item for item in items if isinstance(item, BadImage)]
    if not good:
        return None, bad
    images = torch.stack([image for image, _, _ in good])
    indices = torch.tensor([index for _, index, _ in good], dtype=torch.int64)
    sizes = torch.tensor([size for _, _, size in good], dtype=torch.int64)
    return (images, indices, sizes), bad


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator)


class BadImageCounter:
    """Counts the images skipped with ``--skip-bad-images`` while batches are drawn, and keeps
    each one's path and reason (``files``) for the caller to name them."""

    def __init__(self) -> None:
        self.skipped = 0
        self.files: list[tuple[str, str]] = []  # (path, one-line reason)


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
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Iterator[Batch]:
    """Yield batches of ``image_set`` in ``order`` (default: stored order).

    ``device`` is where the batches go next: for a GPU, in-memory images are sliced on the device
    when the set fits there, and file-backed batches arrive in pinned memory (fast, asynchronous
    copies). ``Batch.labels`` and ``Batch.indices`` stay on the CPU. A file that cannot be read
    (or has more than ``max_pixels`` pixels) raises :class:`BadImageError` naming it, in this
    process, or with ``skip_bad`` is left out and recorded in ``counter``."""
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
    dataset = FileImageDataset(image_set.paths, image_size, channels, skip_bad, max_pixels)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order[:stop].tolist(),
        num_workers=workers,
        collate_fn=_collate_skipping_bad,
        persistent_workers=False,
        pin_memory=cuda,
    )
    for item, bad in loader:
        if bad and not skip_bad:
            raise BadImageError(bad[0].message)
        if counter is not None:
            counter.skipped += len(bad)
            counter.files.extend((image_set.paths[b.index], b.message) for b in bad)
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
    """uint8 (N, C, H, W) in [0, 255] -> float32 in [-1, 1] on ``device``. A float32 input in
    [0, 255] is scaled the same way, into a new tensor: the caller's is never changed."""
    x = images.to(device, non_blocking=True).float()
    if x.data_ptr() == images.data_ptr():
        # .float() of a float32 tensor is the tensor itself: scaling it in place would change the
        # caller's images (the float32 export's check compared the graph on altered inputs).
        x = x.clone()
    x = x.div_(127.5).sub_(1.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
