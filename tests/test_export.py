"""ONNX and TorchScript exports give the same boxes, scores and masks as the PyTorch model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from instaseg.core.errors import InstasegError
from instaseg.engine.predictor import load
from instaseg.export import OUTPUT_NAMES, export_model, input_size
from tests.test_predict import write_tiny_checkpoint

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture
def predictor(checkpoint):
    loaded = load(checkpoint, device="cpu")
    # A raised score floor makes the number of detections depend on the image, so the tests show
    # the exported graph is not frozen to the detection count seen while tracing.
    loaded.model.roi_heads.score_thresh = 0.4
    return loaded


def _images():
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (64, 64, 3), np.uint8)
    shapes = np.full((64, 64, 3), 40, np.uint8)
    shapes[10:30, 8:40] = (220, 60, 60)
    shapes[38:60, 30:58] = (50, 200, 90)
    return [noise, shapes]


def _reference(predictor, image):
    with torch.no_grad():
        module = predictor.model.export_module(input_size(predictor.model))
        return [t.numpy() for t in module(torch.from_numpy(image))]


def _assert_close(got, expected):
    boxes, class_ids, scores, masks, class_probs = got
    assert len(scores) == len(expected[2])
    np.testing.assert_allclose(boxes, expected[0], atol=1e-3)
    np.testing.assert_array_equal(class_ids, expected[1])
    np.testing.assert_allclose(scores, expected[2], atol=1e-5)
    np.testing.assert_allclose(class_probs, expected[4], atol=1e-5)
    # Pixels exactly at the 0.5 boundary may flip with float rounding; allow a handful.
    assert ((masks > 0.5) != (expected[3] > 0.5)).mean() < 1e-4
    np.testing.assert_allclose(masks, expected[3], atol=1e-4)


def test_onnx_matches_pytorch(predictor, tmp_path):
    export_model(predictor, "onnx", out=tmp_path / "m.onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and session.get_inputs()[0].shape == [64, 64, 3]
    assert [o.name for o in session.get_outputs()] == OUTPUT_NAMES
    assert json.loads(session.get_modelmeta().custom_metadata_map["class_names"]) == ["a", "b"]

    counts = set()
    for image in _images():
        expected = _reference(predictor, image)
        got = session.run(None, {"image": image})
        _assert_close(got, expected)
        counts.add(len(got[2]))
        # The export is the model that Predictor runs: same detections above a threshold.
        threshold = float(np.median(got[2]))
        instances = predictor.predict(image, score_threshold=threshold)
        keep = got[2] >= threshold
        assert 0 < len(instances) == keep.sum()
        np.testing.assert_allclose(instances.scores, got[2][keep], atol=1e-5)
    assert len(counts) == 2 and min(counts) > 0  # different detection counts, both non-empty


def test_cli_export_writes_a_loadable_file(checkpoint, tmp_path, cli):
    r = cli("export", checkpoint, "--format", "torchscript", "--out", tmp_path / "m.torchscript")
    assert r.code == 0, r.stderr
    assert "m.torchscript" in r.stdout
    with torch.no_grad():
        boxes, class_ids, scores, masks, class_probs = torch.jit.load(str(tmp_path / "m.torchscript"))(
            torch.zeros((64, 64, 3), dtype=torch.uint8)
        )
    assert masks.shape[1:] == (64, 64) and class_probs.shape[1] == 2 and len(scores) > 0


def test_predictor_and_export_put_masks_in_the_same_place(predictor):
    # The predictor pastes masks at sub-pixel box positions, the export as torchvision does (boxes
    # rounded to whole pixels). An untrained mask head's output changes from one 28x28 cell to the
    # next, which any sub-pixel shift scrambles, so give it a constant output: each mask is its box.
    logits = predictor.model.roi_heads.mask_predictor.mask_fcn_logits
    with torch.no_grad():
        logits.weight.zero_()
        logits.bias.fill_(3.0)
    image = _images()[1]
    boxes, _, scores, masks, _ = _reference(predictor, image)
    instances = predictor.predict(image, score_threshold=0.0)
    assert len(instances) == len(scores) > 0
    ious = [
        (a & b).sum() / (a | b).sum()
        for a, b, box in zip(instances.masks, masks > 0.5, boxes, strict=True)
        if min(box[2] - box[0], box[3] - box[1]) >= 12
    ]
    # torchvision adds up to 2 px to a box side: IoU (12 / 14)^2 = 0.73 at worst for a 12 px box.
    assert len(ious) >= 3 and min(ious) > 0.73


def test_torchscript_matches_pytorch(predictor, tmp_path):
    path = export_model(predictor, "torchscript", source=tmp_path / "tiny.pt")
    assert path == tmp_path / "tiny.torchscript"
    extra = {"class_names.txt": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    assert extra["class_names.txt"] in ("a\nb", b"a\nb")
    for image in _images():
        with torch.no_grad():
            got = [t.numpy() for t in scripted(torch.from_numpy(image))]
        _assert_close(got, _reference(predictor, image))


def test_export_refuses_bad_requests(checkpoint, tmp_path, cli):
    r = cli("export", checkpoint, "--format", "tflite", "--out", tmp_path / "m")
    assert r.code == 2 and "unknown export format 'tflite'" in r.stderr
    (tmp_path / "m.onnx").write_text("old")
    r = cli("export", checkpoint, "--out", tmp_path / "m.onnx")
    assert r.code == 2 and "already exists" in r.stderr
    assert (tmp_path / "m.onnx").read_text() == "old"
    with pytest.raises(InstasegError, match="--out"):
        export_model(load(checkpoint, device="cpu"), "onnx")


def test_export_leaves_the_shared_model_as_it_was(predictor, tmp_path):
    from tests.test_model_protocol import assert_same_state, module_state

    image = _images()[1]
    expected = predictor.predict(image, score_threshold=0.0)
    before = module_state(predictor.model)
    export_model(predictor, "onnx", out=tmp_path / "m.onnx")
    export_model(predictor, "torchscript", out=tmp_path / "m.torchscript")
    assert_same_state(module_state(predictor.model), before)  # still in eval mode, the same weights
    np.testing.assert_array_equal(predictor.predict(image, score_threshold=0.0).scores, expected.scores)
