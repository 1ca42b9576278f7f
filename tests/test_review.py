"""Label review: each suggestion type on hand-made cases with a known answer, the report, and ``review apply``."""

from __future__ import annotations

import copy
import csv
import json
import sys
import types

import cv2
import numpy as np
import pytest
from PIL import Image

import instaseg
from instaseg.core import io
from instaseg.core import masks as mask_ops
from instaseg.core.structures import Instances
from instaseg.data import Dataset
from instaseg.data.stats import object_size
from instaseg.engine.checkpoint import read_checkpoint
from instaseg.review import apply_review, review
from instaseg.review.score import ReviewSettings, boundary_band, boundary_iou, edge_alignment, image_edges
from instaseg.review.sources import assign_folds, out_of_fold_predictions, seen_warning, training_image_digests

H = W = 64
CLASSES = ("cat", "dog")


def disc(cy, cx, r):
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_dataset(objects_per_image, root="."):
    """objects_per_image: list (per image) of lists of (mask, class_name, extra annotation keys)."""
    images, annotations = [], []
    for image_id, objects in enumerate(objects_per_image, start=1):
        images.append({"id": image_id, "file_name": f"img{image_id}.png", "width": W, "height": H})
        for mask, name, *extra in objects:
            rle = mask_ops.encode(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CLASSES.index(name) + 1,
                    "segmentation": rle,
                    "area": mask_ops.area(rle),
                    "bbox": mask_ops.bbox(rle),
                    "iscrowd": 0,
                    **(extra[0] if extra else {}),
                }
            )
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]
    return Dataset({"images": images, "annotations": annotations, "categories": categories}, root)


def preds(*objects, class_names=CLASSES, probs=None):
    """Predicted Instances from (mask, class_name, score) triples."""
    masks = np.stack([m for m, _, _ in objects]) if objects else np.zeros((0, H, W), bool)
    data = {"class_probs": np.asarray(probs, np.float32)} if probs is not None else {}
    return Instances.from_masks(
        masks, [class_names.index(c) for _, c, _ in objects], [s for _, _, s in objects], class_names, **data
    )


def of_type(suggestions, kind):
    return [s for s in suggestions if s.type == kind]


A, B, C = disc(16, 16, 8), disc(44, 44, 9), disc(16, 46, 7)


def test_missing_label_is_the_confident_unlabelled_prediction():
    ds = make_dataset([[(A, "cat")]])
    suggestions, _ = review(ds, {1: preds((A, "cat", 0.95), (B, "dog", 0.9))})
    assert [s.type for s in suggestions] == ["missing_label"]
    missing = suggestions[0]
    assert missing.score == pytest.approx(0.9, abs=1e-3)
    assert missing.suggested_class == "dog" and missing.annotation_id is None
    assert (mask_ops.decode(missing.suggested_segmentation, H, W) == B).all()


def test_the_models_second_look_at_a_predicted_box_scales_its_missing_score():
    ds = make_dataset([[(A, "cat")]])
    predicted = preds((A, "cat", 0.95), (B, "dog", 0.9), (C, "dog", 0.8))
    predicted.data["box_score"] = np.array([0.9, 0.2, 0.95], np.float32)  # a second look doubts B
    suggestions, _ = review(ds, {1: predicted})
    missing = of_type(suggestions, "missing_label")
    assert [round(s.score, 3) for s in missing] == [round(0.8 * 0.95, 3), round(0.9 * 0.2, 3)]
    assert (mask_ops.decode(missing[0].suggested_segmentation, H, W) == C).all()
    assert missing[1].evidence["box_score"] == pytest.approx(0.2)


def test_one_missing_object_predicted_twice_with_two_classes_is_one_suggestion():
    ds = make_dataset([[(A, "cat")]])
    suggestions, _ = review(ds, {1: preds((A, "cat", 0.95), (B, "dog", 0.9), (B, "cat", 0.2))})
    assert len(of_type(suggestions, "missing_label")) == 1


def test_prediction_inside_a_crowd_region_is_not_a_missing_label():
    crowd = disc(44, 44, 14)
    ds = make_dataset([[(A, "cat"), (crowd, "dog", {"iscrowd": 1})]])
    suggestions, _ = review(ds, {1: preds((A, "cat", 0.95), (B, "dog", 0.9))})
    assert of_type(suggestions, "missing_label") == []


