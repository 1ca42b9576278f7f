"""Issue #17 on ``eval`` and ``review --pred``: which images predictions belong to, results of
categories the ground truth lacks, and ground truth in formats that need ``--class``."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from instaseg.core import events
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.data import Dataset
from instaseg.data.convert import ReadOptions, open_dataset
from instaseg.data.synth import make_synthetic
from instaseg.engine.predict import predict_images
from instaseg.evaluation import evaluate_results, load_predictions
from instaseg.review.sources import load_prediction_file
from tests.conftest import assert_one_line_error, shared_dataset
from tests.test_evaluate import TOLERANCE, make_case, pycocotools_eval


class Oracle:
    """A stand-in model for ``predict_images`` that predicts each known image's ground truth exactly."""

    max_detections = 100

    def __init__(self, *datasets: Dataset):
        self.class_names = datasets[0].class_names
        self.answers = {
            self.digest(dataset.read_image(image)): dataset.ground_truth(image)
            for dataset in datasets
            for image in dataset.images
        }

    @staticmethod
    def digest(pixels: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).hexdigest()

    def predict(self, image, score_threshold=0.5, classes=None, max_detections=None):
        return self.answers[self.digest(image)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Synthetic train and val splits of three images each, and an oracle knowing both."""
    train_json, val_json = make_synthetic(tmp_path_factory.mktemp("shapes") / "data", num_train=3, num_val=3, size=48)
    return train_json, val_json, Oracle(Dataset.load(train_json), Dataset.load(val_json))


def _predict(oracle: Oracle, images, out):
    predict_images(oracle, images, out=out, overlays=False)
    return out


def _square(y: int, x: int, side: int = 6, size: int = 24) -> dict:
    mask = np.zeros((size, size), bool)
    mask[y : y + side, x : x + side] = True
    return mask_ops.encode(mask)


def _gt(*names: str) -> Dataset:
    """One 24x24 image per name, each with one square of class ``cell`` at a place of its own."""
    images = [{"id": k + 1, "file_name": name, "width": 24, "height": 24} for k, name in enumerate(names)]
    annotations = [
        {"id": k + 1, "image_id": k + 1, "category_id": 1, "segmentation": _square(2 * k, 2 * k), "iscrowd": 0}
        for k in range(len(names))
    ]
    return Dataset({"images": images, "categories": [{"id": 1, "name": "cell"}], "annotations": annotations})


def _predictions_json(folder, names: list[str], squares: list[tuple[int, int]]):
    """A predictions folder as ``instaseg predict`` writes it: image k named ``names[k]``, one square each."""
    folder.mkdir()
    images = [{"id": k + 1, "file_name": name, "width": 24, "height": 24} for k, name in enumerate(names)]
    annotations = [
        {"id": k + 1, "image_id": k + 1, "category_id": 1, "segmentation": _square(*at), "score": 0.9, "iscrowd": 0}
        for k, at in enumerate(squares)
    ]
    document = {"images": images, "categories": [{"id": 1, "name": "cell"}], "annotations": annotations}
    (folder / "predictions.json").write_text(json.dumps(document))
    return folder


def _one_line_error(result, *parts):
    assert_one_line_error(result, *parts)


# -- defect 10: predictions are matched to the right images, or refused ---------------------------------
def test_predictions_on_the_train_split_are_not_scored_as_val(shapes, tmp_path, cli):
    train_json, val_json, oracle = shapes
    predicted = _predict(oracle, [train_json.parent / "train"], tmp_path / "pred")
    _one_line_error(cli("eval", val_json, predicted), "is not in the ground truth", "train_000001.png")
    review = cli("review", val_json, "--pred", predicted, "--out", tmp_path / "rev")
    _one_line_error(review, "is not in the ground truth")
    assert not (tmp_path / "rev").exists()


def test_predict_then_eval_scores_each_val_image_against_its_own_labels(shapes, tmp_path, cli):
    _, val_json, oracle = shapes
    predicted = _predict(oracle, [val_json.parent / "val"], tmp_path / "pred")
    result = cli("eval", val_json, predicted, "--out", tmp_path / "report")
    assert result.code == 0, result.stderr
    assert "warning" not in result.stderr
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["stats"]["segm"]["AP"] == pytest.approx(1.0)


def test_synth_splits_have_distinct_file_names(shapes):
    train_json, val_json, _ = shapes
    images = Dataset.load(train_json).images + Dataset.load(val_json).images
    names = [image["file_name"].rsplit("/", 1)[-1] for image in images]
    assert len(set(names)) == len(names) == 6


def test_images_with_the_same_basename_are_told_apart_by_their_folders(tmp_path):
    gt = _gt("train/a.png", "val/a.png")
    # each prediction is the other image's square, so swapping the two images would score AP 1
    folder = _predictions_json(tmp_path / "pred", ["val/a.png", "train/a.png"], [(0, 0), (2, 2)])
    results = load_predictions(gt, folder)
    assert [(r["image_id"], mask_ops.bbox(r["segmentation"])[:2]) for r in results] == [(2, [0, 0]), (1, [2, 2])]
    assert evaluate_results(gt, results, errors=False).stat("AP") == 0.0


def test_a_predicted_name_with_extra_leading_folders_still_matches(tmp_path):
    gt = _gt("val/a.png", "val/b.png")
    folder = _predictions_json(tmp_path / "pred", ["data/val/a.png", "b.png"], [(0, 0), (2, 2)])
    assert [r["image_id"] for r in load_predictions(gt, folder)] == [1, 2]


def test_a_basename_shared_by_several_images_is_refused(tmp_path):
    gt = _gt("train/a.png", "val/a.png")
    folder = _predictions_json(tmp_path / "pred", ["a.png"], [(0, 0)])
    with pytest.raises(InstasegError, match=r"image 'a.png' could be any of .*'train/a.png', 'val/a.png'"):
        load_predictions(gt, folder)


def test_two_predicted_images_for_one_ground_truth_image_are_refused(tmp_path, cli):
    gt = _gt("a.png")
    gt.save(tmp_path / "gt.json")
    folder = _predictions_json(tmp_path / "pred", ["train/a.png", "val/a.png"], [(0, 0), (0, 0)])
    _one_line_error(cli("eval", tmp_path / "gt.json", folder), "'train/a.png' and 'val/a.png' both match", "image id 2")


def test_predictions_covering_part_of_the_ground_truth_warn_and_none_is_refused(tmp_path, cli):
    gt = _gt("a.png", "b.png", "c.png")
    gt.save(tmp_path / "gt.json")
    partial = _predictions_json(tmp_path / "partial", ["a.png", "b.png"], [(0, 0), (2, 2)])
    result = cli("eval", tmp_path / "gt.json", partial, "--out", tmp_path / "report")
    assert result.code == 0, result.stderr
    assert "warning: the predictions cover 2 of the 3 ground-truth images" in result.stderr
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["warnings"][0].startswith("the predictions cover 2")
    empty = _predictions_json(tmp_path / "empty", [], [])
    _one_line_error(cli("eval", tmp_path / "gt.json", empty), "lists no image")


def test_review_pred_warns_when_the_predictions_cover_part_of_the_dataset(tmp_path):
    gt = _gt("a.png", "b.png", "c.png")
    folder = _predictions_json(tmp_path / "pred", ["c.png"], [(4, 4)])
    predictions, _, warnings = load_prediction_file(gt, folder)
    assert list(predictions) == [3]
    assert any(w.startswith("the predictions cover 1 of the 3 ground-truth images") for w in warnings)


def test_load_predictions_without_a_warnings_list_reports_partial_cover_as_an_event(tmp_path):
    gt = _gt("a.png", "b.png", "c.png")
    folder = _predictions_json(tmp_path / "pred", ["c.png"], [(4, 4)])
    heard: list[events.Event] = []
    with events.listen(heard.append):
        results = load_predictions(gt, folder)
    assert [r["image_id"] for r in results] == [3]
    assert heard == [
        events.Message(
            "the predictions cover 1 of the 3 ground-truth images; the other 2 count as images on which nothing "
            "was found",
            "warning",
        )
    ]
    with pytest.warns(UserWarning, match="the predictions cover 1 of the 3"):  # nobody listening
        load_predictions(gt, folder)


# -- defect 11: results of categories the ground truth lacks are left out, as pycocotools does ------------
def test_results_of_other_categories_are_left_out_exactly_as_pycocotools_does():
    gt, results = make_case(3)
    picked = np.random.default_rng(0).choice(len(results), 12, replace=False)
    strangers = [{**results[int(k)], "category_id": 77 + n % 2} for n, k in enumerate(picked)]
    mixed = results[:5] + strangers + results[5:]
    for iou_type in ("segm", "bbox"):
        result = evaluate_results(Dataset(gt), mixed, (iou_type,), errors=False)
        reference = pycocotools_eval(gt, mixed, iou_type).stats
        assert np.abs(np.asarray(result.stats[iou_type]) - reference).max() <= TOLERANCE
        assert result.num_predictions == len(results)
        assert result.warnings == [
            f"left out 12 of {len(mixed)} results: their category id (77, 78) is not a ground-truth category "
            "(pycocotools ignores them too)"
        ]


def test_cli_warns_once_about_results_of_other_categories_and_still_refuses_unknown_images(tmp_path, cli):
    gt, results = make_case(4)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(results + [{**r, "category_id": 5} for r in results[:3]]))
    result = cli("eval", tmp_path / "gt.json", tmp_path / "results.json")
    assert result.code == 0, result.stderr
    assert result.stderr.count("warning:") == 1 and "left out 3 of" in result.stderr
    ap = pycocotools_eval(gt, results, "segm").stats[0]
    assert f"maxDets=100 ] = {ap:0.3f}" in result.stdout
    (tmp_path / "results.json").write_text(json.dumps(results + [{**results[0], "image_id": 999, "category_id": 5}]))
    refused = cli("eval", tmp_path / "gt.json", tmp_path / "results.json")
    _one_line_error(refused, f"result {len(results)}: unknown image id 999")


# -- doc item: eval reads ground truth with convert's options ---------------------------------------------
def _via_folder(root):
    """A VIA 1.x folder without class attributes (as balloon's): two images, one rectangle each."""
    root.mkdir()
    entries = {}
    for k, name in enumerate(("p.png", "q.png")):
        Image.new("RGB", (40, 30), (30 * k, 90, 150)).save(root / name)
        shape = {"name": "rect", "x": 4 + 10 * k, "y": 5, "width": 12, "height": 9}
        entries[name] = {"filename": name, "size": 0, "regions": [{"shape_attributes": shape, "region_attributes": {}}]}
    (root / "via_region_data.json").write_text(json.dumps(entries))
    return root


def test_eval_reads_via_ground_truth_with_the_class_the_format_lacks(tmp_path, cli):
    via = _via_folder(tmp_path / "via")
    gt = open_dataset(via, "via", options=ReadOptions(class_name="balloon"))
    predicted = _predict(Oracle(gt), [via], tmp_path / "pred")
    result = cli("eval", via, "--from", "via", "--class", "balloon", predicted, "--out", tmp_path / "report")
    assert result.code == 0, result.stderr
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["stats"]["segm"]["AP"] == pytest.approx(1.0)
    # without --class the regions are "object", which the model does not know
    without_class = cli("eval", via, "--from", "via", predicted)
    _one_line_error(without_class, "class 'balloon' is not a ground-truth class (object)")


def test_eval_of_the_balloon_val_split_as_in_the_docs(tmp_path, cli):
    val = shared_dataset("balloon") / "val"
    gt = open_dataset(val, "via", options=ReadOptions(class_name="balloon"))
    predicted = _predict(Oracle(gt), [val], tmp_path / "predict-balloon")
    result = cli("eval", val, "--from", "via", "--class", "balloon", predicted, "--score-threshold", "0.3")
    assert result.code == 0, result.stderr
    assert f"{len(gt.images)} images, {len(gt.annotations)} predictions" in result.stdout
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in result.stdout
    assert "warning" not in result.stderr
