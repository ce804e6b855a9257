"""Small data sets in the real on-disk formats, written by the tests themselves.

Every image is unique (its index is written into its first pixels), so tests can also check by
content that no image lands in two splits.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def unique_image(index: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """A random uint8 image whose first pixels spell ``index`` (so no two are alike)."""
    image = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    image[0, 0, 0], image[0, 1, 0] = index // 256, index % 256
    return image


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- CIFAR-10 python format
def write_cifar_python(folder: Path, per_class_batch: int = 2, per_class_test: int = 3) -> Path:
    """``folder/cifar-10-batches-py`` with 5 training batches of ``per_class_batch`` images per
    class and a test batch of ``per_class_test`` per class, pickled as the official files are."""
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    index = 0

    def batch(label: str, per_class: int) -> dict:
        nonlocal index
        labels = [c for c in range(10) for _ in range(per_class)]
        rng.shuffle(labels)
        images = []
        for _ in labels:
            images.append(unique_image(index, 32, 3, rng).transpose(2, 0, 1).reshape(-1))
            index += 1
        return {
            b"batch_label": label.encode(),
            b"labels": [int(x) for x in labels],
            b"data": np.stack(images),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
        }

    for i in range(1, 6):
        with open(batches / f"data_batch_{i}", "wb") as handle:
            pickle.dump(batch(f"training batch {i} of 5", per_class_batch), handle, protocol=2)
    with open(batches / "test_batch", "wb") as handle:
        pickle.dump(batch("testing batch 1 of 1", per_class_test), handle, protocol=2)
    with open(batches / "batches.meta", "wb") as handle:
        meta = {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}
        pickle.dump(meta, handle, protocol=2)
    return batches


def tar_gz(source: Path, archive: Path, arcname: str | None = None) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=arcname or source.name)
    return archive


# --------------------------------------------------------------------------- idx (MNIST)
def write_idx(path: Path, array: np.ndarray) -> Path:
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.tobytes()
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as handle:
            handle.write(raw)
    else:
        path.write_bytes(raw)
    return path


def write_mnist(folder: Path, per_class_train: int = 5, per_class_test: int = 2, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    suffix = ".gz" if gz else ""
    offset = 0
    for part, per_class in (("train", per_class_train), ("t10k", per_class_test)):
        labels = np.repeat(np.arange(10), per_class)
        images = np.stack([unique_image(offset + i, 28, 1, rng)[:, :, 0] for i in range(len(labels))])
        offset += len(labels)
        write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", labels)
    return folder


# --------------------------------------------------------------------------- image folders
def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(path)


def write_class_folders(
    root: Path, counts: dict[str, dict[str, int]], size: int = 20, channels: int = 3
) -> Path:
    """``root/<part>/<class>/NNN.png`` with ``counts[part][class]`` images each; ``part`` ''
    writes ``root/<class>/`` directly."""
    rng = np.random.default_rng(2)
    index = 0
    for part, classes in counts.items():
        for name, n in classes.items():
            for i in range(n):
                write_png(root / part / name / f"{i:03d}.png", unique_image(index, size, channels, rng))
                index += 1
    return root


def write_mvtec(
    category: Path, n_train: int = 12, n_good: int = 4, defects=("crack", "hole"), n_defect: int = 3
):
    """An MVTec AD category: abnormal images carry a bright square that their mask marks."""
    rng = np.random.default_rng(3)
    size = 32
    index = 0

    def normal() -> np.ndarray:
        nonlocal index
        image = (unique_image(index, size, 3, rng) // 4 + 64).astype(np.uint8)
        index += 1
        return image

    for i in range(n_train):
        write_png(category / "train" / "good" / f"{i:03d}.png", normal())
    for i in range(n_good):
        write_png(category / "test" / "good" / f"{i:03d}.png", normal())
    for defect in defects:
        for i in range(n_defect):
            image = normal()
            mask = np.zeros((size, size), np.uint8)
            y, x = rng.integers(2, size - 12, 2)
            image[y : y + 10, x : x + 10] = 255
            mask[y : y + 10, x : x + 10] = 255
            write_png(category / "test" / defect / f"{i:03d}.png", image)
            write_png(category / "ground_truth" / defect / f"{i:03d}_mask.png", mask[:, :, None])
    return category


# --------------------------------------------------------------------------- a local web server
class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: D102
        pass


class LocalServer:
    """Serves a folder over http://127.0.0.1 for download tests (no outside network needed)."""

    def __init__(self, folder: Path):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder)))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __enter__(self) -> LocalServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