def test_extra_label_is_the_label_no_prediction_supports():
    ds = make_dataset([[(A, "cat"), (C, "cat")]])
    suggestions, _ = review(ds, {1: preds((A, "cat", 0.95))})
    assert [(s.type, s.annotation_id) for s in suggestions] == [("extra_label", 2)]
    assert suggestions[0].score == pytest.approx(0.95, abs=1e-3)


def test_extra_label_uses_the_models_verdict_on_the_labels_box():
    # Neither label has a detection; the model calls the first box background and the second a cat
    # (e.g. an object it did not detect), so the first is the likelier extra label.
    ds = make_dataset([[(A, "cat"), (C, "cat"), (B, "dog")]])
    label_probs = {1: np.array([0.9, 0.05, 0.05]), 2: np.array([0.2, 0.7, 0.1]), 3: np.array([0.0, 0.0, 1.0])}
    suggestions, _ = review(ds, {1: preds((B, "dog", 0.95))}, label_probs=label_probs)
    extra = of_type(suggestions, "extra_label")
    # (1 - support) x the image's top confidence x p(background)^0.25
    assert [(s.annotation_id, s.score) for s in extra] == [
        (1, pytest.approx(0.95 * 0.9**0.25, abs=1e-3)),
        (2, pytest.approx(0.95 * 0.2**0.25, abs=1e-3)),
    ]
    assert extra[0].evidence == {"support": 0.0, "image_trust": 0.95, "p_background": 0.9}
    # At full weight the verdict scales the score as it is.
    full, _ = review(ds, {1: preds((B, "dog", 0.95))}, ReviewSettings(background_weight=1.0), label_probs)
    assert [s.score for s in of_type(full, "extra_label")] == [
        pytest.approx(0.855, abs=1e-3),
        pytest.approx(0.19, abs=1e-3),
    ]


def test_extra_label_counts_less_where_the_model_backs_few_of_the_other_labels():
    # Image 1: the model backs three of four labels, so its doubt about the fourth counts in full.
    # Image 2: it backs none of four labels and finds an unlabelled object: failing on this image.
    D = disc(48, 12, 6)
    ds = make_dataset([[(A, "cat"), (B, "dog"), (C, "cat"), (D, "dog")]] * 2)
    backed = preds((A, "cat", 0.95), (B, "dog", 0.95), (C, "cat", 0.95))
    elsewhere = preds((disc(40, 30, 5), "cat", 0.95))
    extra = of_type(review(ds, {1: backed, 2: elsewhere})[0], "extra_label")
    assert [(s.image_id, s.annotation_id) for s in extra][0] == (1, 4)
    assert extra[0].score == pytest.approx(0.95, abs=1e-3)
    # 0.95 x (others' mean support, the top confidence standing in for its own: 0.95 / 4) / 0.5
    assert [s.score for s in extra[1:]] == [pytest.approx(0.95 * 0.95 / 4 / 0.5, abs=1e-3)] * 4
    assert extra[1].evidence["image_trust"] == pytest.approx(0.95 * 0.95 / 4 / 0.5, abs=1e-4)
    assert sorted(s.annotation_id for s in extra[1:]) == [5, 6, 7, 8]


def test_no_extra_label_when_the_model_sees_nothing_in_the_image():
    ds = make_dataset([[(A, "cat")]])
    suggestions, _ = review(ds, {1: preds()})
    assert suggestions == []


def test_wrong_class_from_class_probabilities():
    ds = make_dataset([[(A, "cat"), (B, "dog")]])
    predicted = preds((A, "dog", 0.9), (B, "dog", 0.9), probs=[[0.1, 0.9], [0.05, 0.95]])
    suggestions, _ = review(ds, {1: predicted})
    assert [(s.type, s.annotation_id, s.suggested_class) for s in suggestions] == [("wrong_class", 1, "dog")]
    assert suggestions[0].score == pytest.approx(0.8, abs=1e-3)


def test_wrong_class_is_decided_by_the_verdict_on_the_labels_own_box():
    ds = make_dataset([[(A, "cat"), (B, "cat")]])
    # The detections call A a dog and B a cat; asked about each label's box, the model says the opposite.
    predicted = preds((A, "dog", 0.9), (B, "cat", 0.9), probs=[[0.1, 0.9], [0.6, 0.4]])
    label_probs = {1: np.array([0.1, 0.8, 0.1]), 2: np.array([0.1, 0.2, 0.7])}
    suggestions, _ = review(ds, {1: predicted}, label_probs=label_probs)
    wrong = of_type(suggestions, "wrong_class")
    assert [(s.annotation_id, s.suggested_class) for s in wrong] == [(2, "dog")]
    assert wrong[0].score == pytest.approx(0.5, abs=1e-3)  # 0.7 - 0.2
    assert wrong[0].evidence == {
        "p_label_class": 0.6,
        "p_suggested_class": 0.4,
        "mask_iou": 1.0,
        "box_p_label_class": 0.2,
        "box_p_suggested_class": 0.7,
    }


