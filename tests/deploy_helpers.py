"""Helpers of the deployment tests: a tiny digits run, and the service run in a thread on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from conftest import tiny_config
from PIL import Image

from skipganomaly.data import prepare_data
from skipganomaly.training.trainer import Trainer


def train_digits_run(run_dir: Path) -> Path:
    """A tiny run on the embedded digits (16 px, digit 0 abnormal, 2 epochs, fp32): seconds."""
    config = tiny_config(**{"data.abnormal_class": "0", "train.precision": "fp32", "train.seed": 0})
    splits = prepare_data(config.data)
    Trainer(config, splits, run_dir, log=lambda s: None, progress=False).fit()
    return run_dir


def split_images(run_dir: Path, split: str = "test"):
    """A split's images (uint8 N x 16 x 16 x 1) and labels, read as the run read them."""
    from skipganomaly.formats.checkpoint import load_run_checkpoint

    config = load_run_checkpoint(run_dir).config
    image_set = getattr(prepare_data(config.data), split)
    return np.ascontiguousarray(image_set.images), image_set.labels


def write_pngs(folder: Path, images: np.ndarray, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{stem}_{i}.png"
        Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(path)
        paths.append(path)
    return paths


@contextmanager
def running_service(detector, limits=None):
    """The service on 127.0.0.1 and a free port, in a thread; stopped on exit. Yields its URL."""
    import uvicorn

    from skipganomaly.service import create_app

    app = create_app(detector, limits)
    sock = socket.socket(
        socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
    )  # so asyncio sets TCP_NODELAY
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the service did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
