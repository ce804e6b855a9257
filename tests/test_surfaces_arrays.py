"""Issue 22, bad arrays: what Detector.score, Predictor.score_arrays, files and the service accept
is one rule (data/arrays.py); the rest is one line naming the image's position."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from skipganomaly.data.arrays import as_image, checked_array, image_from_array
from skipganomaly.data.images import BadImageError, open_image
from skipganomaly.deploy.detector import Detector
from skipganomaly.deploy.predict import Predictor
from skipganomaly.specs.errors import UserError

GOOD = np.full((16, 16), 128, np.uint8)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.where(np.eye(16, dtype=bool), np.nan, 100.0), "NaN or infinite"),
        (np.where(np.eye(16, dtype=bool), np.inf, 100.0).astype(np.float32), "NaN or infinite"),
        (np.full((16, 16, 3), 100 + 5j), "complex numbers"),
        (
            np.full((16, 16), 2**62, np.int64),
            r"values from 4\.61169e\+18 to 4\.61169e\+18; int64 pixels must lie in \[0, 65535\]",
        ),
        (np.full((16, 16), -3, np.int16), r"must lie in \[0, 65535\]"),
        (np.full((16, 16), 300.0), r"float64 pixels must lie in \[0, 255\]"),
        (np.full((16, 16), "a"), "holds text"),
        (np.full((16, 16), None, dtype=object), "holds Python objects"),
        (np.zeros((16, 16, 2), np.uint8), "is not an image"),
        (np.zeros((0, 16), np.uint8), "is not an image"),
    ],
)
def test_bad_arrays_are_one_line_naming_their_position(digits_onnx, array, message):
    detector = Detector.from_onnx(digits_onnx)
    # In a list, the bad array is that item's error (one line naming its position); the other
    # image is scored (the deployment issue's per-image errors).
    good, bad = detector.score([GOOD, array])
    assert not good.error and np.isfinite(good.score)
    assert re.match(rf"^image 1 \(an array of shape .*\) .*{message}", bad.error), bad.error
    assert "\n" not in bad.error
    # Alone, it raises that one line.
    with pytest.raises(BadImageError, match=rf"\(an array of shape .*\) .*{message}"):
        detector.score(array)


def test_accepted_arrays_score_as_the_same_image_in_8_bits(digits_onnx):
    detector = Detector.from_onnx(digits_onnx)
    eight = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    same = [
        eight,
        eight[:, :, None],
        eight.astype(np.float32) / 255.0,  # [0, 1]
        eight.astype(np.int64),  # integers up to 255: 8-bit
        eight.astype(np.uint16) * 257,  # 16-bit
    ]
    scores = [p.raw_score for p in detector.score(same)]
    assert max(scores) - min(scores) <= 1e-5 * abs(scores[0])
    assert image_from_array(np.eye(16, dtype=bool)).getpixel((0, 0)) == 255


def test_max_image_pixels_applies_to_arrays_and_pil_images(digits_onnx):
    detector = Detector.from_onnx(digits_onnx, max_image_pixels=10_000)
    with pytest.raises(BadImageError, match=r"image 0 .* 200 x 100 pixels, over the limit of 10,000"):
        detector.score(np.zeros((100, 200), np.uint8))
    with pytest.raises(BadImageError, match=r"image 0 \(a 200 x 100 PIL image\) is over the limit"):
        detector.score(Image.new("L", (200, 100)))
    assert len(detector.score(np.zeros((100, 100), np.uint8))) == 1


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_a_bad_batch_size_is_a_user_error(digits_onnx, size):
    with pytest.raises(UserError, match=r"batch_size=.*: use a whole number of images, 1 or more"):
        Detector.from_onnx(digits_onnx).score([GOOD], batch_size=size)
    with pytest.raises(UserError, match="batch_size"):
        list(Detector.from_onnx(digits_onnx).score_paths([], batch_size=size))


def test_the_torch_predictor_applies_the_same_rule(digits_run):
    predictor = Predictor.from_run(digits_run, device="cpu", max_image_pixels=10_000)
    with pytest.raises(BadImageError, match="image 1 .*NaN"):
        predictor.score_arrays([GOOD, np.full((16, 16), np.nan)])
    with pytest.raises(BadImageError, match="over the limit"):
        predictor.score_arrays([np.zeros((200, 200), np.uint8)])
    assert len(predictor.score_arrays([GOOD])) == 1


def test_float_files_with_nan_are_bad_images(tmp_path):
    values = np.full((16, 16), 0.5, np.float32)
    values[3, 3] = np.nan
    Image.fromarray(values, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(BadImageError, match=r"nan\.tif holds NaN or infinite pixel values"):
        open_image(tmp_path / "nan.tif")
    buffer = io.BytesIO()
    Image.fromarray(values, mode="F").save(buffer, format="TIFF")
    with pytest.raises(BadImageError, match="NaN"):
        as_image(Image.open(buffer), "upload")


def test_the_service_refuses_a_nan_tiff_with_400(digits_onnx):
    from skipganomaly.service.uploads import ServiceError, decode_upload

    values = np.full((16, 16), 0.5, np.float32)
    values[0, 0] = np.inf
    buffer = io.BytesIO()
    Image.fromarray(values, mode="F").save(buffer, format="TIFF")
    with pytest.raises(ServiceError) as refused:
        decode_upload(buffer.getvalue(), "x.tif", Detector.from_onnx(digits_onnx), 10_000)
    assert refused.value.status == 400 and "x.tif holds NaN or infinite" in str(refused.value)


def test_checked_array_passes_good_dtypes_through():
    for dtype in (np.uint8, np.uint16, np.int32, np.float16, np.float64, np.bool_):
        assert checked_array(np.zeros((4, 4, 3), dtype), "x").shape == (4, 4, 3)