def test_wrong_class_without_probabilities_uses_per_class_detections_of_the_object():
    ds = make_dataset([[(A, "cat")]])
    suggestions, _ = review(ds, {1: preds((A, "dog", 0.9), (A, "cat", 0.3))})
    wrong = of_type(suggestions, "wrong_class")
    assert [(s.annotation_id, s.suggested_class) for s in wrong] == [(1, "dog")]
    assert wrong[0].score == pytest.approx(0.6, abs=1e-3)


def test_prediction_classes_are_matched_by_name():
    ds = make_dataset([[(A, "cat")]])
    reordered = preds((A, "cat", 0.9), class_names=("dog", "cat"))
    suggestions, _ = review(ds, {1: reordered})
    assert suggestions == []


def test_bad_mask_is_the_label_whose_outline_disagrees():
    centres = [(12, 12), (12, 40), (40, 12), (40, 40), (26, 26)]
    good = [disc(cy, cx, 7) for cy, cx in centres]
    labels = [[(m, "cat") for m in good[:4]] + [(np.roll(good[4], 4, axis=1), "cat")]]
    ds = make_dataset(labels)
    suggestions, info = review(ds, {1: preds(*[(m, "cat", 0.95) for m in good])})
    bad = suggestions[0]
    assert (bad.type, bad.annotation_id) == ("bad_mask", 5)
    # The shifted label half-overlaps its prediction, so it is only weakly suspected of being extra.
    assert all(s.annotation_id == 5 and s.score < 0.2 for s in suggestions[1:])
    assert bad.score > 0.8 and bad.evidence["boundary_iou"] < bad.evidence["mask_iou"] < 0.8
    assert (mask_ops.decode(bad.suggested_segmentation, H, W) == good[4]).all()
    assert info["bad_mask_reference"]["median_boundary_iou"] == 1.0


def test_bad_mask_is_judged_against_the_models_agreement_on_the_same_image():
    # Image 1 is one where the model draws every outline 2 px inside the label (blur, a faint
    # stain); on image 2 it draws them exactly, but one label is drawn 2 px too wide. Against the
    # dataset's typical agreement the two kinds of disagreement look alike; against each image's
    # own, only the wide label stands out.
    centres = [(8 + 16 * i, 8 + 16 * j) for i in range(4) for j in range(4)]
    labels = [disc(cy, cx, 5) for cy, cx in centres]
    inside = [disc(cy, cx, 3) for cy, cx in centres]
    wide = disc(*centres[5], 7)
    ds = make_dataset([[(m, "cat") for m in labels], [(m, "cat") for m in labels[:5] + [wide] + labels[6:]]])
    predictions = {1: preds(*[(m, "cat", 0.95) for m in inside]), 2: preds(*[(m, "cat", 0.95) for m in labels])}
    suggestions, info = review(ds, predictions)
    bad = of_type(suggestions, "bad_mask")
    assert [(s.image_id, s.annotation_id) for s in bad] == [(2, 22)]
    # 15 other matches: the image's reference (1.0) weighs 15 / (15 + 10), the dataset's the rest.
    dataset = info["bad_mask_reference"]["median_boundary_iou"]
    assert bad[0].evidence["reference_boundary_iou"] == pytest.approx(0.6 * 1.0 + 0.4 * dataset, abs=1e-3)
    assert bad[0].score > 0.8
    dataset_only = of_type(review(ds, predictions, ReviewSettings(min_image_matches=1000))[0], "bad_mask")
    assert 22 not in [s.annotation_id for s in dataset_only]  # the dataset's reference alone misses it


def test_review_warns_when_the_models_masks_are_too_coarse_to_judge_outlines_by():
    centres = [(12, 12), (12, 40), (40, 12), (40, 40)]
    labels = make_dataset([[(disc(cy, cx, 7), "cat") for cy, cx in centres]])
    for radius, warned in ((7, False), (5, True)):
        _, info = review(labels, {1: preds(*[(disc(cy, cx, radius), "cat", 0.95) for cy, cx in centres])})
        expected = disc(12, 12, radius).sum() / disc(12, 12, 7).sum()  # the model's disc lies inside the label's
        assert info["bad_mask_reference"]["median_mask_iou"] == pytest.approx(expected, abs=1e-3)
        assert (
            any("masks agree with the labels it is surest of at median mask IoU" in w for w in info["warnings"])
            == warned
        )


