"""One Predictor shared by 8 threads at once, each with its own options, gives the sequential results."""

from __future__ import annotations

import threading

import numpy as np
import torch

from instaseg.engine.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from instaseg.engine.predictor import load
from instaseg.models import MODELS
from instaseg.models.maskrcnn import PRESETS

CLASSES = ["circle", "square", "triangle"]
KWARGS = {**PRESETS["small"], "min_size": 64, "max_size": 96, "train_scales": (0.75, 1.0), "box_detections_per_img": 10}
THREADS = 8

# Per thread: an image size and what to ask; every option differs from its neighbours'.
CALLS = [
    ((64, 64), "predict", {"score_threshold": 0.0}),
    ((48, 80), "predict", {"score_threshold": 0.3, "max_detections": 25}),
    ((72, 56), "predict", {"score_threshold": 0.0, "max_detections": 3}),
    ((64, 96), "predict", {"score_threshold": 0.05, "classes": ["square", "triangle"]}),
    ((40, 64), "predict", {"score_threshold": 0.0, "object_size": 6.0}),
    ((96, 64), "predict", {"score_threshold": 0.1, "object_size": 60.0, "max_detections": 40}),
    ((56, 72), "classify_boxes", {"augment": True}),
    ((64, 80), "classify_boxes", {"augment": False, "object_size": 8.0}),
]


def _predictor(tmp_path):
    torch.manual_seed(0)
    model = MODELS["maskrcnn_resnet18_fpn"].builder(num_classes=len(CLASSES), **KWARGS)
    config = {
        "model": "maskrcnn_resnet18_fpn",
        "preset": "small",
        "kwargs": KWARGS,
        "class_names": CLASSES,
        "object_sizes": [15.0, 25.0],
    }
    path = save_checkpoint(
        tmp_path / "model.pt",
        {"format": CHECKPOINT_FORMAT, "version": 1, "model": model.state_dict(), "config": config},
    )
    return load(path, device="cpu")


def _call(predictor, index):
    (height, width), method, options = CALLS[index]
    image = np.random.default_rng(index).integers(0, 256, (height, width, 3), np.uint8)
    if method == "classify_boxes":
        boxes = np.array([[2, 3, width / 2, height / 2], [width / 3, height / 4, width - 1, height - 2]], np.float32)
        return [predictor.classify_boxes(image, boxes, **options)]
    found = predictor.predict(image, **options)
    return [found.boxes, found.masks, found.class_ids, found.scores, found.data["class_probs"]]


def _work(predictor, index, start, results, errors):
    try:
        start.wait()
        results[index] = _call(predictor, index)
    except Exception as exc:  # reported by the test: pytest does not see a thread's exceptions
        errors.append(exc)


def test_eight_threads_with_different_options_get_the_sequential_results(tmp_path):
    predictor = _predictor(tmp_path)
    expected = [_call(predictor, i) for i in range(THREADS)]
    assert sum(len(result[0]) for result in expected[:6]) > 0

    for _ in range(3):  # several rounds, each started at once
        results: list = [None] * THREADS
        errors: list = []
        start = threading.Barrier(THREADS)
        threads = [threading.Thread(target=_work, args=(predictor, i, start, results, errors)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for index, (got, wanted) in enumerate(zip(results, expected, strict=True)):
            assert len(got) == len(wanted)
            for a, b in zip(got, wanted, strict=True):
                assert a.shape == b.shape and np.array_equal(a, b), CALLS[index]
