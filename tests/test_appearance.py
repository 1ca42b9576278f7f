"""The image's own look as a witness of its labels (``instaseg.review.appearance``), on painted images with known answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from instaseg.core import masks as mask_ops
from instaseg.core.structures import Instances
from instaseg.data import Dataset
from instaseg.review import appearance as look_module
from instaseg.review import review
from instaseg.review.appearance import appearance, object_likeness, outline_fit, unlabelled_objects

SIZE = 96
CENTRES = [(14, 14), (14, 48), (14, 82), (48, 14), (48, 48), (48, 82), (82, 14), (82, 48), (82, 82)]
RADIUS = 7


def disc(cy, cx, r=RADIUS):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


OBJECTS = [disc(cy, cx) for cy, cx in CENTRES]


def painted(objects, levels=None, seed=0):
    """An RGB image of discs (grey level 190, or ``levels``) on a darker, noisy background."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(50, 8, (SIZE, SIZE))
    for k, mask in enumerate(objects):
        pixels[mask] = (levels[k] if levels is not None else 190) + rng.normal(0, 8, int(mask.sum()))
    return np.repeat(pixels.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


def mask_iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_an_object_left_unlabelled_looks_like_the_labelled_ones():
    labels = np.stack(OBJECTS[:-1])  # the last disc is left unlabelled
    found = appearance(painted(OBJECTS), labels, object_side=2 * RADIUS)
    assert found.probability.shape == (SIZE, SIZE)
    assert found.reliability > 0.8
    regions = unlabelled_objects(found, labels)
    assert regions, "the unlabelled disc is an object-like region"
    best, score = regions[0]
    assert mask_iou(best, OBJECTS[-1]) > 0.7 and score > 0.5
    assert all(s < 0.1 for _, s in regions[1:]), "nothing else in the image looks like an object"


def test_a_label_on_empty_background_looks_unlike_the_objects():
    spurious = disc(31, 31, 6)  # between the discs, where there is only background
    labels = np.stack(OBJECTS + [spurious])
    found = appearance(painted(OBJECTS), labels, object_side=2 * RADIUS)
    # Cross-fitted: the half of the labels holding the spurious one is judged by the other half, and back.
    assert object_likeness(found, spurious) < 0.2
    assert min(object_likeness(found, m) for m in OBJECTS) > 0.7


def test_outline_fit_is_highest_on_the_objects_own_outline():
    target = OBJECTS[4]
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    too_large = cv2.dilate(target.astype(np.uint8), kernel).astype(bool)
    too_small = cv2.erode(target.astype(np.uint8), kernel).astype(bool)
    shifted = np.roll(target, 3, axis=1)
    fits = {}
    for name, drawn in {"own": target, "too_large": too_large, "too_small": too_small, "shifted": shifted}.items():
        labels = np.stack(OBJECTS[:4] + [drawn] + OBJECTS[5:])
        found = appearance(painted(OBJECTS), labels, object_side=2 * RADIUS)
        fits[name] = outline_fit(found, drawn, labels.any(0))
    assert fits["own"] > 0.5
    assert max(fits["too_large"], fits["too_small"], fits["shifted"]) < fits["own"] - 0.2, fits
    assert outline_fit(found, np.zeros((SIZE, SIZE), bool), labels.any(0)) is None


def test_reliability_is_low_where_the_image_does_not_show_the_objects():
    # Discs of the background's own grey and noise: nothing in the image tells them apart.
    found = appearance(painted(OBJECTS, [50] * len(OBJECTS)), np.stack(OBJECTS), object_side=2 * RADIUS)
    assert found.reliability < 0.2
    assert all(score < 0.2 for _, score in unlabelled_objects(found, np.stack(OBJECTS[:-1])))


def test_too_few_labels_give_no_witness():
    assert appearance(painted(OBJECTS), np.stack(OBJECTS[:1]), object_side=2 * RADIUS) is None
    assert appearance(painted(OBJECTS), np.zeros((0, SIZE, SIZE), bool), object_side=2 * RADIUS) is None


def test_large_images_are_judged_at_a_reduced_size(monkeypatch):
    labels = np.stack(OBJECTS[:-1])
    full = appearance(painted(OBJECTS), labels, object_side=2 * RADIUS)
    monkeypatch.setattr(look_module, "MAX_PIXELS", SIZE * SIZE // 4)
    reduced = appearance(painted(OBJECTS), labels, object_side=2 * RADIUS)
    assert reduced.probability.shape == (SIZE, SIZE) and reduced.object_side == full.object_side
    assert reduced.reliability == pytest.approx(full.reliability, abs=0.1)
    assert mask_iou(unlabelled_objects(reduced, labels)[0][0], OBJECTS[-1]) > 0.5


def _dataset(masks, class_name="cell"):
    annotations = []
    for k, mask in enumerate(masks, start=1):
        rle = mask_ops.encode(mask)
        annotations.append(
            {
                "id": k,
                "image_id": 1,
                "category_id": 1,
                "segmentation": rle,
                "area": mask_ops.area(rle),
                "bbox": mask_ops.bbox(rle),
                "iscrowd": 0,
            }
        )
    return Dataset(
        {
            "images": [{"id": 1, "file_name": "a.png", "width": SIZE, "height": SIZE}],
            "annotations": annotations,
            "categories": [{"id": 1, "name": class_name}],
        }
    )


def test_review_suggests_an_object_the_model_missed_but_the_image_shows():
    labelled = OBJECTS[:-1]
    dataset = _dataset(labelled)
    # The model finds every labelled disc and misses the unlabelled one.
    model = Instances.from_masks(np.stack(labelled), [0] * len(labelled), [0.95] * len(labelled), ("cell",))
    blind, _ = review(dataset, {1: model})
    assert not [s for s in blind if s.type == "missing_label"]
    seeing, _ = review(dataset, {1: model}, read_image=lambda image: painted(OBJECTS))
    missing = [s for s in seeing if s.type == "missing_label"]
    assert len(missing) == 1 and missing[0].suggested_class == "cell" and missing[0].confidence is None
    assert mask_iou(mask_ops.decode(missing[0].suggested_segmentation, SIZE, SIZE), OBJECTS[-1]) > 0.7
    assert missing[0].score > 0.5 and missing[0].evidence["image_look"] == pytest.approx(missing[0].score)


def test_model_and_image_agreeing_on_a_missing_object_make_it_surer():
    labelled = OBJECTS[:-1]
    dataset = _dataset(labelled)
    doubtful = Instances.from_masks(np.stack(OBJECTS), [0] * len(OBJECTS), [0.95] * len(labelled) + [0.4], ("cell",))
    alone, _ = review(dataset, {1: doubtful})
    both, _ = review(dataset, {1: doubtful}, read_image=lambda image: painted(OBJECTS))
    [model_only] = [s for s in alone if s.type == "missing_label"]
    [agreed] = [s for s in both if s.type == "missing_label"]
    assert model_only.score == pytest.approx(0.4, abs=1e-3)
    assert agreed.score > model_only.score and agreed.confidence == pytest.approx(0.4)
    assert (mask_ops.decode(agreed.suggested_segmentation, SIZE, SIZE) == OBJECTS[-1]).all(), (
        "the model's mask is the fix"
    )


def test_extra_label_on_background_the_image_confirms():
    spurious = disc(31, 31, 6)
    dataset = _dataset(OBJECTS + [spurious])
    model = Instances.from_masks(np.stack(OBJECTS), [0] * len(OBJECTS), [0.95] * len(OBJECTS), ("cell",))
    seeing, _ = review(dataset, {1: model}, read_image=lambda image: painted(OBJECTS))
    [extra] = [s for s in seeing if s.type == "extra_label"]
    assert extra.annotation_id == len(OBJECTS) + 1
    assert extra.evidence["background_look"] > 0.8 and extra.evidence["look_reliability"] > 0.8


def test_an_unlabelled_object_inside_a_crowd_region_is_no_missing_label():
    dataset = _dataset(OBJECTS[:-1] + [disc(82, 82, 10)])
    dataset.coco["annotations"][-1]["iscrowd"] = 1  # "a crowd of objects here", not to be labelled one by one
    model = Instances.from_masks(
        np.stack(OBJECTS[:-1]), [0] * (len(OBJECTS) - 1), [0.95] * (len(OBJECTS) - 1), ("cell",)
    )
    seeing, _ = review(dataset, {1: model}, read_image=lambda image: painted(OBJECTS))
    assert not [s for s in seeing if s.type == "missing_label"]