def test_a_barely_overlapping_prediction_is_another_object_not_a_redraw():
    centres = [(12, 12), (12, 40), (40, 12), (40, 40), (26, 26)]
    good = [disc(cy, cx, 7) for cy, cx in centres]
    far_off = np.roll(good[4], 8, axis=1)  # mask IoU with the label 0.18: beside it, not on it
    ds = make_dataset([[(m, "cat") for m in good]])
    suggestions, _ = review(ds, {1: preds(*[(m, "cat", 0.95) for m in good[:4]], (far_off, "cat", 0.95))})
    assert 0.1 < (far_off & good[4]).sum() / (far_off | good[4]).sum() < 0.3  # matched, yet too far off
    assert not of_type(suggestions, "bad_mask")
    assert [s.annotation_id for s in of_type(suggestions, "extra_label")] == [5]


def test_duplicate_needs_no_model_and_only_same_class_pairs_count():
    near_copy = np.roll(A, 1, axis=0)
    ds = make_dataset([[(A, "cat"), (near_copy, "cat"), (B, "cat"), (np.roll(B, 1, axis=1), "dog")]])
    suggestions, _ = review(ds, None)
    assert [(s.type, s.annotation_id, s.other_annotation_id) for s in suggestions] == [("duplicate", 2, 1)]
    expected_iou = (A & near_copy).sum() / (A | near_copy).sum()
    assert suggestions[0].score == pytest.approx(0.5 + 0.5 * (expected_iou - 0.5) / 0.5, abs=1e-3)


def test_duplicate_removes_the_copy_the_model_backs_less():
    shifted = np.roll(A, 3, axis=1)
    ds = make_dataset([[(shifted, "cat"), (A, "cat")]])
    suggestions, _ = review(ds, {1: preds((A, "cat", 0.95))})
    duplicate = of_type(suggestions, "duplicate")
    assert [(s.annotation_id, s.other_annotation_id) for s in duplicate] == [(1, 2)]


def test_suggestions_are_ranked_worst_first_with_ids_in_rank_order():
    ds = make_dataset([[(A, "cat"), (C, "cat")], [(A, "cat")]])
    predictions = {1: preds((A, "cat", 0.6)), 2: preds((A, "cat", 0.95), (B, "dog", 0.99))}
    suggestions, _ = review(ds, predictions, ReviewSettings(min_score=0.0))
    assert [s.id for s in suggestions] == list(range(1, len(suggestions) + 1))
    assert [s.score for s in suggestions] == sorted((s.score for s in suggestions), reverse=True)
    assert (suggestions[0].type, suggestions[0].image_id) == ("missing_label", 2)


def test_boundary_band_and_boundary_iou():
    square = np.zeros((40, 40), bool)
    square[10:30, 10:30] = True
    assert boundary_band(square, 2).sum() == 20 * 20 - 16 * 16
    corner = np.zeros((40, 40), bool)
    corner[:10, :10] = True  # touches the image border, which counts as outline
    assert boundary_band(corner, 2).sum() == 100 - 6 * 6  # 2 pixels in from every side
    assert boundary_iou(square, square, 2) == 1.0
    shifted = np.roll(square, 1, axis=1)
    band_a, band_b = boundary_band(square, 2), boundary_band(shifted, 2)
    expected = (band_a & band_b).sum() / (band_a | band_b).sum()
    assert boundary_iou(square, shifted, 2) == pytest.approx(expected)
    assert boundary_iou(square, shifted, 2) < ((square & shifted).sum() / (square | shifted).sum())


def painted(*objects):
    """An RGB image of bright discs on a dark, slightly noisy background."""
    pixels = np.random.default_rng(0).normal(40, 3, (H, W)).clip(0, 255)
    for mask in objects:
        pixels[mask] = 200
    return np.repeat(pixels.astype(np.uint8)[..., None], 3, axis=2)


