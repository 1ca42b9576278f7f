"""Model registry, checkpoints and the Predictor (tiny models and images; no training here)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import instaseg
from instaseg.core.errors import InstasegError
from instaseg.engine import predictor as predictor_module
from instaseg.engine.checkpoint import CHECKPOINT_FORMAT, read_checkpoint, save_checkpoint
from instaseg.engine.predictor import load
from instaseg.models import MODELS, count_parameters, get_model, list_models, register_model
from instaseg.models.maskrcnn import BACKBONES, PRESETS
from tests.test_model_protocol import assert_same_state, module_state

CLASSES = ["circle", "square", "triangle"]
TINY = {"min_size": 64, "max_size": 64, "train_scales": (1.0,), "box_detections_per_img": 10}


def _checkpoint(tmp_path, name="maskrcnn_resnet18_fpn"):
    torch.manual_seed(0)
    kwargs = {**PRESETS["small"], **TINY}
    model = MODELS[name].builder(num_classes=len(CLASSES), **kwargs)
    path = tmp_path / "model.pt"
    save_checkpoint(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "model": model.state_dict(),
            "config": {"model": name, "preset": "small", "kwargs": kwargs, "class_names": CLASSES},
        },
    )
    return path


def test_registry_lists_every_backbone_and_each_builds():
    names = list_models()
    assert names == sorted(names) and instaseg.list_models() == names
    # Tests may register architectures of their own (tests/tiny_architecture.py) beside Mask R-CNN's.
    maskrcnns = [n for n in names if MODELS[n].builder.__module__ == "instaseg.models.maskrcnn"]
    assert {MODELS[n].backbone for n in maskrcnns} == set(BACKBONES)
    counts = {}
    for name in maskrcnns:
        model = get_model(name, 2, preset="cpu")
        real = sum(p.numel() for p in model.parameters())
        # The table's count comes from a meta-device build; it must equal the real model's.
        assert count_parameters(name, 2, "cpu") == real
        assert not any(isinstance(m, torch.nn.BatchNorm2d) and not m.track_running_stats for m in model.modules())
        assert not any("Frozen" in type(m).__name__ for m in model.modules())
        counts[MODELS[name].backbone] = real
    assert counts["resnet18"] < counts["resnet34"] < counts["resnet50"] < counts["resnet101"]
    assert counts["mobilenet_v3_large"] < counts["resnet18"]


def test_gpu_preset_uses_groupnorm_and_unknown_names_are_one_line_errors():
    model = get_model("maskrcnn_resnet18_fpn", 2, preset="gpu")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.backbone.body.modules())
    with pytest.raises(InstasegError, match="unknown model 'nope'; available: maskrcnn_"):
        get_model("nope", 2)
    with pytest.raises(InstasegError, match="no preset 'huge'"):
        get_model("maskrcnn_resnet18_fpn", 2, preset="huge")


def test_register_model_adds_an_entry_and_refuses_duplicates():
    @register_model("test_tiny_linear", description="test only", backbone="none", presets={"cpu": {"width": 3}})
    def build(*, num_classes, width):
        return torch.nn.Linear(width, num_classes)

    try:
        assert get_model("test_tiny_linear", 5, preset="cpu").out_features == 5
        assert count_parameters("test_tiny_linear", 5, "cpu") == 3 * 5 + 5
        with pytest.raises(ValueError, match="registered twice"):
            register_model("test_tiny_linear", description="", backbone="", presets={})(build)
    finally:
        MODELS.pop("test_tiny_linear")


def test_cli_models_lists_all_architectures(cli):
    result = cli("models")
    assert result.code == 0
    for name in list_models():
        assert name in result.stdout.replace("\n", "")


def test_predict_any_image_mode_gives_instances_with_class_probs(tmp_path):
    predictor = load(_checkpoint(tmp_path), device="cpu")
    assert predictor.class_names == tuple(CLASSES)
    path = tmp_path / "gray.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56), dtype=np.uint8)).save(path)
    result = predictor.predict(path, score_threshold=0.0)
    assert result.masks.shape == (len(result), 40, 56)
    assert len(result) > 0  # an untrained model still proposes boxes at threshold 0
    probs = result.data["class_probs"]
    assert probs.shape == (len(result), 3)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    # The top detection is the best class of the proposal it came from.
    top = int(np.argmax(result.scores))
    assert int(np.argmax(probs[top])) == result.class_ids[top]
    only = predictor.predict(path, score_threshold=0.0, classes=["square"])
    assert set(only.class_labels) <= {"square"}
    with pytest.raises(InstasegError, match="unknown class 'hexagon'"):
        predictor.predict(path, classes=["hexagon"])


def test_max_detections_raises_the_cap_for_one_call_only(tmp_path):
    predictor = load(_checkpoint(tmp_path), device="cpu")  # the checkpoint caps detections at 10
    image = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    before = module_state(predictor.model)
    assert len(predictor.predict(image, score_threshold=0.0)) == 10
    crowded = predictor.predict(image, score_threshold=0.0, max_detections=40)
    assert 10 < len(crowded) <= 40
    assert len(predictor.predict(image, score_threshold=0.0, max_detections=3)) == 3
    assert_same_state(module_state(predictor.model), before)
    with pytest.raises(InstasegError, match="max_detections must be at least 1"):
        predictor.predict(image, max_detections=0)


def test_object_size_outside_the_trained_range_rescales_the_image(tmp_path, monkeypatch):
    predictor = load(_checkpoint(tmp_path), device="cpu")  # min_size = max_size = 64: a 48x64 image stays as it is
    model = predictor.model
    inputs = []

    def recording(method):
        def call(images, *args, scales, **kw):
            (height, width), scale = images[0].shape[-2:], scales[0]
            inputs.append((round(height * scale), round(width * scale)))  # the size the model resizes to
            return method(images, *args, scales=scales, **kw)

        return call

    monkeypatch.setattr(model, "detect", recording(model.detect))
    monkeypatch.setattr(model, "predict_boxes", recording(model.predict_boxes))
    image = np.random.default_rng(4).integers(0, 255, (48, 64, 3), dtype=np.uint8)

    def input_after(**kw):
        inputs.clear()
        result = predictor.predict(image, score_threshold=0.0, **kw)
        assert result.masks.shape[1:] == (48, 64) and result.boxes[:, 2:].max(initial=0) <= 64.01
        return inputs[0]

    assert input_after(object_size=5.0) == (48, 64)  # the checkpoint records no training object sizes
    predictor.object_sizes = (15.0, 25.0)
    assert input_after() == (48, 64)
    assert input_after(object_size=20.0) == (48, 64)  # a size the model knows: left alone
    assert input_after(object_size=10.0) == (72, 96)  # brought up to 15
    assert input_after(object_size=50.0) == (24, 32)  # brought down to 25
    assert input_after(object_size=0.5) == (192, 256)  # at most 4x the model's own size
    monkeypatch.setattr(predictor_module, "MAX_INFERENCE_SIDE", 128)
    assert input_after(object_size=0.5) == (96, 128)  # and never past the largest inference side
    monkeypatch.setattr(predictor_module, "MAX_INFERENCE_SIDE", 4096)
    inputs.clear()
    predictor.classify_boxes(image, np.array([[2, 2, 20, 20]]), object_size=10.0)
    assert inputs == [(72, 96)]


def test_large_images_are_shrunk_for_inference_and_results_mapped_back(tmp_path, monkeypatch):
    predictor = load(_checkpoint(tmp_path), device="cpu")
    monkeypatch.setattr(predictor_module, "MAX_INFERENCE_SIDE", 64)
    image = np.random.default_rng(1).integers(0, 255, (96, 160, 3), dtype=np.uint8)
    with pytest.warns(UserWarning, match="160x96"):
        result = predictor.predict(image, score_threshold=0.0)
    assert result.masks.shape[1:] == (96, 160)
    assert len(result) and result.boxes[:, 2].max() <= 160.01 and result.boxes[:, 3].max() <= 96.01


def test_classify_boxes_gives_background_then_class_probabilities_per_box(tmp_path):
    predictor = load(_checkpoint(tmp_path), device="cpu")
    cls_score = predictor.model.roi_heads.box_predictor.cls_score
    logits = torch.tensor([2.0, 0.0, 1.0, -1.0])  # background, circle, square, triangle
    with torch.no_grad():
        cls_score.weight.zero_()
        cls_score.bias.copy_(logits)
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    probs = predictor.classify_boxes(image, np.array([[0, 0, 10, 10], [5, 5, 70, 40]], np.float32))
    assert probs.shape == (2, 4)
    assert np.allclose(probs, torch.softmax(logits, 0).numpy(), atol=1e-6)


def test_classify_boxes_on_a_huge_image_judges_the_shrunk_image(tmp_path, monkeypatch):
    predictor = load(_checkpoint(tmp_path), device="cpu")
    image = np.random.default_rng(2).integers(0, 255, (96, 160, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 100, 80], [0, 0, 160, 96]], np.float32)
    monkeypatch.setattr(predictor_module, "MAX_INFERENCE_SIDE", 64)
    with pytest.warns(UserWarning, match="160x96"):
        judged = predictor.classify_boxes(image, boxes)
    monkeypatch.setattr(predictor_module, "MAX_INFERENCE_SIDE", 4096)
    shrunk = cv2.resize(image, (64, 38), interpolation=cv2.INTER_AREA)  # scale 64 / 160 = 0.4
    assert np.allclose(judged, predictor.classify_boxes(shrunk, boxes * 0.4), atol=1e-5)


def test_classify_boxes_augmented_averages_own_and_largest_training_size_and_mirrors(tmp_path):
    torch.manual_seed(0)
    jittered = {**PRESETS["small"], **TINY, "min_size": 48, "train_scales": (0.75, 1.0, 4 / 3)}  # 36, 48, 64 px
    state = MODELS["maskrcnn_resnet18_fpn"].builder(num_classes=len(CLASSES), **jittered).state_dict()

    def predictor_with(kwargs, name):
        path = tmp_path / name
        save_checkpoint(
            path,
            {
                "format": CHECKPOINT_FORMAT,
                "version": 1,
                "model": state,
                "config": {
                    "model": "maskrcnn_resnet18_fpn",
                    "preset": "small",
                    "kwargs": kwargs,
                    "class_names": CLASSES,
                },
            },
        )
        return load(path, device="cpu")

    image = np.random.default_rng(3).integers(0, 255, (48, 56, 3), dtype=np.uint8)  # max_size 64 leaves room
    boxes = np.array([[4, 6, 30, 40], [34, 0, 56, 20]], np.float32)
    mirrored_image = np.ascontiguousarray(image[:, ::-1])
    mirrored_boxes = np.stack([56 - boxes[:, 2], boxes[:, 1], 56 - boxes[:, 0], boxes[:, 3]], 1)
    views = []
    for size in (48, 64):  # the same weights, run at one size each; the smallest size is left out
        # (the jittered model's max_size grows with its largest scale: 64 x 4/3 = 85)
        single = predictor_with({**jittered, "min_size": size, "max_size": 85, "train_scales": (1.0,)}, f"{size}.pt")
        views += [single.classify_boxes(image, boxes), single.classify_boxes(mirrored_image, mirrored_boxes)]
    augmented = predictor_with(jittered, "jittered.pt").classify_boxes(image, boxes, augment=True)
    assert np.allclose(augmented, np.mean(views, 0), atol=1e-5)
    assert not np.allclose(views[0], views[2], atol=1e-3)  # the sizes do differ


def test_checkpoint_write_is_atomic_when_killed(tmp_path, monkeypatch):
    path = _checkpoint(tmp_path)
    before = path.read_bytes()

    def killed_midway(obj, target):
        with open(target, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"anything": 1})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert read_checkpoint(path)["config"]["class_names"] == CLASSES


def test_bad_checkpoint_files_are_one_line_errors(tmp_path):
    with pytest.raises(InstasegError, match="checkpoint not found"):
        load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InstasegError, match="not a readable PyTorch checkpoint"):
        load(junk)
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    with pytest.raises(InstasegError, match="not an instaseg checkpoint"):
        load(plain)
