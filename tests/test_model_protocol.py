"""The model protocol: per-call options never touch the model, and a new architecture goes through every verb."""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import tests.tiny_architecture as tiny_architecture
from instaseg.core.masks import paste
from instaseg.data import Dataset
from instaseg.engine.predictor import Predictor, load
from instaseg.models import MODELS
from instaseg.models.base import InstanceSegmenter
from instaseg.models.maskrcnn import PRESETS

CLASSES = ["circle", "square", "triangle"]
TINY_MASKRCNN = {
    **PRESETS["small"],
    "min_size": 64,
    "max_size": 64,
    "train_scales": (1.0,),
    "box_detections_per_img": 10,
}


def module_state(model: torch.nn.Module) -> dict:
    """A deep copy of the weights and of every attribute of every submodule (besides its children)."""
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "attributes": {
            name: {k: copy.deepcopy(v) for k, v in vars(module).items() if k != "_modules"}
            for name, module in model.named_modules()
        },
    }


def assert_same_state(after: dict, before: dict) -> None:
    """Every weight and attribute of ``module_state`` is as before."""
    assert after["weights"].keys() == before["weights"].keys()
    for key, tensor in before["weights"].items():
        assert torch.equal(after["weights"][key], tensor), key
    assert after["attributes"].keys() == before["attributes"].keys()
    for name, attributes in before["attributes"].items():
        assert after["attributes"][name].keys() == attributes.keys(), name
        for key, value in attributes.items():
            assert _same(after["attributes"][name][key], value), (name, key)


def _same(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if hasattr(a, "__dict__") and type(a) is type(b):  # helper objects such as torchvision's BoxCoder
        return _same(vars(a), vars(b))
    return a == b


@contextmanager
def attribute_writes(model: torch.nn.Module):
    """Record (module name, attribute) of every attribute set on ``model``'s submodules inside the block."""
    names = {id(module): name for name, module in model.named_modules()}
    writes: list[tuple[str, str]] = []
    original = torch.nn.Module.__setattr__

    def recording(module, key, value):
        if id(module) in names:
            writes.append((names[id(module)], key))
        original(module, key, value)

    torch.nn.Module.__setattr__ = recording
    try:
        yield writes
    finally:
        torch.nn.Module.__setattr__ = original


def tiny_maskrcnn() -> InstanceSegmenter:
    torch.manual_seed(0)
    return MODELS["maskrcnn_resnet18_fpn"].builder(num_classes=len(CLASSES), **TINY_MASKRCNN).eval()


def tiny_segmenter() -> InstanceSegmenter:
    torch.manual_seed(0)
    return tiny_architecture.tiny_test_segmenter(num_classes=len(CLASSES), **tiny_architecture.PRESET).eval()


def _image(seed: int, height: int = 48, width: int = 64) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((3, height, width), np.float32))


@pytest.mark.parametrize("build", [tiny_maskrcnn, tiny_segmenter], ids=["maskrcnn", "tiny"])
def test_options_never_write_to_the_model(build):
    model = build()
    images = [_image(0), _image(1, 70, 40)]
    boxes = [torch.tensor([[2.0, 3.0, 30.0, 40.0]]), torch.tensor([[0.0, 0.0, 40.0, 70.0], [5.0, 5.0, 9.0, 9.0]])]
    before = module_state(model)
    with torch.inference_mode(), attribute_writes(model) as writes:
        for options in (
            {},
            {"score_threshold": 0.0},
            {"score_threshold": 0.9},
            {"max_detections": 3},
            {"max_detections": 40, "score_threshold": 0.0},
            {"scales": [0.5, 2.0]},
        ):
            model.detect(images, **options)
        model.predict_boxes(images, boxes)
        model.predict_boxes(images, boxes, scales=[1.5, 0.75])
    assert writes == []
    assert_same_state(module_state(model), before)


def test_the_recorder_sees_torchvisions_own_per_call_writes():
    """The old way (options set on the modules, torchvision's forward) is what the test above rules out."""
    model = tiny_maskrcnn()
    with torch.inference_mode(), attribute_writes(model) as writes:
        model.roi_heads.score_thresh = 0.3
        model([_image(0)])
    assert ("roi_heads", "score_thresh") in writes
    assert ("rpn.anchor_generator", "cell_anchors") in writes  # torchvision moves its anchors on every call


def test_a_smaller_cap_is_the_top_of_the_default_and_a_higher_threshold_its_head():
    model = tiny_maskrcnn()  # caps detections at 10
    image = _image(2, 64, 64)
    with torch.inference_mode():
        full = model.detect([image], score_threshold=0.0)[0]
        assert len(full.scores) == 10 and torch.all(full.scores[:-1] >= full.scores[1:])
        for cap in (1, 3, 7):
            top = model.detect([image], score_threshold=0.0, max_detections=cap)[0]
            for field in ("boxes", "class_ids", "scores", "class_probs"):
                assert torch.equal(getattr(top, field), getattr(full, field)[:cap]), (cap, field)
            # The mask head runs on fewer boxes, which may change the order of float operations.
            assert torch.allclose(top.masks, full.masks[:cap], atol=1e-6)
        threshold = float(full.scores[4])
        head = model.detect([image], score_threshold=threshold)[0]
        assert 0 < len(head.scores) < 5 and torch.all(head.scores > threshold)
        assert torch.equal(head.boxes, full.boxes[: len(head.scores)])
        crowded = model.detect([image], score_threshold=0.0, max_detections=40)[0]
        assert 10 < len(crowded.scores) <= 40


