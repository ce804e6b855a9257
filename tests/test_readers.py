"""Every reader on small data sets written in the real formats: exact counts, disjoint splits,
caching, downloads, and clear errors on bad input."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from fixture_data import (
    CIFAR_CLASSES,
    LocalServer,
    md5_of,
    tar_gz,
    write_cifar_python,
    write_class_folders,
    write_idx,
    write_mnist,
    write_mvtec,
    write_png,
)

from skipganomaly.data import cifar, mnist, prepare_data
from skipganomaly.data.images import BadImageError
from skipganomaly.data.loading import BadImageCounter, iterate_batches
from skipganomaly.specs.config import build_config
from skipganomaly.specs.errors import UserError


def data_config(tmp_path, **values):
    values = {"data.cache_dir": str(tmp_path / "cache"), **values}
    return build_config(values).data


def assert_disjoint(splits, n_total: int | None = None):
    """No image (by id, and by content for in-memory sets) is in two of train, val and test."""
    ids = {name: getattr(splits, name).ids for name in ("train", "val", "test")}
    assert all(v is not None for v in ids.values())
    for name, values in ids.items():
        assert len(set(values)) == len(values), f"duplicate ids in {name}"
    assert not set(ids["test"]) & (set(ids["train"]) | set(ids["val"]))
    if splits.val is not splits.test:
        assert not set(ids["val"]) & set(ids["train"])
    if n_total is not None:
        assert len(set(ids["train"]) | set(ids["val"]) | set(ids["test"])) == n_total
    if splits.test.in_memory:
        test_bytes = {image.tobytes() for image in splits.test.images}
        assert not test_bytes & {image.tobytes() for image in splits.train.images}
        if splits.val is not splits.test:
            assert not test_bytes & {image.tobytes() for image in splits.val.images}


# --------------------------------------------------------------------------- CIFAR-10
@pytest.fixture
def cifar_batches(tmp_path):
    # 5 batches x 2 images x 10 classes = 100 training images (10 per class); 30 test images.
    return write_cifar_python(tmp_path / "raw")


def test_cifar_python_format_leave_one_class_out_counts(tmp_path, cifar_batches):
    splits = prepare_data(
        data_config(
            tmp_path,
            **{
                "data.dataset": "cifar10",
                "data.root": str(cifar_batches),
                "data.abnormal_class": "automobile",
            },
        )
    )
    counts = splits.counts()
    assert counts["train"] == {"total": 90, "normal": 90, "abnormal": 0}
    assert splits.info.evaluation_pool == {"normal": 27, "abnormal": 13}  # 9x3 test + (10+3) automobiles
    assert counts["val"]["total"] + counts["test"]["total"] == 40
    assert counts["val"]["abnormal"] + counts["test"]["abnormal"] == 13
    assert splits.info.class_names == CIFAR_CLASSES
    assert 1 not in set(splits.train.class_ids.tolist())
    assert splits.train.images.shape[1:] == (32, 32, 3)
    assert_disjoint(splits, n_total=130)


def test_cifar_reads_parent_folder_archive_and_resizes(tmp_path, cifar_batches):
    by_dir = prepare_data(
        data_config(
            tmp_path,
            **{"data.dataset": "cifar10", "data.root": str(cifar_batches), "data.normal_class": "cat"},
        )
    )
    archive = tar_gz(cifar_batches, tmp_path / "cifar-10-python.tar.gz")
    for root in (cifar_batches.parent, archive):
        other = prepare_data(
            data_config(
                tmp_path, **{"data.dataset": "cifar10", "data.root": str(root), "data.normal_class": "cat"}
            )
        )
        np.testing.assert_array_equal(other.train.images, by_dir.train.images)
        assert other.test.ids == by_dir.test.ids
    assert by_dir.counts()["train"]["total"] == 10  # one-class: the 10 training cats
    assert by_dir.info.evaluation_pool == {"normal": 3, "abnormal": 27}
    gray = prepare_data(
        data_config(
            tmp_path,
            **{
                "data.dataset": "cifar10",
                "data.root": str(archive),
                "data.normal_class": "cat",
                "data.image_size": 16,
                "data.channels": 1,
            },
        )
    )
    assert gray.train.images.shape == (10, 16, 16, 1)


def test_cifar_cache_is_written_once_and_reused(tmp_path, cifar_batches):
    cfg = data_config(
        tmp_path,
        **{"data.dataset": "cifar10", "data.root": str(cifar_batches), "data.abnormal_class": "bird"},
    )
    first = prepare_data(cfg)
    assert "cached in" in first.info.storage
    cached = list((tmp_path / "cache" / "arrays").glob("cifar10-32px-3c-*.npz"))
    assert len(cached) == 1
    second = prepare_data(cfg)
    assert "loaded from cache" in second.info.storage
    np.testing.assert_array_equal(first.test.images, second.test.images)
    assert first.test.ids == second.test.ids
    other_size = prepare_data(dataclasses.replace(cfg, image_size=16))
    assert "cached in" in other_size.info.storage  # keyed by size: decoded again
    assert len(list((tmp_path / "cache" / "arrays").glob("cifar10-*.npz"))) == 2


def test_cifar_refuses_pickles_that_would_run_code(tmp_path, cifar_batches):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(cifar_batches / "data_batch_3", "wb") as handle:
        pickle.dump({b"data": Evil(), b"labels": []}, handle, protocol=2)
    with pytest.raises(UserError, match=r"data_batch_3 cannot be read \(refusing to load posix.system"):
        prepare_data(
            data_config(
                tmp_path,
                **{"data.dataset": "cifar10", "data.root": str(cifar_batches), "data.abnormal_class": "cat"},
            )
        )


def test_cifar_class_folder_layout(tmp_path):
    counts = {"train": dict.fromkeys(CIFAR_CLASSES, 3), "test": dict.fromkeys(CIFAR_CLASSES, 2)}
    root = write_class_folders(tmp_path / "cifar_jpeg", counts, size=32)
    splits = prepare_data(
        data_config(
            tmp_path,
            **{"data.dataset": "cifar10", "data.root": str(root), "data.abnormal_class": "automobile"},
        )
    )
    assert splits.counts()["train"]["total"] == 27
    assert splits.info.evaluation_pool == {"normal": 18, "abnormal": 5}
    assert splits.info.format == "class folders"
    assert_disjoint(splits, n_total=50)
    # An archive wrapping the layout in one top folder works too.
    archive = tar_gz(root, tmp_path / "cifar10-jpeg.tar.gz", arcname="cifar10")
    again = prepare_data(
        data_config(
            tmp_path,
            **{"data.dataset": "cifar10", "data.root": str(archive), "data.abnormal_class": "automobile"},
        )
    )
    assert sorted(again.test.ids) == sorted(splits.test.ids)
    (root / "train" / "unicorn").mkdir()
    with pytest.raises(
        UserError, match="class folders unicorn that cifar10 does not have; its classes are: airplane"
    ):
        prepare_data(
            data_config(
                tmp_path, **{"data.dataset": "cifar10", "data.root": str(root), "data.abnormal_class": "cat"}
            )
        )


def test_cifar_unknown_class_lists_the_valid_ones(tmp_path, cifar_batches):
    with pytest.raises(
        UserError, match="'car' is not a class of cifar10; choose one of: airplane, automobile"
    ):
        prepare_data(
            data_config(
                tmp_path,
                **{"data.dataset": "cifar10", "data.root": str(cifar_batches), "data.abnormal_class": "car"},
            )
        )


def test_cifar_download_verifies_the_checksum(tmp_path, cifar_batches, monkeypatch):
    served = tmp_path / "server"
    served.mkdir()
    archive = tar_gz(cifar_batches, served / "cifar-10-python.tar.gz")
    with LocalServer(served) as server:
        monkeypatch.setattr(cifar, "URLS", [server.url + "cifar-10-python.tar.gz"])
        monkeypatch.setattr(cifar, "ARCHIVE_MD5", "0" * 32)
        cfg = data_config(tmp_path, **{"data.dataset": "cifar10", "data.abnormal_class": "cat"})
        with pytest.raises(UserError, match="checksum mismatch: md5 [0-9a-f]{32}, expected 0{32}; discarded"):
            prepare_data(cfg)
        downloads = tmp_path / "cache" / "downloads" / "cifar10"
        assert list(downloads.iterdir()) == []  # nothing half-written or unverified is kept

        monkeypatch.setattr(cifar, "ARCHIVE_MD5", md5_of(archive))
        splits = prepare_data(cfg)
        assert splits.counts()["train"]["total"] == 90
        assert [p.name for p in downloads.iterdir()] == ["cifar-10-python.tar.gz"]
    # Later runs need no network: the verified archive and its decoded arrays are cached.
    monkeypatch.setattr(cifar, "URLS", ["http://127.0.0.1:9/unreachable"])
    assert prepare_data(cfg).counts() == splits.counts()


def test_cifar_offline_and_download_disabled_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "URLS", ["http://127.0.0.1:9/cifar-10-python.tar.gz"])  # nothing listens
    cfg = data_config(tmp_path, **{"data.dataset": "cifar10", "data.abnormal_class": "cat"})
    with pytest.raises(
        UserError, match="cannot download CIFAR-10 .*offline\\? copy cifar-10-python.tar.gz into"
    ):
        prepare_data(cfg)
    with pytest.raises(UserError, match=r"downloads are off \(data.download=false\)"):
        prepare_data(dataclasses.replace(cfg, download=False))


def test_truncated_archive_is_one_clear_error_and_leaves_nothing(tmp_path, cifar_batches):
    archive = tar_gz(cifar_batches, tmp_path / "cifar-10-python.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cifar-10-python.tar.gz is truncated or corrupt"):
        prepare_data(
            data_config(
                tmp_path,
                **{"data.dataset": "cifar10", "data.root": str(archive), "data.abnormal_class": "cat"},
            )
        )
    extracted = tmp_path / "cache" / "extracted"
    assert not extracted.exists() or list(extracted.iterdir()) == []


def test_archive_with_unsafe_paths_is_refused(tmp_path):
    import io
    import tarfile

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(UserError, match="unsafe path '../escaped.png'"):
        prepare_data(data_config(tmp_path, **{"data.dataset": "folder", "data.root": str(archive)}))
    assert not (tmp_path / "cache" / "escaped.png").exists()


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST
def test_mnist_idx_gz_counts_and_disjoint(tmp_path):
    root = write_mnist(tmp_path / "mnist")  # 50 train, 20 test
    splits = prepare_data(
        data_config(tmp_path, **{"data.dataset": "mnist", "data.root": str(root), "data.abnormal_class": "7"})
    )
    assert splits.counts()["train"]["total"] == 45
    assert splits.info.evaluation_pool == {"normal": 18, "abnormal": 7}
    assert splits.channels == 1 and splits.train.images.shape[1:] == (32, 32, 1)
    assert_disjoint(splits, n_total=70)


def test_fashion_mnist_plain_idx_in_torchvision_layout(tmp_path):
    root = tmp_path / "data"
    write_mnist(root / "FashionMNIST" / "raw", gz=False)
    splits = prepare_data(
        data_config(
            tmp_path,
            **{
                "data.dataset": "fashion-mnist",
                "data.root": str(root),
                "data.normal_class": "ankle-boot",
                "data.channels": 3,
            },
        )
    )
    assert splits.info.normal_classes == ["ankle-boot"]
    assert splits.counts()["train"]["total"] == 5
    assert splits.train.images.shape[1:] == (32, 32, 3)
    by_index = prepare_data(
        data_config(
            tmp_path, **{"data.dataset": "fashion-mnist", "data.root": str(root), "data.normal_class": "9"}
        )
    )
    assert by_index.info.normal_classes == ["ankle-boot"]


def test_mnist_truncated_and_missing_files(tmp_path):
    root = write_mnist(tmp_path / "mnist", gz=False)
    images = root / "t10k-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(
        UserError, match="t10k-images-idx3-ubyte holds 15,580 bytes of data but its header says 15,680"
    ):
        prepare_data(
            data_config(
                tmp_path, **{"data.dataset": "mnist", "data.root": str(root), "data.abnormal_class": "1"}
            )
        )
    images.unlink()
    with pytest.raises(UserError, match="lacks the MNIST files t10k-images-idx3-ubyte"):
        prepare_data(
            data_config(
                tmp_path, **{"data.dataset": "mnist", "data.root": str(root), "data.abnormal_class": "1"}
            )
        )
    gz_root = write_mnist(tmp_path / "gz")
    gz_file = gz_root / "train-labels-idx1-ubyte.gz"
    gz_file.write_bytes(gz_file.read_bytes()[:20])
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz cannot be read .*truncated"):
        prepare_data(
            data_config(
                tmp_path, **{"data.dataset": "mnist", "data.root": str(gz_root), "data.abnormal_class": "1"}
            )
        )


def test_mnist_download_tries_mirrors_and_checks_each_file(tmp_path, monkeypatch):
    served = write_mnist(tmp_path / "server")
    md5 = {p.name: md5_of(p) for p in served.iterdir()}
    with LocalServer(served) as server:
        patched = dataclasses.replace(mnist.MNIST, mirrors=["http://127.0.0.1:9/", server.url], md5=md5)
        monkeypatch.setattr(mnist, "MNIST", patched)
        cfg = data_config(tmp_path, **{"data.dataset": "mnist", "data.abnormal_class": "3"})
        splits = prepare_data(cfg)
        assert splits.counts()["train"]["total"] == 45
        downloads = tmp_path / "cache" / "downloads" / "mnist"
        assert sorted(p.name for p in downloads.iterdir()) == sorted(md5)

        bad = dict(md5, **{"t10k-labels-idx1-ubyte.gz": "f" * 32})
        monkeypatch.setattr(mnist, "MNIST", dataclasses.replace(patched, md5=bad))
        other_cache = data_config(tmp_path / "other", **{"data.dataset": "mnist", "data.abnormal_class": "3"})
        with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz .*checksum mismatch"):
            prepare_data(other_cache)
        assert not (
            tmp_path / "other" / "cache" / "downloads" / "mnist" / "t10k-labels-idx1-ubyte.gz"
        ).exists()


def test_idx_writer_round_trip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(mnist.read_idx(write_idx(tmp_path / "a-idx3-ubyte.gz", array)), array)


# --------------------------------------------------------------------------- class folders
def test_folder_with_train_and_test_classes(tmp_path):
    counts = {"train": {"bolt": 10, "nut": 5, "screw": 4}, "test": {"bolt": 3, "nut": 2, "screw": 4}}
    root = write_class_folders(tmp_path / "parts", counts, size=20)
    splits = prepare_data(
        data_config(
            tmp_path,
            **{
                "data.dataset": "folder",
                "data.root": str(root),
                "data.abnormal_class": "nut",
                "data.image_size": 16,
            },
        )
    )
    assert splits.info.class_names == ["bolt", "nut", "screw"]
    assert splits.counts()["train"]["total"] == 14
    assert splits.info.evaluation_pool == {"normal": 7, "abnormal": 7}  # 3+4 test; 5+2 nuts
    assert splits.train.images.shape[1:] == (16, 16, 3)
    assert_disjoint(splits, n_total=28)
    assert all(i.startswith(("train/", "test/")) for i in splits.test.ids)
    one_class = prepare_data(
        data_config(
            tmp_path,
            **{
                "data.dataset": "folder",
                "data.root": str(root),
                "data.normal_class": "bolt",
                "data.protocol": "normal-only",
            },
        )
    )
    # normal-only: 10% of the 10 normal training bolts held out for validation; test = all 9 test images.
    assert one_class.counts()["train"]["total"] == 9 and one_class.counts()["val"]["total"] == 1
    assert one_class.counts()["test"] == {"total": 9, "normal": 3, "abnormal": 6}
    assert_disjoint(one_class, n_total=19)


def test_folder_of_classes_is_split_by_seed(tmp_path):
    root = write_class_folders(tmp_path / "flat", {"": {"a": 10, "b": 5, "c": 3}}, size=16, channels=1)
    cfg = data_config(
        tmp_path, **{"data.dataset": "folder", "data.root": str(root), "data.abnormal_class": "c"}
    )
    splits = prepare_data(cfg)
    assert splits.channels == 1
    assert splits.counts()["train"]["total"] == 8 + 4  # 80% of a and of b
    assert splits.info.evaluation_pool == {"normal": 3, "abnormal": 3}
    assert_disjoint(splits, n_total=18)
    assert prepare_data(cfg).test.ids == splits.test.ids
    reseeded = prepare_data(dataclasses.replace(cfg, split_seed=1))
    assert sorted(reseeded.train.ids) != sorted(splits.train.ids)


def test_reference_layout(tmp_path):
    counts = {"train": {"0.normal": 8}, "test": {"0.normal": 4, "1.abnormal": 6}}
    root = write_class_folders(tmp_path / "custom", counts, size=16)
    splits = prepare_data(data_config(tmp_path, **{"data.dataset": "folder", "data.root": str(root)}))
    assert splits.info.setting.startswith("reference layout")
    assert splits.counts()["train"] == {"total": 8, "normal": 8, "abnormal": 0}
    assert splits.info.evaluation_pool == {"normal": 4, "abnormal": 6}
    assert_disjoint(splits, n_total=18)
    paper = prepare_data(
        data_config(tmp_path, **{"data.dataset": "folder", "data.root": str(root), "data.protocol": "paper"})
    )
    assert paper.val is paper.test and list(paper.test.labels) == [0] * 4 + [1] * 6
    with pytest.raises(
        UserError, match="says which images are normal and abnormal itself; drop --abnormal-class"
    ):
        prepare_data(
            data_config(
                tmp_path,
                **{"data.dataset": "folder", "data.root": str(root), "data.abnormal_class": "1.abnormal"},
            )
        )
    write_class_folders(root, {"train": {"1.abnormal": 1}})
    with pytest.raises(UserError, match="train/1.abnormal holds abnormal images"):
        prepare_data(data_config(tmp_path, **{"data.dataset": "folder", "data.root": str(root)}))


# --------------------------------------------------------------------------- MVTec AD
def test_mvtec_labels_groups_masks_and_stratified_split(tmp_path):
    category = write_mvtec(tmp_path / "mvtec" / "widget", n_defect=4)
    for root in (category, category.parent):  # the category, or a folder holding just one
        splits = prepare_data(
            data_config(tmp_path, **{"data.dataset": "mvtec", "data.root": str(root), "data.image_size": 16})
        )
        assert splits.counts()["train"] == {"total": 12, "normal": 12, "abnormal": 0}
        assert splits.info.evaluation_pool == {"normal": 4, "abnormal": 8}
        assert splits.info.class_names == ["good", "crack", "hole"] and splits.info.masks == 8
        for part in (splits.val, splits.test):  # stratified by defect type: 2 of each on each side
            assert sorted(part.groups) == ["crack", "crack", "good", "good", "hole", "hole"]
            for group, mask, label in zip(part.groups, part.masks, part.labels, strict=True):
                assert (mask is None) == (group == "good") and label == int(group != "good")
                if mask:
                    assert mask.endswith(f"ground_truth/{group}/" + os.path.basename(mask))
        assert_disjoint(splits, n_total=24)
    with pytest.raises(UserError, match="drop --normal-class"):
        prepare_data(
            data_config(
                tmp_path, **{"data.dataset": "mvtec", "data.root": str(category), "data.normal_class": "good"}
            )
        )


def test_mvtec_3d_reads_rgb_images_and_gt_masks_only(tmp_path):
    """An MVTec 3D-AD category as unpacked: images in rgb/, masks in gt/, point clouds in xyz/.
    Neither the masks nor the .tiff point clouds may be read as images."""
    flat = write_mvtec(tmp_path / "flat" / "tire", n_defect=4)
    category = tmp_path / "mvtec3d" / "tire"
    for image in sorted(flat.glob("t*/*/*.png")):
        part, group = image.parent.parent.name, image.parent.name
        target = category / part / group
        (target / "rgb").mkdir(parents=True, exist_ok=True)
        (target / "xyz").mkdir(exist_ok=True)
        image.rename(target / "rgb" / image.name)
        write_png(target / "xyz" / f"{image.stem}.tiff", np.zeros((8, 8, 3), np.uint8))
        mask = flat / "ground_truth" / group / f"{image.stem}_mask.png"
        if part == "test":  # 3D-AD gives good test images an empty mask too
            (target / "gt").mkdir(exist_ok=True)
            if mask.is_file():
                mask.rename(target / "gt" / image.name)
            else:
                write_png(target / "gt" / image.name, np.zeros((32, 32, 1), np.uint8))
    splits = prepare_data(
        data_config(tmp_path, **{"data.dataset": "mvtec", "data.root": str(category), "data.image_size": 16})
    )
    assert splits.counts()["train"] == {"total": 12, "normal": 12, "abnormal": 0}
    assert splits.info.evaluation_pool == {"normal": 4, "abnormal": 8} and splits.info.masks == 8
    for part in (splits.val, splits.test):
        for group, mask in zip(part.groups, part.masks, strict=True):
            assert (mask is None) == (group == "good")
            if mask:
                assert mask.endswith(f"test/{group}/gt/" + os.path.basename(mask)), mask
    assert_disjoint(splits, n_total=24)


def test_mvtec_without_normal_training_images(tmp_path):
    category = write_mvtec(tmp_path / "widget")
    for f in (category / "train" / "good").iterdir():
        f.unlink()
    with pytest.raises(UserError, match="train/good holds no image files"):
        prepare_data(data_config(tmp_path, **{"data.dataset": "mvtec", "data.root": str(category)}))
    (category / "train" / "good").rmdir()
    with pytest.raises(UserError, match="train/good does not exist; MVTec AD trains on the normal images"):
        prepare_data(data_config(tmp_path, **{"data.dataset": "mvtec", "data.root": str(category)}))


def test_normal_class_without_training_images(tmp_path):
    counts = {"train": {"a": 3, "b": 3}, "test": {"a": 2, "b": 2, "c": 2}}
    root = write_class_folders(tmp_path / "f", counts, size=16)
    # The message names the folder, the choice and what training images each class has.
    with pytest.raises(
        UserError, match=r"has no normal training images for --normal-class c; .*: a 3, b 3, c 0"
    ):
        prepare_data(
            data_config(
                tmp_path, **{"data.dataset": "folder", "data.root": str(root), "data.normal_class": "c"}
            )
        )


# --------------------------------------------------------------------------- bad input
def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(UserError, match=r"--data-root .*nowhere does not exist"):
        prepare_data(
            data_config(tmp_path, **{"data.dataset": "folder", "data.root": str(tmp_path / "nowhere")})
        )
    with pytest.raises(UserError, match="dataset folder needs --data-root"):
        prepare_data(data_config(tmp_path, **{"data.dataset": "folder"}))
    root = write_class_folders(tmp_path / "f", {"train": {"a": 3}, "test": {"a": 2}}, size=16)
    (root / "train" / "b").mkdir()
    with pytest.raises(UserError, match="train/b holds no image files"):
        prepare_data(
            data_config(
                tmp_path, **{"data.dataset": "folder", "data.root": str(root), "data.abnormal_class": "a"}
            )
        )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="empty has no sub-folders"):
        prepare_data(data_config(tmp_path, **{"data.dataset": "folder", "data.root": str(empty)}))


@pytest.fixture
def folder_with_corrupt_image(tmp_path):
    counts = {"train": {"a": 6, "b": 6}, "test": {"a": 3, "b": 3}}
    root = write_class_folders(tmp_path / "f", counts, size=16)
    (root / "train" / "a" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_corrupt_image_stops_naming_the_file_or_is_skipped_and_counted(tmp_path, folder_with_corrupt_image):
    values = {
        "data.dataset": "folder",
        "data.root": str(folder_with_corrupt_image),
        "data.abnormal_class": "b",
    }
    with pytest.raises(BadImageError, match="zz_broken.png cannot be read .*--skip-bad-images"):
        prepare_data(data_config(tmp_path, **values))
    assert not (tmp_path / "cache" / "arrays").exists() or not list((tmp_path / "cache" / "arrays").iterdir())
    splits = prepare_data(data_config(tmp_path, **values, **{"data.skip_bad_images": True}))
    assert splits.info.skipped_bad_images == 1
    assert splits.info.skipped_files == ["train/a/zz_broken.png"]
    assert splits.counts()["train"]["total"] == 6
    # The cached arrays remember the bad file: without --skip-bad-images the next run still stops.
    with pytest.raises(BadImageError, match="zz_broken.png"):
        prepare_data(data_config(tmp_path, **values))


def test_large_sets_stream_from_disk_and_count_bad_images(tmp_path, folder_with_corrupt_image):
    values = {
        "data.dataset": "folder",
        "data.root": str(folder_with_corrupt_image),
        "data.abnormal_class": "b",
        "data.max_memory_mb": 0,
        "data.skip_bad_images": True,
        "data.image_size": 16,
    }
    splits = prepare_data(data_config(tmp_path, **values))
    assert not splits.train.in_memory and splits.info.storage.startswith("streamed from disk")
    assert splits.counts()["train"]["total"] == 7  # the bad file is only found when batches are drawn
    counter = BadImageCounter()
    batches = list(
        iterate_batches(splits.train, 4, image_size=16, channels=3, skip_bad=True, counter=counter)
    )
    assert sum(len(b.images) for b in batches) == 6 and counter.skipped == 1
    assert_disjoint(splits, n_total=19)


def test_mnist_from_an_archive_of_its_folder(tmp_path):
    root = write_mnist(tmp_path / "mnist")
    archive = tar_gz(root, tmp_path / "mnist.tar.gz")
    values = {"data.dataset": "mnist", "data.abnormal_class": "0"}
    by_archive = prepare_data(data_config(tmp_path, **values, **{"data.root": str(archive)}))
    by_folder = prepare_data(data_config(tmp_path, **values, **{"data.root": str(root)}))
    np.testing.assert_array_equal(by_archive.test.images, by_folder.test.images)


def test_plain_normal_and_abnormal_folders_are_classes_not_the_reference_layout(tmp_path):
    counts = {"train": {"normal": 10, "abnormal": 3}, "test": {"normal": 3, "abnormal": 3}}
    root = write_class_folders(tmp_path / "f", counts, size=16)
    splits = prepare_data(
        data_config(
            tmp_path, **{"data.dataset": "folder", "data.root": str(root), "data.normal_class": "normal"}
        )
    )
    assert splits.info.setting == "one-class" and splits.counts()["train"]["total"] == 10
