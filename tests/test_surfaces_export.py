"""Issue 22, the export: its decision metadata is as trusted as its weights (the content hash
covers it), and a malformed or edited field is one line naming the file and the field."""

from __future__ import annotations

import json

import onnx
import pytest
from conftest import run_cli

from skipganomaly.deploy.detector import Detector
from skipganomaly.formats.onnx_file import METADATA_KEY, read_exported
from skipganomaly.specs.errors import UserError


def edited_copy(source, target, edit_json=None, flat=None):
    """``source`` with its metadata JSON passed through ``edit_json`` and flat keys replaced."""
    proto = onnx.load(source)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY and edit_json is not None:
            entry.value = edit_json(json.loads(entry.value))
        if flat and entry.key in flat:
            entry.value = flat[entry.key]
    target.write_bytes(proto.SerializeToString())
    return target


def set_in(path, value):
    def edit(metadata):
        node = metadata
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return json.dumps(metadata)

    return edit


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("normalization", "threshold"), 99.0, "normalization"),
        (("normalization", "low"), -1.0, "normalization"),
        (("image_size",), 32, "image_size"),
        (("channels",), 3, "channels"),
        (("preprocessing", "channels"), 3, "preprocessing"),
        (("input", "dtype"), "float32", "input"),
        (("score_lambda",), 0.5, "score_lambda"),
    ],
)
def test_an_edited_decision_field_is_refused_by_every_reader(digits_onnx, tmp_path, path, value, field):
    edited = edited_copy(digits_onnx, tmp_path / "edited.onnx", set_in(path, value))
    pattern = rf"edited\.onnx: its metadata field '{field}' was changed after export"
    with pytest.raises(UserError, match=pattern):
        read_exported(edited)
    with pytest.raises(UserError, match=pattern):
        Detector.from_onnx(edited)


def test_the_flat_copies_must_agree(digits_onnx, tmp_path):
    edited = edited_copy(digits_onnx, tmp_path / "flat.onnx", flat={"threshold": "99.0"})
    with pytest.raises(UserError, match=r"flat\.onnx: its metadata field 'threshold' says 99\.0"):
        read_exported(edited)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[1, 2, 3]", "'skipganomaly' is a JSON list"),
        ('"just a string"', "'skipganomaly' is a JSON str"),
        (None, "'format_version' is missing"),
        ("{", "is not valid JSON"),
    ],
)
def test_malformed_metadata_is_one_line(digits_onnx, tmp_path, text, field):
    def edit(metadata):
        if text is not None:
            return text
        metadata["format_version"] = "two"
        return json.dumps(metadata)

    edited = edited_copy(digits_onnx, tmp_path / "bad.onnx", edit)
    with pytest.raises(UserError, match=rf"bad\.onnx.*{field}"):
        read_exported(edited)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("image_size",), 17, "image_size"),
        (("channels",), "3", "channels"),
        (("normalization", "threshold"), "NaN", "normalization.threshold"),
        (("normalization",), [], "normalization"),
        (("model",), {"name": 3}, "model"),
    ],
)
def test_malformed_fields_are_named_before_anything_runs(digits_onnx, tmp_path, path, value, field):
    edited = edited_copy(digits_onnx, tmp_path / "m.onnx", set_in(path, value))
    with pytest.raises(UserError, match=rf"m\.onnx: its metadata field '{field}'"):
        read_exported(edited)


def test_serve_and_predict_refuse_an_edited_threshold(digits_onnx, tmp_path):
    edited = edited_copy(digits_onnx, tmp_path / "t.onnx", set_in(("normalization", "threshold"), 99.0))
    result = run_cli("serve", "--onnx", edited, "--port", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "field 'normalization' was changed after export" in result.stderr


def test_a_format_1_export_is_refused_with_what_to_do(digits_onnx, tmp_path):
    edited = edited_copy(digits_onnx, tmp_path / "old.onnx", set_in(("format_version",), 1))
    with pytest.raises(UserError, match="format version 1.*export it again"):
        read_exported(edited)


def test_a_float32_input_export_works_and_scores_as_the_uint8_one(digits_run, digits_onnx, tmp_path):
    import numpy as np
    import torch
    from deploy_helpers import split_images

    from skipganomaly.data.loading import to_model_input
    from skipganomaly.deploy.export import export_run

    # The cause: scaling a float32 input in place changed the caller's images.
    images = torch.full((1, 1, 4, 4), 255.0)
    assert to_model_input(images).max().item() == 1.0 and images.max().item() == 255.0
    result = export_run(digits_run, output=tmp_path / "f.onnx", input_type="float32")
    assert result.metadata["input"]["dtype"] == "float32" and result.max_relative_difference <= 1e-4
    pictures, _ = split_images(digits_run)
    as_float = Detector.from_onnx(tmp_path / "f.onnx").engine.run(pictures[:8])
    as_uint8 = Detector.from_onnx(digits_onnx).engine.run(pictures[:8])
    np.testing.assert_allclose(as_float["raw_score"], as_uint8["raw_score"], rtol=1e-5)