def test_detections_carry_the_masks_predict_boxes_gives_for_their_boxes():
    model = tiny_maskrcnn()
    image = _image(3, 64, 64)
    with torch.inference_mode():
        found = model.detect([image], score_threshold=0.0)[0]
        given = model.predict_boxes([image], [found.boxes])[0]
    assert given.class_probs.shape == (10, 1 + len(CLASSES))
    assert torch.allclose(given.class_probs.sum(1), torch.ones(10), atol=1e-5)
    assert given.masks.shape == (10, len(CLASSES), 28, 28)
    own_class = given.masks[torch.arange(10), found.class_ids]
    assert torch.allclose(own_class, found.masks, atol=1e-5)


# -- the tiny architecture through every verb ------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from tests.conftest import run_cli

    root = tmp_path_factory.mktemp("tiny")
    result = run_cli("synth", root / "data", "--num-train", "6", "--num-val", "3", "--size", "64")
    assert result.code == 0, result.stderr
    return root


def test_tiny_architecture_trains_predicts_evaluates_reviews_and_exports(synthetic, cli):
    ort = pytest.importorskip("onnxruntime")
    data, run = synthetic / "data", synthetic / "run"
    trained = cli(
        "train",
        data / "train.json",
        "--model",
        "tiny_test_segmenter",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--out",
        run,
    )
    assert trained.code == 0, trained.stdout + trained.stderr
    assert torch.load(run / "best.pt", weights_only=True)["config"]["model"] == "tiny_test_segmenter"
    predictor = load(run / "best.pt", device="cpu")
    assert isinstance(predictor.model, tiny_architecture.TinySegmenter)

    predicted = cli(
        "predict", run / "best.pt", data / "val", "--score", "0.0", "--out", synthetic / "pred", "--no-overlays"
    )
    assert predicted.code == 0, predicted.stderr
    predictions = Dataset.load(synthetic / "pred" / "predictions.json")
    assert len(predictions.images) == 3 and len(predictions.annotations) > 0
    first = predictions.images[0]
    expected = predictor.predict(data / "val" / first["file_name"], score_threshold=0.0)
    assert len(predictions.annotations_by_image.get(first["id"], [])) == len(expected)

    evaluated = cli("eval", data / "val.json", synthetic / "pred" / "predictions.json")
    assert evaluated.code == 0, evaluated.stderr
    assert "AP" in evaluated.stdout

    reviewed = cli(
        "review", data / "val.json", "--model", run / "best.pt", "--out", synthetic / "review", "--max-pictures", "1"
    )
    assert reviewed.code == 0, reviewed.stderr
    review = json.loads((synthetic / "review" / "review.json").read_text())
    assert "suggestions" in review

    exported = cli("export", run / "best.pt", "--format", "onnx", "--out", synthetic / "tiny.onnx")
    assert exported.code == 0, exported.stderr
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(synthetic / "tiny.onnx"), options, providers=["CPUExecutionProvider"])
    size = predictor.model.input_sizes.short_side
    assert session.get_inputs()[0].shape == [size, size, 3]
    module = predictor.model.to("cpu").export_module(size)
    counts = set()
    for seed in range(3):
        image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)
        got = session.run(None, {"image": image})
        with torch.inference_mode():
            expected = [t.numpy() for t in module(torch.from_numpy(image))]
        assert len(got[2]) == len(expected[2])
        counts.add(len(got[2]))
        for ours, theirs in zip(got, expected, strict=True):
            np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert max(counts) > 0


def test_box_masks_are_the_mask_of_the_chosen_class_over_each_box():
    model = tiny_maskrcnn()
    heads = model.roi_heads
    with torch.no_grad():  # constant heads: masks fill their box for classes 0 and 2, are empty for class 1
        heads.mask_predictor.mask_fcn_logits.weight.zero_()
        heads.mask_predictor.mask_fcn_logits.bias.copy_(torch.tensor([0.0, 6.0, -6.0, 6.0]))
        heads.box_predictor.cls_score.weight.zero_()
        heads.box_predictor.cls_score.bias.copy_(torch.tensor([0.0, 1.0, 2.0, 1.0]))  # class 1 most probable
    predictor = Predictor(model, CLASSES, device="cpu")
    pixels = (np.random.default_rng(5).random((48, 64, 3)) * 255).astype(np.uint8)
    boxes = np.array([[4, 6, 30, 40], [20.5, 10.5, 60, 44]], np.float32)
    filled = paste(np.full((2, 28, 28), 1 / (1 + np.exp(-6.0)), np.float32), boxes, 48, 64)
    yy, xx = np.mgrid[:48, :64] + 0.5
    inside = np.stack([(xx > x0) & (xx < x1) & (yy > y0) & (yy < y1) for x0, y0, x1, y1 in boxes])
    assert ((filled & inside).sum((1, 2)) / (filled | inside).sum((1, 2)) > 0.9).all()

    masks = predictor.box_masks(pixels, boxes, class_ids=[0, 2])
    assert masks.shape == (2, 48, 64) and masks.dtype == bool
    assert np.array_equal(masks, filled)
    assert not predictor.box_masks(pixels, boxes, class_ids=[1, 1]).any()
    assert not predictor.box_masks(pixels, boxes).any()  # class 1, the most probable, by default
    assert np.array_equal(predictor.box_masks(pixels, boxes, class_ids=[0, 1]), filled * [[[True]], [[False]]])
    assert predictor.box_masks(pixels, np.zeros((0, 4), np.float32)).shape == (0, 48, 64)
