"""Out-of-domain warning, measured: its false alarms on a run's normal test images and its hits on
another data set's images (the first N JPEGs of a tar archive, e.g. /work/shared/data's CIFAR-10).

    python benchmarks/out_of_domain.py RUN_DIR MODEL.onnx OTHER.tar.gz [N]

Prints the two rates and the most common reasons. Needs the training install (reads the run's
test split as training split it)."""

from __future__ import annotations

import collections
import io
import sys
import tarfile

from PIL import Image

from skipganomaly.data import prepare_data
from skipganomaly.deploy.detector import Detector
from skipganomaly.formats.checkpoint import load_run_checkpoint


def main(run_dir: str, model: str, other: str, limit: int = 500) -> None:
    detector = Detector.from_onnx(model)
    test = prepare_data(load_run_checkpoint(run_dir).config.data).test
    normal = [image for image, label in zip(test.images, test.labels, strict=True) if label == 0]
    results = detector.score(normal, with_maps=False)
    alarms = sum(p.out_of_domain for p in results)
    print(
        f"normal test images flagged out of domain: {alarms} of {len(results)} ({alarms / len(results):.1%})"
    )
    others = []
    with tarfile.open(other) as archive:
        for member in archive:
            if member.isfile() and member.name.lower().endswith((".jpg", ".jpeg", ".png")):
                others.append(Image.open(io.BytesIO(archive.extractfile(member).read())).convert("RGB"))
                if len(others) >= limit:
                    break
    flagged = detector.score(others, with_maps=False)
    hits = sum(p.out_of_domain for p in flagged)
    print(f"{other} images flagged out of domain: {hits} of {len(flagged)} ({hits / len(flagged):.1%})")
    reasons = collections.Counter(r.split(" ")[0] for p in flagged for r in p.domain_reason.split("; ") if r)
    print("reasons:", dict(reasons.most_common()))
    anomalous = sum(p.is_anomalous for p in flagged)
    print(
        f"(of those images, {anomalous} are also over the threshold: the flag is separate from the verdict)"
    )


if __name__ == "__main__":
    main(*sys.argv[1:4], *(int(a) for a in sys.argv[4:5]))
