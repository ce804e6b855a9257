import numpy as np
import pytest
from PIL import Image

from skipganomaly.data import prepare_data
from skipganomaly.data.digits import load_digits_source
from skipganomaly.data.images import BadImageError, load_image
from skipganomaly.data.loading import epoch_order, iterate_batches, to_model_input
from skipganomaly.specs.config import build_config
from skipganomaly.specs.errors import UserError


def test_digits_source_and_leave_one_digit_out_counts():
    source = load_digits_source(32)
    assert len(source.train) + len(source.test) == 1797
    assert source.train.images.shape[1:] == (32, 32, 1) and source.train.images.dtype == np.uint8
    splits = prepare_data(build_config({"data.abnormal_class": "3"}).data)
    n_three = int((source.train.class_ids == 3).sum() + (source.test.class_ids == 3).sum())
    counts = splits.counts()
    assert counts["train"]["abnormal"] == 0
    assert counts["train"]["total"] == int((source.train.class_ids != 3).sum())
    assert counts["val"]["abnormal"] + counts["test"]["abnormal"] == n_three
    assert counts["val"]["normal"] + counts["test"]["normal"] == int((source.test.class_ids != 3).sum())
    assert abs(counts["val"]["total"] - counts["test"]["total"]) <= 1
    assert 3 not in set(splits.train.class_ids.tolist())


def test_splits_are_seeded_and_disjoint():
    a = prepare_data(build_config({"data.abnormal_class": "5"}).data)
    b = prepare_data(build_config({"data.abnormal_class": "5"}).data)
    np.testing.assert_array_equal(a.test.images, b.test.images)

    # No image (as bytes) of test appears in validation or training, except exact duplicates in the source.
    def keys(s):
        return {img.tobytes() for img in s.images}

    assert not (keys(a.test) & keys(a.train))
    assert len(keys(a.test) & keys(a.val)) <= 1


def test_protocols_on_digits():
    normal_only = prepare_data(build_config({"data.protocol": "normal-only"}).data)
    assert normal_only.counts()["val"]["abnormal"] == 0
    paper = prepare_data(build_config({"data.protocol": "paper"}).data)
    assert paper.val is paper.test
    assert list(paper.test.labels) == sorted(paper.test.labels)  # normal images first, as the official code
    one_class = prepare_data(build_config({"data.normal_class": "4"}).data)
    assert set(one_class.train.class_ids.tolist()) == {4}


def test_unknown_class_lists_the_valid_ones():
    with pytest.raises(UserError, match="choose one of: 0, 1, 2"):
        prepare_data(build_config({"data.abnormal_class": "eleven"}).data)
    with pytest.raises(UserError, match="unknown"):
        prepare_data(build_config({"data.dataset": "imagenet"}).data)


def test_image_conversions(image_folder, tmp_path):
    rgba = load_image(image_folder / "normal" / "rgba.png", 16, 3)
    assert rgba.shape == (16, 16, 3) and rgba.dtype == np.uint8
    gray_from_16bit = load_image(image_folder / "normal" / "sixteen.png", 16, 1)
    assert gray_from_16bit.shape == (16, 16, 1) and gray_from_16bit.max() > 200  # not clipped to black/white
    src = np.asarray(Image.open(image_folder / "normal" / "sixteen.png"))
    assert src.max() > 255  # it really is 16-bit
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(BadImageError, match="broken.png"):
        load_image(corrupt, 16, 1)


def test_batches_and_model_input(splits):
    order = epoch_order(len(splits.train), seed=0, epoch=1)
    assert sorted(order.tolist()) == list(range(len(splits.train)))
    assert order.tolist() == epoch_order(len(splits.train), seed=0, epoch=1).tolist()
    assert order.tolist() != epoch_order(len(splits.train), seed=0, epoch=2).tolist()
    batches = list(iterate_batches(splits.train, 64, image_size=16, channels=1, order=order, drop_last=True))
    assert [len(b.images) for b in batches] == [64, 64]  # 160 images: the last 32 dropped
    x = to_model_input(batches[0].images)
    assert x.dtype.is_floating_point and x.min() >= -1 and x.max() <= 1
    assert x.shape == (64, 1, 16, 16)
