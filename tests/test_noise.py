"""Noise injection: each error type is what it claims to be, and a review with perfect predictions finds them all."""

from __future__ import annotations

import copy

import pytest

from instaseg.core import io
from instaseg.core import masks as mask_ops
from instaseg.data import Dataset
from instaseg.data.synth import make_synthetic
from instaseg.review import inject_noise, review
from instaseg.review.noise import BAD_MASK_MAX_IOU, DUPLICATE_MIN_IOU


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    train, _ = make_synthetic(tmp_path_factory.mktemp("synth") / "data", num_train=30, num_val=1, size=96, seed=3)
    return train


def _mask(ann, dataset):
    image = dataset.image_by_id[ann["image_id"]]
    return mask_ops.decode(ann["segmentation"], image["height"], image["width"])


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_each_injected_error_is_what_it_claims(synthetic):
    clean = Dataset.load(synthetic)
    original = copy.deepcopy(clean.coco)
    noisy, injected = inject_noise(clean, missing=0.1, extra=0.1, wrong_class=0.1, bad_mask=0.1, duplicate=0.05, seed=1)
    assert clean.coco == original
    total = len(clean.annotations)
    counts = {
        t: sum(e["type"] == t for e in injected)
        for t in ("missing_label", "extra_label", "wrong_class", "bad_mask", "duplicate")
    }
    assert counts["missing_label"] == round(0.1 * total) and counts["wrong_class"] == round(0.1 * total)
    assert counts["extra_label"] == round(0.1 * total) and counts["duplicate"] == round(0.05 * total)
    assert round(0.1 * total) - 2 <= counts["bad_mask"] <= round(0.1 * total)  # tiny fragments are left clean

    clean_by_id = {a["id"]: a for a in clean.annotations}
    noisy_by_id = {a["id"]: a for a in noisy.annotations}
    touched = [e["annotation_id"] for e in injected]
    assert len(touched) == len(set(touched))  # one error per annotation
    for error in injected:
        ann_id = error["annotation_id"]
        if error["type"] == "missing_label":
            assert ann_id not in noisy_by_id and error["annotation"] == clean_by_id[ann_id]
        elif error["type"] == "wrong_class":
            assert noisy_by_id[ann_id]["category_id"] == error["new_category_id"] != clean_by_id[ann_id]["category_id"]
        elif error["type"] == "bad_mask":
            overlap = _iou(_mask(noisy_by_id[ann_id], noisy), _mask(clean_by_id[ann_id], clean))
            assert overlap <= BAD_MASK_MAX_IOU and overlap == pytest.approx(error["iou"], abs=0.02)
        elif error["type"] == "duplicate":
            source = clean_by_id[error["source_annotation_id"]]
            assert ann_id not in clean_by_id and noisy_by_id[ann_id]["category_id"] == source["category_id"]
            assert _iou(_mask(noisy_by_id[ann_id], noisy), _mask(source, clean)) >= DUPLICATE_MIN_IOU
        else:
            spurious = _mask(noisy_by_id[ann_id], noisy)
            assert ann_id not in clean_by_id and spurious.any()
            for ann in clean.annotations_by_image.get(error["image_id"], []):
                assert not (spurious & _mask(ann, clean)).any()
    untouched = set(clean_by_id) - set(touched)
    assert all(noisy_by_id[i] == clean_by_id[i] for i in untouched)


def test_noise_is_reproducible_and_skips_wrong_class_with_one_class(synthetic):
    clean = Dataset.load(synthetic)
    first = inject_noise(clean, seed=5)
    assert first[1] == inject_noise(clean, seed=5)[1] and first[0].coco == inject_noise(clean, seed=5)[0].coco
    one_class = clean.copy()
    for ann in one_class.annotations:
        ann["category_id"] = one_class.categories[0]["id"]
    one_class.categories = one_class.categories[:1]
    _, injected = inject_noise(one_class, wrong_class=0.5, seed=0)
    assert not any(e["type"] == "wrong_class" for e in injected)


def test_review_with_perfect_predictions_finds_every_injected_error(synthetic):
    clean = Dataset.load(synthetic)
    noisy, injected = inject_noise(clean, seed=2)
    oracle = {}
    for image in clean.images:
        truth = clean.ground_truth(image)
        truth.scores[:] = 0.9
        oracle[image["id"]] = truth
    suggestions, _ = review(noisy, oracle)
    for kind in ("extra_label", "wrong_class", "bad_mask", "duplicate"):
        expected = {e["annotation_id"] for e in injected if e["type"] == kind}
        if kind == "duplicate":  # either copy may be the one flagged
            expected = {
                frozenset((e["annotation_id"], e["source_annotation_id"])) for e in injected if e["type"] == kind
            }
            found = {frozenset((s.annotation_id, s.other_annotation_id)) for s in suggestions if s.type == kind}
        else:
            found = {s.annotation_id for s in suggestions if s.type == kind and s.score >= 0.5}
        assert expected and expected <= found, kind
    missing = [e for e in injected if e["type"] == "missing_label"]
    proposed = [s for s in suggestions if s.type == "missing_label"]
    for error in missing:
        truth = _mask(error["annotation"], clean)
        assert any(_iou(mask_ops.decode(s.suggested_segmentation, *truth.shape), truth) > 0.99 for s in proposed)


def test_cli_noise_writes_dataset_and_error_list(cli, synthetic, tmp_path):
    out = tmp_path / "elsewhere" / "noisy.json"
    r = cli("noise", synthetic, "--out", out, "--rates", "missing=0.2,extra=0,bad_mask=0,duplicate=0,wrong_class=0")
    assert r.code == 0, r.stderr
    noisy = Dataset.load(out)
    errors = io.read_json(out.with_name("noisy.errors.json"))
    assert {e["type"] for e in errors} == {"missing_label"}
    assert len(noisy.annotations) == len(Dataset.load(synthetic).annotations) - len(errors)
    assert noisy.image_path(noisy.images[0]).exists()  # images still found from the new folder
    again = cli("noise", synthetic, "--out", out)
    assert again.code == 2 and "--overwrite" in again.stderr
    bad = cli("noise", synthetic, "--out", tmp_path / "x.json", "--rates", "missing=2")
    assert bad.code == 2 and "rate" in bad.stderr and not (tmp_path / "x.json").exists()
    unknown = cli("noise", synthetic, "--out", tmp_path / "x.json", "--rates", "typos=0.1")
    assert unknown.code == 2 and "typos" in unknown.stderr
