"""Per-run figure data, written once when a run finishes: ``RUN_DIR/examples.npz``.

It holds what the report's image figures need and ``scores.csv`` does not: the discriminator
features f(x) (Eq. 3) of up to 1,000 subsampled test images (Fig. 6; their t-SNE embedding is
computed when a report first shows the run and kept in ``RUN_DIR/tsne.npz``), and, for
the example grids (Fig. 7), inputs, reconstructions and anomaly maps of a few test images per
group: typical normals, typical abnormals, the highest-scored normals and the lowest-scored
abnormals. Written beside the run, so rebuilding a report never retrains or rescores a run.

The images are scored again from the ``best`` checkpoint in eval mode (honest scoring, so their
scores equal those of ``scores.csv`` for every protocol but ``paper``, whose train-mode scores
depend on the batch).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..data.base import Splits
from ..data.loading import iterate_batches
from ..formats.checkpoint import checkpoint_path, load_checkpoint
from ..runtime.device import resolve_device
from ..runtime.files import write_bytes
from ..runtime.precision import resolve_precision
from ..scoring.engine import ScoringOptions, score_set
from ..specs.config import Config

EXAMPLES_FILE = "examples.npz"
TSNE_FILE = "tsne.npz"
TSNE_POINTS = 1000
GRID_PER_GROUP = 6
GROUPS = ("typical normal", "typical abnormal", "highest-scored normal", "lowest-scored abnormal")


def read_test_scores(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Test rows of ``scores.csv``: index into the test set, label, scaled score, raw score.

    The paper protocol validates on the test set itself, so its rows are written once, as ``val``.
    """
    with (Path(run_dir) / "scores.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [r for r in rows if r["split"] == "test"] or [r for r in rows if r["split"] == "val"]
    return {
        "index": np.array([int(r["index"]) for r in chosen], dtype=np.int64),
        "label": np.array([int(r["label"]) for r in chosen], dtype=np.int64),
        "score": np.array([float(r["score"]) for r in chosen], dtype=np.float64),
        "raw_score": np.array([float(r["raw_score"]) for r in chosen], dtype=np.float64),
    }


def choose_grid(
    labels: np.ndarray, scores: np.ndarray, per_group: int, seed: int = 0
) -> list[tuple[str, int]]:
    """(group, position) pairs: random typical images of each class, and the extremes.

    Typical images are drawn (seeded) from those not already shown as extremes.
    """
    rng = np.random.default_rng(seed)
    normal, abnormal = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    highest_normal = normal[np.argsort(-scores[normal], kind="stable")][:per_group]
    lowest_abnormal = abnormal[np.argsort(scores[abnormal], kind="stable")][:per_group]

    def typical(pool: np.ndarray, shown: np.ndarray) -> np.ndarray:
        rest = np.setdiff1d(pool, shown)
        picked = rng.choice(rest, size=min(per_group, len(rest)), replace=False) if len(rest) else rest
        return np.sort(picked)

    chosen = {
        "typical normal": typical(normal, highest_normal),
        "typical abnormal": typical(abnormal, lowest_abnormal),
        "highest-scored normal": highest_normal,
        "lowest-scored abnormal": lowest_abnormal,
    }
    return [(group, int(i)) for group in GROUPS for i in chosen[group]]


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of feature vectors; perplexity capped for small sets."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(features)
    if n < 5:
        return np.zeros((n, 2), np.float32)
    perplexity = float(min(30.0, (n - 1) / 3.0))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # One thread: the same embedding on every machine, and no OpenMP spinning against the other
    # processes of a busy CPU (which made it 5-10 times slower on a shared 2-core machine).
    with threadpool_limits(1):
        return tsne.fit_transform(features.astype(np.float64)).astype(np.float32)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """Model outputs (N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    array = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return array.transpose(0, 2, 3, 1)


def write_run_examples(run_dir: str | Path, splits: Splits, config: Config, seed: int = 0) -> Path:
    """Score the chosen test images of a finished run again with details and save the figure data."""
    run_dir = Path(run_dir)
    checkpoint = load_checkpoint(checkpoint_path(run_dir, "best"))
    device = resolve_device(config.train.device)
    amp_dtype = resolve_precision(config.train.precision, device)
    model = checkpoint.build_model().to(device)
    normalization = checkpoint.normalization
    test = read_test_scores(run_dir)
    n = len(test["index"])

    rng = np.random.default_rng(seed)
    tsne_pos = np.sort(rng.choice(n, size=TSNE_POINTS, replace=False)) if n > TSNE_POINTS else np.arange(n)
    grid = choose_grid(test["label"], test["score"], GRID_PER_GROUP, seed)
    grid_pos = np.array([p for _, p in grid], dtype=np.int64)
    wanted = np.unique(np.concatenate([tsne_pos, grid_pos]))
    subset = splits.test.subset(test["index"][wanted])

    options = ScoringOptions.for_run(config, splits.channels, device, amp_dtype)
    scored = score_set(model, subset, options.replace(details=True))
    inputs = {}
    for batch in iterate_batches(
        subset,
        options.batch_size,
        image_size=config.data.image_size,
        channels=splits.channels,
        skip_bad=config.data.skip_bad_images,
        max_pixels=config.data.max_image_pixels,
    ):
        for k, i in enumerate(batch.indices.tolist()):
            inputs[i] = batch.images[k].permute(1, 2, 0).numpy()
    row_of = {int(i): r for r, i in enumerate(scored.indices)}  # subset position -> scored row
    where = {int(p): k for k, p in enumerate(wanted)}  # test position -> subset position

    def rows(positions) -> np.ndarray:
        return np.array([row_of[where[int(p)]] for p in positions if where[int(p)] in row_of], dtype=np.int64)

    tsne_rows = rows(tsne_pos)
    grid_keep = [(g, p) for g, p in grid if where[p] in row_of]
    grid_rows = rows([p for _, p in grid_keep])
    data: dict[str, np.ndarray] = {
        "tsne_labels": scored.labels[tsne_rows].astype(np.int8),
        "grid_groups": np.array([g for g, _ in grid_keep], dtype=str),
        "grid_labels": scored.labels[grid_rows].astype(np.int8),
        "grid_scores": normalization(scored.score[grid_rows]).astype(np.float32),
        "grid_inputs": np.stack([inputs[int(scored.indices[r])] for r in grid_rows])
        if len(grid_rows)
        else np.zeros((0, 1, 1, 1), np.uint8),
        "map_high": np.float64(normalization.map_high),
    }
    if scored.features is not None and len(tsne_rows):
        data["tsne_features"] = scored.features[tsne_rows].astype(np.float32)
    if scored.reconstructed is not None and len(grid_rows):
        data["grid_reconstructions"] = _to_uint8(scored.reconstructed[grid_rows])
    if scored.anomaly_maps is not None and len(grid_rows):
        data["grid_maps"] = scored.anomaly_maps[grid_rows].astype(np.float16)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **data)
    target = run_dir / EXAMPLES_FILE
    write_bytes(target, buffer.getvalue())
    return target


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as loaded:
        return {key: loaded[key] for key in loaded.files}


def load_run_examples(run_dir: str | Path) -> dict[str, np.ndarray] | None:
    return _load_npz(Path(run_dir) / EXAMPLES_FILE)


def run_tsne(run_dir: str | Path, examples: dict[str, np.ndarray]) -> np.ndarray | None:
    """The t-SNE embedding of a run's subsampled features, computed once and kept beside the run."""
    if "tsne_features" not in examples:
        return None
    cache = Path(run_dir) / TSNE_FILE
    cached = _load_npz(cache)
    if cached is not None and len(cached["embedding"]) == len(examples["tsne_features"]):
        return cached["embedding"]
    embedding = tsne_embedding(examples["tsne_features"])
    buffer = io.BytesIO()
    np.savez_compressed(buffer, embedding=embedding)
    write_bytes(cache, buffer.getvalue())
    return embedding
