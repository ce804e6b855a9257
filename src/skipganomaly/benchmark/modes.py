"""The benchmark's settings, its synthetic images and its two modes: ``PlainMode`` (the official
code's procedure) and ``OptimisedMode`` (what ``skipganomaly train`` and ``predict`` run)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..data.base import ImageSet, Splits
from ..data.corruptions import corrupt
from ..data.loading import to_model_input
from ..models.blocks import set_dense_fast_path
from ..models.objective import LossWeights, discriminator_loss, generator_adversarial_loss
from ..scoring.engine import ScoringOptions, score_set
from ..specs.config import build_config
from ..training.trainer import RunLog, Trainer

# The families the restoring preset trains with (specs/models.py).
BENCHMARK_CORRUPTIONS = ("blend", "cutpaste", "intensity")


@dataclass
class BenchmarkSettings:
    sizes: list[int] = field(default_factory=lambda: [32, 128])
    batch_size: int = 64
    score_batch_size: int = 256
    steps: int = 3  # training steps per timed round
    score_images: int = 512  # images scored per timed round
    repeats: int = 5
    warmup: int = 1
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    threads: int | str = 0  # train.threads of the optimised mode: 0, N or "auto"
    channels: int = 3
    ngf: int = 64
    ndf: int = 64
    nz: int = 100
    memory: bool = True
    modes: tuple[str, ...] = ("plain", "optimised")
    busy: int = 0  # busy processes beside the measurement
    busy_kind: str = "spin"  # "spin" (one core at 100%) or "train" (a 1-thread training)


# --------------------------------------------------------------------------- data
def synthetic_images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 images (N, H, W, C): upsampled 4x4 noise, like blurry photographs."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (smooth * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy().copy()


def synthetic_splits(n_train: int, n_test: int, size: int, channels: int) -> Splits:
    train = ImageSet(
        class_ids=np.zeros(n_train, np.int64),
        images=synthetic_images(n_train, size, channels, seed=0),
        labels=np.zeros(n_train, np.int64),
    )
    labels = (np.arange(n_test) % 2).astype(np.int64)
    test = ImageSet(class_ids=labels, images=synthetic_images(n_test, size, channels, seed=1), labels=labels)
    return Splits(train=train, val=test, test=test, protocol="val-split", channels=channels)


class PerItemImages(Dataset):
    """The straightforward input pipeline: each item converted to a float tensor in [-1, 1] when
    drawn (what torchvision's ToTensor + Normalize((0.5,), (0.5,)) do per image)."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1).float().div(255.0)
        return (image - 0.5) / 0.5, 0


# --------------------------------------------------------------------------- plain mode
class PlainMode:
    """The official code's procedure on these networks (see the package docstring,
    ``skipganomaly.benchmark``)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, batch_size: int, lr: float = 2e-4):
        self.model = set_dense_fast_path(copy.deepcopy(model), False).to(device)
        self.device = device
        self.batch_size = batch_size
        self.opt_g = torch.optim.Adam(self.model.generator.parameters(), lr=lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.model.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
        self.weights = LossWeights()

    def train_step(self, x: torch.Tensor) -> float:
        g, d, w = self.model.generator, self.model.discriminator, self.weights
        fake = g(x)
        logit_real, features_real = d(x)
        logit_fake, features_fake = d(fake)
        self.opt_g.zero_grad()
        loss_g = (
            w.adversarial * generator_adversarial_loss(logit_fake)
            + w.contextual * (fake - x).abs().mean()
            + w.latent * (features_fake - features_real).pow(2).mean()
        )
        loss_g.backward(retain_graph=True)
        self.opt_g.step()
        self.opt_d.zero_grad()
        logit_fake_again, _ = d(fake.detach())
        loss_d = discriminator_loss(logit_real, logit_fake_again)
        loss_d.backward()
        self.opt_d.step()
        return loss_d.item()

    def train_epoch(self, images: np.ndarray) -> None:
        self.model.train()
        loader = DataLoader(PerItemImages(images), batch_size=self.batch_size, shuffle=True, drop_last=True)
        for x, _ in loader:
            self.train_step(x.to(self.device))

    def score(self, images: np.ndarray) -> np.ndarray:
        self.model.eval()
        scores = []
        with torch.no_grad():
            for x, _ in DataLoader(PerItemImages(images), batch_size=64):
                x = x.to(self.device)
                fake = self.model.generator(x)
                _, features_real = self.model.discriminator(x)
                _, features_fake = self.model.discriminator(fake)
                rec = (x - fake).abs().flatten(1).mean(1)
                lat = (features_real - features_fake).pow(2).flatten(1).mean(1)
                scores.append((0.9 * rec + 0.1 * lat).cpu().numpy())
        return np.concatenate(scores)


# --------------------------------------------------------------------------- optimised mode
class OptimisedMode:
    """The package's own training epoch and scoring, configured as ``skipganomaly train`` is."""

    def __init__(self, settings: BenchmarkSettings, size: int, splits: Splits, run_dir: str):
        config = build_config(
            {
                "data.image_size": size,
                "data.batch_size": settings.batch_size,
                "data.eval_batch_size": settings.score_batch_size,
                "model.ngf": settings.ngf,
                "model.ndf": settings.ndf,
                "model.nz": settings.nz,
                "train.device": settings.device,
                "train.precision": settings.precision,
                "train.channels_last": settings.channels_last,
                "train.threads": settings.threads,
                "train.log_every": 10**9,
            }
        )
        self.trainer = Trainer(config, splits, run_dir, log=lambda message: None, progress=False)
        self.splits = splits
        self.settings = settings
        self.epoch = 0

    def corrupt_batches(self) -> None:
        """Corrupt each training batch as the restoring preset does (three families, half of each
        batch), without training: the cost ``train.corruptions`` adds to a step."""
        trainer = self.trainer
        images = self.splits.train.images
        bs = self.settings.batch_size
        for start in range(0, len(images) // bs * bs, bs):
            batch = torch.from_numpy(images[start : start + bs]).permute(0, 3, 1, 2)
            x = to_model_input(batch, trainer.device, self.settings.channels_last)
            corrupt(x, BENCHMARK_CORRUPTIONS, 0.5)

    def train_epoch(self) -> None:
        self.trainer.train_epoch(self.epoch, RunLog(None))
        self.epoch += 1

    def score(self) -> np.ndarray:
        t = self.trainer
        if t.device.type == "cpu":
            t.thread_chooser.apply()
        options = ScoringOptions.for_run(t.config, t.channels, t.device, t.amp_dtype)
        return score_set(t.model, self.splits.test, options).score
