"""Arrange KolektorSDD (Tabernik et al., Journal of Intelligent Manufacturing 2020) as an MVTec AD
category, so that the ``mvtec`` reader takes it and reports pixel AUROC against its masks.

KolektorSDD, as unpacked from its authors' archive, holds ``kos01`` ... ``kos50`` (one
electrical commutator each), every folder ``PartK.jpg`` images (500 x ~1250 grey) with a
``PartK_label.bmp`` mask each; 52 of the 399 images show a crack. It has no normal/abnormal
split for anomaly detection, so this one is fixed by commutator, so that test images come from
commutators training never saw::

    train/good                normal images of kos01-kos35
    test/good                 normal images of kos36-kos50
    test/crack                every image with a crack (any commutator)
    ground_truth/crack        <name>_mask.png

Images are resized to ``--size`` square (bicubic; the aspect ratio is not kept, so that the
whole surface is seen), masks with nearest neighbours, binarised at half their range. Used by
docs/normal-only.md; keep the output outside the repository (the data's licence is its own)::

    python benchmarks/prepare_kolektorsdd.py KolektorSDD/ /tmp/data/kolektorsdd
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

LAST_TRAINING_COMMUTATOR = 35


def prepare(source: Path, target: Path, size: int) -> dict[str, int]:
    folders = sorted(f for f in source.iterdir() if f.is_dir() and re.fullmatch(r"kos\d+", f.name))
    if not folders:
        raise SystemExit(f"{source} holds no kosNN folders; point at the unpacked KolektorSDD folder")
    counts = {"train/good": 0, "test/good": 0, "test/crack": 0}
    for folder in folders:
        for image_file in sorted(folder.glob("Part*.jpg")):
            label_file = image_file.with_name(f"{image_file.stem}_label.bmp")
            if not label_file.is_file():
                raise SystemExit(f"{image_file} has no {label_file.name}")
            mask = np.asarray(Image.open(label_file).convert("L").resize((size, size), Image.NEAREST)) > 127
            name = f"{folder.name}_{image_file.stem.lower()}"
            if mask.any():
                part = "test/crack"
                mask_file = target / "ground_truth" / "crack" / f"{name}_mask.png"
                mask_file.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(mask_file)
            elif int(folder.name[3:]) <= LAST_TRAINING_COMMUTATOR:
                part = "train/good"
            else:
                part = "test/good"
            out = target / part / f"{name}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.open(image_file).convert("L").resize((size, size), Image.BICUBIC).save(out)
            counts[part] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the unpacked KolektorSDD folder (kos01 ... kos50)")
    parser.add_argument("target", type=Path, help="the MVTec-layout category folder to write")
    parser.add_argument("--size", type=int, default=256, help="side of the written images (default 256)")
    args = parser.parse_args(argv)
    counts = prepare(args.source, args.target, args.size)
    print(", ".join(f"{part} {n}" for part, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