def test_edge_alignment_is_highest_on_the_objects_own_outline():
    edges = image_edges(painted(B), radius=3)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    own = edge_alignment(B, *edges)
    too_large = edge_alignment(cv2.dilate(B.astype(np.uint8), kernel).astype(bool), *edges)
    too_small = edge_alignment(cv2.erode(B.astype(np.uint8), kernel).astype(bool), *edges)
    shifted = edge_alignment(np.roll(B, 3, axis=0), *edges)
    assert own > 0.8 and max(too_large, too_small, shifted) < own - 0.3
    assert edge_alignment(np.zeros((H, W), bool), *edges) is None
    flat = image_edges(np.full((H, W, 3), 90, np.uint8), radius=3)
    assert edge_alignment(B, *flat) is None  # no edge anywhere near: no evidence either way
    # The image border is not outline: a label cut off by it is judged by its inner side alone.
    cut = disc(44, 60, 9)
    assert edge_alignment(cut, *image_edges(painted(cut), radius=3)) > 0.8


def test_bad_mask_the_model_agrees_with_is_caught_by_the_image_edges():
    centres = [(12, 12), (12, 40), (40, 12), (40, 40), (26, 26)]
    objects = [disc(cy, cx, 6) for cy, cx in centres]
    drawn_large = cv2.dilate(objects[4].astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    labels = objects[:4] + [drawn_large]
    ds = make_dataset([[(m, "cat") for m in labels]])
    # The model follows the labels exactly, so only the image tells that the last one is too large.
    predictions = {1: preds(*[(m, "cat", 0.95) for m in labels])}
    blind, _ = review(ds, predictions)
    assert not of_type(blind, "bad_mask")
    seeing, info = review(ds, predictions, read_image=lambda image: painted(*objects))
    assert [(s.type, s.annotation_id) for s in seeing] == [("bad_mask", 5)]
    assert (
        seeing[0].score > 0.8
        and seeing[0].evidence["edge_alignment"] < info["bad_mask_reference"]["median_edge_alignment"]
    )


# -- apply -------------------------------------------------------------------------------------------
def _review_document(ds, predictions):
    suggestions, _ = review(ds, predictions)
    return {"suggestions": [s.to_dict() for s in suggestions]}


def _noisy_case():
    shifted = np.roll(C, 4, axis=1)
    ds = make_dataset(
        [
            [(A, "cat"), (shifted, "cat"), (disc(44, 16, 6), "cat")],
            [(A, "dog"), (B, "cat"), (np.roll(B, 1, axis=0), "cat")],
        ]
    )
    predictions = {
        1: preds((A, "cat", 0.95), (C, "cat", 0.95), (disc(44, 46, 8), "dog", 0.9)),
        2: preds((A, "cat", 0.95), (B, "cat", 0.95), probs=[[0.9, 0.1], [0.95, 0.05]]),
    }
    return ds, predictions


def test_apply_changes_exactly_the_accepted_suggestions():
    ds, predictions = _noisy_case()
    document = _review_document(ds, predictions)
    by_type = {s["type"]: s for s in document["suggestions"]}
    assert set(by_type) == {"missing_label", "extra_label", "wrong_class", "bad_mask", "duplicate"}
    original = copy.deepcopy(ds.coco)
    accepted = {by_type[t]["id"] for t in ("missing_label", "wrong_class", "bad_mask", "duplicate")}
    fixed, changes = apply_review(document, ds, accept=accepted)
    assert ds.coco == original  # the input is untouched

    touched = {by_type[t]["annotation_id"] for t in ("wrong_class", "bad_mask", "duplicate")}
    before = {a["id"]: a for a in original["annotations"]}
    after = {a["id"]: a for a in fixed.annotations}
    for ann_id, ann in before.items():
        if ann_id not in touched:
            assert json.dumps(after[ann_id], sort_keys=True) == json.dumps(ann, sort_keys=True)
    assert by_type["duplicate"]["annotation_id"] not in after
    assert after[by_type["wrong_class"]["annotation_id"]]["category_id"] == 1
    redrawn = after[by_type["bad_mask"]["annotation_id"]]
    assert (mask_ops.decode(redrawn["segmentation"], H, W) == C).all()
    assert redrawn["area"] == int(C.sum())
    added = [a for a in fixed.annotations if a["id"] not in before]
    assert len(added) == 1 and added[0]["category_id"] == 2 and added[0]["image_id"] == 1
    assert {c["type"] for c in changes} == {"missing_label", "wrong_class", "bad_mask", "duplicate"}
    # Order and ids of the untouched annotations are kept; the new one goes last.
    kept = [a["id"] for a in original["annotations"] if a["id"] != by_type["duplicate"]["annotation_id"]]
    assert [a["id"] for a in fixed.annotations] == kept + [added[0]["id"]]


def test_apply_keeps_a_polygon_dataset_in_polygons():
    ds, predictions = _noisy_case()
    for ann in ds.annotations:  # the same labels drawn as polygons
        ann["segmentation"] = mask_ops.to_polygons(mask_ops.decode(ann["segmentation"], H, W))
    document = _review_document(ds, predictions)
    by_type = {s["type"]: s for s in document["suggestions"]}
    fixed, _ = apply_review(document, ds, accept={by_type["bad_mask"]["id"], by_type["missing_label"]["id"]})
    redrawn = next(a for a in fixed.annotations if a["id"] == by_type["bad_mask"]["annotation_id"])
    added = fixed.annotations[-1]
    for ann, suggestion in ((redrawn, by_type["bad_mask"]), (added, by_type["missing_label"])):
        assert isinstance(ann["segmentation"], list)
        suggested = mask_ops.decode(suggestion["suggested_segmentation"], H, W)
        drawn = mask_ops.decode(ann["segmentation"], H, W)
        assert (drawn & suggested).sum() / (drawn | suggested).sum() > 0.97


def test_apply_threshold_reject_and_conflicting_suggestions():
    ds, predictions = _noisy_case()
    document = _review_document(ds, predictions)
    top = document["suggestions"][0]
    fixed, changes = apply_review(document, ds, accept_above=0.0, reject=[top["id"]])
    assert top["id"] not in {c["suggestion"] for c in changes}
    assert len(changes) == len(document["suggestions"]) - 1

    extra = next(s for s in document["suggestions"] if s["type"] == "extra_label")
    edit = {**extra, "id": 999, "type": "wrong_class", "suggested_class": "dog"}
    document["suggestions"].append(edit)
    fixed, changes = apply_review(document, ds, accept=[extra["id"], 999])
    assert [c["action"] for c in changes] == ["removed", "skipped"]
    assert extra["annotation_id"] not in {a["id"] for a in fixed.annotations}
    with pytest.raises(instaseg.InstasegError, match="no suggestion with id 12345"):
        apply_review(document, ds, accept=[12345])


# -- folds ---------------------------------------------------------------------------------------------
def test_fold_assignment_is_balanced_deterministic_and_complete():
    ds = make_dataset([[(A, "cat")] for _ in range(11)])
    folds = assign_folds(ds, 3, seed=4)
    assert sorted(folds) == [img["id"] for img in ds.images]
    assert sorted(np.bincount(list(folds.values()))) == [3, 4, 4]
    assert folds == assign_folds(ds, 3, seed=4) and folds != assign_folds(ds, 3, seed=5)
    with pytest.raises(instaseg.InstasegError):
        assign_folds(ds, 1)


def test_out_of_fold_models_never_judge_images_they_trained_on(monkeypatch, tmp_path):
    ds = make_dataset([[(A, "cat"), (B, "dog")] for _ in range(6)], root=tmp_path)
    for image in ds.images:  # each image's pixels carry its id, so the fake model knows what it judges
        io.write_image(ds.image_path(image), np.full((H, W, 3), image["id"], np.uint8))
    trained_on = {}

    def fake_train(config, train, val=None, *, out, **options):
        trained_on[str(out)] = {img["id"] for img in train.images}
        return out / "best.pt"

    labelled_size = object_size(ds, ds.images[0])  # every image holds the same two labels
    asked = []

    class FakePredictor:
        class_names = ("dog", "cat", "bird")  # another order, and a class the dataset lacks
        max_detections = 1

        def __init__(self, path):
            self.seen = trained_on[str(path.parent)]

        def predict(self, pixels, score_threshold, max_detections, object_size):
            assert int(pixels[0, 0, 0]) not in self.seen
            asked.append((max_detections, object_size))
            return preds((A, "cat", 0.9), class_names=self.class_names)

        def classify_boxes(self, pixels, boxes, augment, object_size):
            assert int(pixels[0, 0, 0]) not in self.seen
            asked.append((None, object_size))
            return np.tile([[0.1, 0.2, 0.3, 0.4]], (len(boxes), 1))  # background, dog, cat, bird

    monkeypatch.setitem(sys.modules, "instaseg.engine.train", types.SimpleNamespace(train=fake_train))
    monkeypatch.setattr(instaseg, "load", FakePredictor, raising=False)
    predictions, label_probs, info = out_of_fold_predictions(ds, 2, out=tmp_path, minutes_per_fold=1)
    assert sorted(predictions) == [img["id"] for img in ds.images]
    assert len(trained_on) == 2 and all(len(ids) == 3 for ids in trained_on.values())
    # every label judged, columns reordered to (background, cat, dog)
    assert sorted(label_probs) == [ann["id"] for ann in ds.annotations]
    assert all(np.allclose(p, [0.1, 0.3, 0.2]) for p in label_probs.values())
    # each prediction's own box judged too: the probability of its class (cat)
    assert all(np.allclose(p.data["box_score"], [0.3]) for p in predictions.values())
    # room for two detections per label, and the labels' object size, in both questions
    assert asked == [(4, labelled_size), (None, labelled_size)] * 6 and 10 < labelled_size < 30


def test_seen_warning(tmp_path):
    ds = make_dataset([[(A, "cat")], [(B, "cat")]], root=tmp_path)
    for n, image in enumerate(ds.images):
        io.write_image(ds.image_path(image), np.full((H, W, 3), 50 * n, np.uint8))
    assert "must come from a model" in seen_warning(ds, None)
    second = ds.image_sha1(ds.images[1])
    assert "trained on 1 of these 2" in seen_warning(ds, {second, "0" * 40})
    assert seen_warning(ds, {"0" * 40}) is None


# -- CLI -----------------------------------------------------------------------------------------------
@pytest.fixture
def reviewed_files(tmp_path):
    """A COCO file with images on disk, and a COCO results JSON of predictions for it."""
    ds, predictions = _noisy_case()
    rng = np.random.default_rng(0)
    for image in ds.images:
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(tmp_path / image["file_name"])
    ds.save(tmp_path / "labels.json")
    results = []
    for image_id, instances in predictions.items():
        results += instances.to_coco(image_id, [1, 2])
    io.write_json(tmp_path / "results.json", results)
    return tmp_path


def test_cli_review_writes_report_and_apply_fixes(cli, reviewed_files):
    root = reviewed_files
    r = cli("review", root / "labels.json", "--pred", root / "results.json", "--out", root / "rev")
    assert r.code == 0, r.stderr
    assert "not trained on these images" in r.stderr
    document = json.loads((root / "rev" / "review.json").read_text())
    counts = document["counts"]
    assert all(counts[t] >= 1 for t in ("missing_label", "extra_label", "bad_mask", "duplicate")), counts
    rows = list(csv.DictReader((root / "rev" / "review.csv").open()))
    assert [int(row["id"]) for row in rows] == [s["id"] for s in document["suggestions"]]
    for row, s in zip(rows, document["suggestions"], strict=True):  # every evidence number has its column
        assert all(float(row[key]) == value for key, value in s["evidence"].items())
    assert {"support", "boundary_iou", "mask_iou"} <= rows[0].keys()
    page = (root / "rev" / "report.html").read_text()
    assert page.count('class="card"') == len(document["suggestions"]) and "<script>" in page
    for s in document["suggestions"]:
        picture = root / "rev" / f"pictures/{s['id']:05d}-{s['type']}.jpg"
        assert picture.exists() and f'src="pictures/{picture.name}"' in page
    assert Image.open(root / "rev" / "pictures" / f"00001-{document['suggestions'][0]['type']}.jpg").width > 2 * W

    again = cli("review", root / "labels.json", "--pred", root / "results.json", "--out", root / "rev")
    assert again.code == 2 and "--overwrite" in again.stderr

    r = cli("review", "apply", root / "rev", "--accept", "all-above 0.5", "--out", root / "fixed.json")
    assert r.code == 0, r.stderr
    fixed = Dataset.load(root / "fixed.json")
    accepted = [s for s in document["suggestions"] if s["score"] >= 0.5]
    assert f"applied {len(accepted)} of {len(accepted)}" in r.stdout
    assert fixed.image_path(fixed.images[0]).exists()


def test_cli_review_refuses_bad_input(cli, reviewed_files, tmp_path):
    root = reviewed_files
    r = cli(
        "review",
        root / "labels.json",
        "--pred",
        root / "results.json",
        "--model",
        root / "x.pt",
        "--out",
        tmp_path / "o",
    )
    assert r.code == 2 and "exactly one of" in r.stderr
    r = cli("review", root / "labels.json", "--pred", root / "nothing.json", "--out", tmp_path / "o")
    assert r.code == 2 and "nothing.json" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
    r = cli("review", "apply", root / "labels.json", "--accept", "1", "--out", tmp_path / "f.json")
    assert r.code == 2 and "not an instaseg review" in r.stderr


def test_cli_review_with_a_model_warns_when_it_trained_on_these_images(cli, reviewed_files, monkeypatch):
    root = reviewed_files
    ds, predictions = _noisy_case()

    second = Dataset.load(root / "labels.json")
    digest = second.image_sha1(second.images[1])

    class FakePredictor:
        class_names = CLASSES
        judged = iter(predictions[image["id"]] for image in ds.images)  # judge() goes image by image
        max_detections = 100
        config = {"train_image_sha1": [digest]}

        def predict(self, pixels, score_threshold, max_detections, object_size):
            return next(self.judged)

        def classify_boxes(self, pixels, boxes, augment, object_size):
            return np.tile([[0.0, 1.0, 0.0]], (len(boxes), 1))

    monkeypatch.setattr(instaseg, "load", lambda path: FakePredictor(), raising=False)
    r = cli("review", root / "labels.json", "--model", root / "fake.pt", "--out", root / "rev")
    assert r.code == 0, r.stderr
    assert "trained on 1 of these 2 images" in r.stderr
    document = json.loads((root / "rev" / "review.json").read_text())
    assert document["source"]["kind"] == "model" and document["warnings"] == [
        r.stderr.strip().removeprefix("warning: ")
    ]


def test_cli_review_of_a_non_coco_dataset_keeps_it_for_apply(cli, tmp_path):
    yy, xx = np.mgrid[:H, :W]
    for n in range(2):
        folder = tmp_path / "nuclei" / f"img{n}"
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        Image.fromarray(np.full((H, W, 3), 40 * n, np.uint8)).save(folder / "images" / f"img{n}.png")
        for k, (cy, cx) in enumerate([(16, 16), (44, 44)]):
            Image.fromarray((((yy - cy) ** 2 + (xx - cx) ** 2 <= 64) * 255).astype(np.uint8)).save(
                folder / "masks" / f"m{k}.png"
            )
    from instaseg.data.convert import open_dataset

    ds = open_dataset(tmp_path / "nuclei", "mask-files")
    results = []
    for image in ds.images:  # the model finds only the first nucleus of each image
        results += ds.ground_truth(image)[:1].to_coco(image["id"], ds.category_ids)
    io.write_json(tmp_path / "results.json", results)
    r = cli("review", tmp_path / "nuclei", "--pred", tmp_path / "results.json", "--out", tmp_path / "rev")
    assert r.code == 0, r.stderr
    kept = Dataset.load(tmp_path / "rev" / "dataset.json")
    assert kept.image_path(kept.images[0]).exists() and len(kept.annotations) == 4
    r = cli("review", "apply", tmp_path / "rev", "--accept", "all", "--out", tmp_path / "fixed.json")
    assert r.code == 0, r.stderr
    assert len(Dataset.load(tmp_path / "fixed.json").annotations) == 2


def test_cli_review_with_real_out_of_fold_models(cli, tmp_path):
    """--folds end to end: two tiny models really train, each judges only the images it never saw."""
    from instaseg.data.synth import make_synthetic
    from instaseg.review.noise import inject_noise

    train_json, _ = make_synthetic(tmp_path / "data", num_train=8, num_val=1, size=64)
    noisy, injected = inject_noise(
        Dataset.load(train_json), missing=0, extra=0, wrong_class=0, bad_mask=0, duplicate=0.15
    )
    noisy.save(tmp_path / "data" / "noisy.json")
    r = cli(
        "review",
        tmp_path / "data" / "noisy.json",
        "--folds",
        "2",
        "--epochs-per-fold",
        "1",
        "--preset",
        "small",
        "--crop-size",
        "48",
        "--out",
        tmp_path / "rev",
    )
    assert r.code == 0, r.stderr
    document = json.loads((tmp_path / "rev" / "review.json").read_text())
    assert document["source"]["kind"] == "folds"
    # Out-of-fold models draw no "seen these labels" warning; 1-epoch models do draw the coarse-masks one.
    assert document["warnings"] and all(w.startswith("the model's masks agree") for w in document["warnings"])
    for fold in (1, 2):
        checkpoint = read_checkpoint(tmp_path / "rev" / "folds" / f"fold-{fold}" / "best.pt")
        assert training_image_digests(checkpoint["config"]) and checkpoint["train_config"]["crop_size"] == 48
    # However little two 1-epoch models learn, a near copy of a label is found and ranked first
    # (either one of the pair may be the suggested removal).
    pairs = [{e["annotation_id"], e["source_annotation_id"]} for e in injected if e["type"] == "duplicate"]
    assert pairs
    ranked = [s["annotation_id"] for s in document["suggestions"] if s["type"] == "duplicate"][: len(pairs)]
    assert all(len(pair & set(ranked)) == 1 for pair in pairs), (pairs, ranked)
