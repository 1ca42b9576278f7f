"""The COCO metric against pycocotools' COCOeval, the error breakdown, bad input and the ``eval`` verb."""

from __future__ import annotations

import contextlib
import copy
import io as text_io
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as pycoco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from instaseg.core import events
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.core.structures import Instances
from instaseg.data import Dataset
from instaseg.evaluation import STAT_NAMES, evaluate, evaluate_results, load_predictions

TOLERANCE = 1e-9


# -- the reference -----------------------------------------------------------------------------------
def pycocotools_eval(gt: dict, results: list[dict], iou_type: str) -> COCOeval:
    """pycocotools' COCOeval on deep copies (it annotates the dicts it is given)."""
    with contextlib.redirect_stdout(text_io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def reference_per_class_ap(evaluator: COCOeval) -> list[float | None]:
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    values = []
    for k in range(precision.shape[2]):
        defined = precision[:, :, k][precision[:, :, k] > -1]
        values.append(float(defined.mean()) if defined.size else None)
    return values


# -- generated cases ---------------------------------------------------------------------------------
def _rle(mask: np.ndarray) -> dict:
    return mask_ops.encode(mask)


def _blob(rng: np.random.Generator, height: int, width: int, kind: str) -> np.ndarray:
    """A random ellipse; ``tiny`` is a few pixels, ``huge`` covers most of the image."""
    yy, xx = np.mgrid[:height, :width]
    if kind == "tiny":
        ry, rx = rng.uniform(0.5, 2.5, 2)
    elif kind == "huge":
        ry, rx = height * rng.uniform(0.4, 0.6), width * rng.uniform(0.4, 0.6)
    else:
        ry, rx = rng.uniform(3, min(height, width) / 3, 2)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    if not mask.any():
        mask[int(min(cy, height - 1)), int(min(cx, width - 1))] = True
    return mask


def _perturbed(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    moved = np.roll(mask, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
    if rng.random() < 0.3:
        moved = moved | np.roll(moved, 2, axis=1)
    return moved


def make_case(seed: int, crowd: bool = True, polygons: bool = True) -> tuple[dict, list[dict]]:
    """A small COCO ground truth and results with the awkward parts of the metric in it.

    Crowd regions, images without ground truth, a class without predictions, a class with
    predictions but no ground truth, one image with more than 100 detections, tiny and huge
    instances, ties in score, GT as polygons and as RLE.
    """
    rng = np.random.default_rng(seed)
    categories = [{"id": cid, "name": f"class{cid}"} for cid in (1, 3, 4, 9)]
    images, annotations, results = [], [], []
    for index in range(8):
        height, width = (180, 200) if index == 0 else (int(rng.integers(40, 140)), int(rng.integers(40, 140)))
        image = {"id": 100 + index, "file_name": f"img{index}.png", "width": width, "height": height}
        images.append(image)
        if index == 1:
            continue  # an image without ground truth (it still gets false positives)
        for number in range(int(rng.integers(1, 7))):
            kind = "huge" if index == 0 and number == 0 else rng.choice(["tiny", "huge", "normal", "normal"])
            mask = _blob(rng, height, width, kind)
            category = int(rng.choice([1, 3, 4]))  # class 9 never has ground truth
            is_crowd = crowd and rng.random() < 0.15
            if polygons and not is_crowd and kind != "tiny" and rng.random() < 0.5:
                segmentation = mask_ops.to_polygons(mask)
                area = float(mask_ops.area(mask_ops.to_rle(segmentation, height, width)))
            else:
                segmentation = _rle(mask)
                area = float(mask.sum())
            annotations.append({
                "id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                "segmentation": segmentation, "area": area, "bbox": mask_ops.bbox(_rle(mask)), "iscrowd": int(is_crowd),
            })  # fmt: skip
            for _ in range(int(rng.integers(0, 4))):
                predicted_class = category if rng.random() < 0.8 else int(rng.choice([1, 3, 9]))
                if predicted_class == 4 and seed % 2:
                    continue  # class 4 gets no predictions in odd cases
                _add_result(results, image, _perturbed(mask, rng), predicted_class, rng)
        for _ in range(int(rng.integers(0, 4))):  # background false positives
            _add_result(results, image, _blob(rng, height, width, "normal"), int(rng.choice([1, 3, 9])), rng)
    crowded = images[2]  # more than 100 detections on one image: maxDets cuts them
    for _ in range(130):
        _add_result(results, crowded, _blob(rng, crowded["height"], crowded["width"], "normal"), 1, rng)
    return {"images": images, "categories": categories, "annotations": annotations}, results


def _add_result(results: list[dict], image: dict, mask: np.ndarray, category: int, rng: np.random.Generator) -> None:
    rle = _rle(mask)
    score = round(float(rng.random()), 2)  # two decimals: ties happen and must break as in pycocotools
    results.append(
        {
            "image_id": image["id"],
            "category_id": category,
            "segmentation": rle,
            "bbox": mask_ops.bbox(rle),
            "score": score,
        }
    )


# -- equality with pycocotools ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_all_twelve_stats_equal_pycocotools(seed):
    gt, results = make_case(seed)
    result = evaluate_results(Dataset(copy.deepcopy(gt)), copy.deepcopy(results), ("segm", "bbox"), errors=False)
    for iou_type in ("segm", "bbox"):
        reference = pycocotools_eval(gt, results, iou_type)
        assert np.abs(np.asarray(result.stats[iou_type]) - reference.stats).max() <= TOLERANCE, iou_type
        ours = [row["AP"] for row in result.per_class[iou_type]]
        for mine, theirs in zip(ours, reference_per_class_ap(reference)):
            assert (mine is None and theirs is None) or abs(mine - theirs) <= TOLERANCE


def test_cases_exercise_the_awkward_parts():
    """Guards the generator: the equality test above is only as good as what it feeds."""
    gt, results = make_case(1)
    assert any(a["iscrowd"] for a in gt["annotations"])
    assert any(isinstance(a["segmentation"], list) for a in gt["annotations"])
    areas = [a["area"] for a in gt["annotations"]]
    assert min(areas) < 32**2 and max(areas) > 96**2
    per_image = np.bincount([r["image_id"] - 100 for r in results])
    assert per_image.max() > 100
    assert not any(r["category_id"] == 4 for r in results)
    result = evaluate_results(Dataset(gt), results, errors=False)
    assert result.per_class["segm"][3]["AP"] is None  # class9: predictions, no ground truth


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    boxes=st.lists(
        st.tuples(
            st.integers(0, 2),
            st.integers(0, 30),
            st.integers(0, 30),
            st.integers(1, 30),
            st.integers(1, 30),
            st.booleans(),
            st.floats(0, 1, allow_nan=False),
            st.integers(-4, 4),
            st.integers(0, 2),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_random_box_shaped_cases_equal_pycocotools(boxes):
    """Hypothesis: rectangles on three 32x32 images, each with a shifted, possibly mislabelled detection."""
    images = [{"id": i + 1, "file_name": f"{i}.png", "width": 32, "height": 32} for i in range(3)]
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    annotations, results = [], []
    for image_index, x, y, w, h, crowd, score, shift, label in boxes:
        mask = np.zeros((32, 32), bool)
        mask[y : y + h, x : x + w] = True
        rle = _rle(mask)
        annotations.append({
            "id": len(annotations) + 1, "image_id": image_index + 1, "category_id": 1 + (label == 1),
            "segmentation": rle, "area": float(mask.sum()), "bbox": mask_ops.bbox(rle), "iscrowd": int(crowd),
        })  # fmt: skip
        moved = _rle(np.roll(mask, shift, axis=1))
        results.append(
            {
                "image_id": image_index + 1,
                "category_id": 1 + (label > 0),
                "segmentation": moved,
                "bbox": mask_ops.bbox(moved),
                "score": score,
            }
        )
    gt = {"images": images, "categories": categories, "annotations": annotations}
    result = evaluate_results(Dataset(copy.deepcopy(gt)), copy.deepcopy(results), ("segm", "bbox"), errors=False)
    for iou_type in ("segm", "bbox"):
        assert (
            np.abs(np.asarray(result.stats[iou_type]) - pycocotools_eval(gt, results, iou_type).stats).max()
            <= TOLERANCE
        )


def test_results_without_bbox_take_box_and_area_from_the_mask_like_pycocotools():
    gt, results = make_case(3, polygons=False)
    for r in results:
        del r["bbox"]
    result = evaluate_results(Dataset(copy.deepcopy(gt)), copy.deepcopy(results), ("segm", "bbox"), errors=False)
    for iou_type in ("segm", "bbox"):
        assert (
            np.abs(np.asarray(result.stats[iou_type]) - pycocotools_eval(gt, results, iou_type).stats).max()
            <= TOLERANCE
        )


def test_in_memory_instances_equal_pycocotools_on_the_same_records():
    gt, results = make_case(4, crowd=False)
    dataset = Dataset(gt)
    predictions = {}
    for image in gt["images"]:
        mine = [r for r in results if r["image_id"] == image["id"]]
        masks = (
            np.stack([mask_ops.decode(r["segmentation"], image["height"], image["width"]) for r in mine])
            if mine
            else np.zeros((0, image["height"], image["width"]), bool)
        )
        names = {1: "class1", 3: "class3", 4: "class4", 9: "class9"}
        predictions[image["id"]] = Instances.from_masks(
            masks,
            [dataset.class_names.index(names[r["category_id"]]) for r in mine],
            [r["score"] for r in mine],
            dataset.class_names,
        )
    result = evaluate(dataset, predictions, ("segm",), errors=False)
    records = [rec for image_id, inst in predictions.items() for rec in inst.to_coco(image_id, dataset.category_ids)]
    assert abs(np.asarray(result.stats["segm"]) - pycocotools_eval(gt, records, "segm").stats).max() <= TOLERANCE
    assert result.stat("AP") > 0.05  # not a vacuous all-zero comparison
    # (id, Instances) pairs as they come, e.g. from Predictor.iter_dataset, give the same numbers.
    streamed = evaluate(dataset, ((k, v) for k, v in predictions.items()), ("segm",), errors=False)
    assert streamed.stats["segm"] == result.stats["segm"]


def test_empty_predictions_give_zero_ap_where_there_is_ground_truth():
    gt, _ = make_case(0)
    result = evaluate_results(Dataset(gt), [], ("segm", "bbox"))
    # pycocotools crashes on an empty list; one detection far from everything scores the same
    lone = np.zeros((gt["images"][1]["height"], gt["images"][1]["width"]), bool)
    lone[0, 0] = True
    far = [
        {
            "image_id": gt["images"][1]["id"],
            "category_id": 9,
            "segmentation": _rle(lone),
            "bbox": [0, 0, 1, 1],
            "score": 0.5,
        }
    ]
    for iou_type in ("segm", "bbox"):
        assert result.stats[iou_type] == pytest.approx(list(pycocotools_eval(gt, far, iou_type).stats), abs=TOLERANCE)
        assert result.stat("AP", iou_type) == 0.0
    assert result.errors.totals["missed"] == sum(not a["iscrowd"] for a in gt["annotations"])
    assert result.notes


def test_annotation_id_zero_is_not_mistaken_for_unmatched():
    """COCOeval uses annotation ids as match markers with 0 = unmatched; ids are renumbered first."""
    mask = np.zeros((20, 20), bool)
    mask[2:12, 3:15] = True
    gt = {
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 0, "image_id": 1, "category_id": 1, "segmentation": _rle(mask), "iscrowd": 0}],
    }
    results = [{"image_id": 1, "category_id": 1, "segmentation": _rle(mask), "score": 0.9}]
    result = evaluate_results(Dataset(gt), results)
    assert result.stat("AP") == pytest.approx(1.0)
    assert gt["annotations"][0] == {"id": 0, "image_id": 1, "category_id": 1, "segmentation": _rle(mask), "iscrowd": 0}


# -- bad input ------------------------------------------------------------------------------------------
def _tiny_gt() -> dict:
    mask = np.zeros((10, 12), bool)
    mask[2:6, 2:8] = True
    return {
        "images": [{"id": 5, "file_name": "a.png", "width": 12, "height": 10}],
        "categories": [{"id": 2, "name": "cell"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 5,
                "category_id": 2,
                "segmentation": _rle(mask),
                "area": 24,
                "bbox": [2, 2, 6, 4],
                "iscrowd": 0,
            }
        ],
    }


def _good_result(**changes) -> dict:
    mask = np.zeros((10, 12), bool)
    mask[2:6, 2:7] = True
    return {"image_id": 5, "category_id": 2, "segmentation": _rle(mask), "bbox": [2, 2, 5, 4], "score": 0.8, **changes}


@pytest.mark.parametrize(
    "results, message",
    [
        ([_good_result(image_id=6)], r"result 0: unknown image id 6"),
        ([_good_result(), _good_result(category_id="7")], r"result 1 \(image id 5\): category id must be an integer"),
        ([_good_result(segmentation=_rle(np.zeros((12, 10), bool)))], r"mask is 10x12 but image id 5 is 12x10"),
        ([_good_result(score=float("nan"))], r"score must be a finite number >= 0, got nan"),
        ([_good_result(score=-0.1)], r"score must be a finite number >= 0"),
        ([_good_result(score="high")], r"score must be"),
        ([_good_result(id=3), _good_result(id=3)], r"result 1: duplicate result id 3"),
        ([_good_result(segmentation=None)], r"has no 'segmentation'"),
        ([_good_result(bbox=[1, 2, -3, 4])], r"bbox must be \[x, y, width, height\]"),
        ([_good_result(segmentation={"size": [10, 12]})], r"segmentation must be an RLE"),
        (["not a record"], r"result 0: is not an object"),
    ],
)
def test_bad_results_are_one_line_errors_naming_the_record(results, message):
    with pytest.raises(InstasegError, match=message):
        evaluate_results(Dataset(_tiny_gt()), results, source="preds.json")


def test_bad_instances_are_reported():
    dataset = Dataset(_tiny_gt())
    wrong_size = Instances.from_masks(np.ones((1, 8, 8), bool), [0], [0.5], ("cell",))
    with pytest.raises(InstasegError, match="masks are 8x8 but the image is 12x10"):
        evaluate(dataset, {5: wrong_size})
    with pytest.raises(InstasegError, match="image id 99"):
        evaluate(dataset, {99: Instances.empty(10, 12, ("cell",))})
    with pytest.raises(InstasegError, match="class 'dog' is not a ground-truth class"):
        evaluate(dataset, {5: Instances.from_masks(np.ones((1, 10, 12), bool), [0], [0.5], ("dog",))})


# -- error breakdown ------------------------------------------------------------------------------------
def _square(y: int, x: int, side: int = 10, size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[y : y + side, x : x + side] = True
    return mask


def test_error_breakdown_classifies_each_prediction_and_sorts_worst_first():
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    images = [
        {"id": 1, "file_name": "clean.png", "width": 64, "height": 64},
        {"id": 2, "file_name": "messy.png", "width": 64, "height": 64},
    ]
    gt_masks = [
        (2, _square(2, 2), 1),
        (2, _square(2, 30), 1),
        (2, _square(30, 2), 2),
        (2, _square(50, 50), 1),
        (1, _square(5, 5), 2),
    ]
    annotations = [
        {
            "id": i + 1,
            "image_id": image_id,
            "category_id": cat,
            "segmentation": _rle(m),
            "area": float(m.sum()),
            "iscrowd": 0,
        }
        for i, (image_id, m, cat) in enumerate(gt_masks)
    ]

    def result(image_id, mask, category, score):
        return {"image_id": image_id, "category_id": category, "segmentation": _rle(mask), "score": score}

    results = [
        result(2, _square(2, 2), 1, 0.9),  # true positive on the first cat
        result(2, _square(3, 2), 1, 0.8),  # duplicate of it
        result(2, _square(30, 2), 1, 0.7),  # the dog called a cat: wrong class
        result(2, _square(2, 36), 1, 0.6),  # second cat, IoU 4/16: poor localization
        result(2, _square(40, 40, 5), 1, 0.55),  # nothing there: background
        result(2, _square(50, 50), 1, 0.2),  # would find the last cat, but below the threshold: missed
        result(1, _square(5, 5), 2, 0.9),  # the other image: one hit
        result(1, _square(5, 11), 1, 0.9),  # and a cat touching only the dog, IoU 0.25: class and location
    ]
    heard: list[events.Event] = []
    with events.listen(heard.append):
        breakdown = evaluate_results(
            Dataset({"images": images, "categories": categories, "annotations": annotations}), results
        ).errors
    progress = [(e.done, e.total, e.unit, e.finished) for e in heard if isinstance(e, events.Progress)]
    assert progress == [(0, 2, "image", False), (1, 2, "image", False), (2, 2, "image", False), (2, 2, "image", True)]
    assert {e.task for e in heard} == {"error breakdown"}
    assert [row["file_name"] for row in breakdown.images] == ["messy.png", "clean.png"]
    messy = breakdown.images[0]
    expected = {"true_positives": 1, "duplicate": 1, "wrong_class": 1, "localization": 1, "background": 1, "missed": 1}
    assert {kind: messy[kind] for kind in expected} == expected and messy["class_and_location"] == 0
    assert messy["errors"] == 5 and messy["predictions"] == 5 and messy["gt"] == 4
    assert breakdown.images[1]["class_and_location"] == 1 and breakdown.images[1]["errors"] == 1
    assert breakdown.totals["true_positives"] == 2 and breakdown.totals["errors"] == 6
    # rows: cat, dog, background; columns: predicted cat, dog, background
    assert breakdown.confusion.tolist() == [[1, 0, 2], [1, 1, 0], [4, 0, 0]]


# -- predictions folders and the CLI -------------------------------------------------------------------
def _write_case(tmp_path, seed=2):
    gt, results = make_case(seed)
    gt_path, results_path = tmp_path / "gt.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps(gt))
    results_path.write_text(json.dumps(results))
    return gt, results, gt_path, results_path


def _predictions_folder(tmp_path, gt, results):
    """What ``instaseg predict`` writes: its own image ids (by file name) and category ids k + 1 (by name)."""
    names = {c["id"]: c["name"] for c in gt["categories"]}
    own_categories = [{"id": k + 1, "name": name} for k, name in enumerate(reversed(list(names.values())))]
    category_by_name = {c["name"]: c["id"] for c in own_categories}
    own_images = [{**img, "id": k, "file_name": f"sub/{img['file_name']}"} for k, img in enumerate(gt["images"])]
    image_by_gt_id = {img["id"]: k for k, img in enumerate(gt["images"])}
    annotations = [
        {
            **r,
            "id": i + 1,
            "image_id": image_by_gt_id[r["image_id"]],
            "category_id": category_by_name[names[r["category_id"]]],
        }
        for i, r in enumerate(results)
    ]
    folder = tmp_path / "pred"
    folder.mkdir()
    (folder / "predictions.json").write_text(
        json.dumps({"images": own_images, "categories": own_categories, "annotations": annotations})
    )
    return folder


def test_predictions_folder_is_matched_by_file_name_and_class_name(tmp_path):
    gt, results = make_case(5)
    folder = _predictions_folder(tmp_path, gt, results)
    loaded = load_predictions(Dataset(gt), folder)
    stats = evaluate_results(Dataset(gt), loaded, errors=False).stats["segm"]
    assert np.abs(np.asarray(stats) - pycocotools_eval(gt, results, "segm").stats).max() <= TOLERANCE


def test_predictions_folder_with_an_unknown_class_is_refused(tmp_path):
    gt, results = make_case(5)
    folder = _predictions_folder(tmp_path, gt, results)
    data = json.loads((folder / "predictions.json").read_text())
    data["categories"][0]["name"] = "zebra"
    (folder / "predictions.json").write_text(json.dumps(data))
    with pytest.raises(InstasegError, match="class 'zebra' is not a ground-truth class"):
        load_predictions(Dataset(gt), folder)


def test_cli_eval_prints_stats_and_writes_the_report(tmp_path, cli):
    gt, results, gt_path, results_path = _write_case(tmp_path)
    out = tmp_path / "report"
    r = cli("eval", gt_path, results_path, "--iou-type", "both", "--out", out)
    assert r.code == 0, r.stderr
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in r.stdout
    assert "class3" in r.stdout and "worst" in r.stdout
    expected = {"metrics.json", "errors.json", "errors.csv", "confusion_matrix.png"}
    expected |= {f"pr_{t}_iou{label}.png" for t in ("segm", "bbox") for label in ("50", "75", "50-95")}
    assert {p.name for p in out.iterdir()} == expected
    metrics = json.loads((out / "metrics.json").read_text())
    for iou_type in ("segm", "bbox"):
        reference = pycocotools_eval(gt, results, iou_type).stats
        assert [metrics["stats"][iou_type][name] for name in STAT_NAMES] == pytest.approx(
            list(reference), abs=TOLERANCE
        )
    errors_csv = (out / "errors.csv").read_text().splitlines()
    assert errors_csv[0].startswith("image_id,file_name,gt,predictions,true_positives,missed")
    assert len(errors_csv) == 1 + len(gt["images"])
    assert (out / "pr_segm_iou50.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = cli("eval", gt_path, results_path, "--out", out)
    assert again.code == 2 and "already exists" in again.stderr
    assert cli("eval", gt_path, results_path, "--out", out, "--overwrite").code == 0
    assert not (out / "pr_bbox_iou50.png").exists()  # replaced by the segm-only report, not merged


def test_cli_eval_reads_a_predictions_folder(tmp_path, cli):
    gt, results, gt_path, _ = _write_case(tmp_path, seed=5)
    folder = _predictions_folder(tmp_path, gt, results)
    r = cli("eval", gt_path, folder)
    assert r.code == 0, r.stderr
    ap = pycocotools_eval(gt, results, "segm").stats[0]
    assert f"maxDets=100 ] = {ap:0.3f}" in r.stdout


@pytest.mark.parametrize(
    "results, message",
    [
        ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]', "unknown image id 1"),
        ("{not json", "malformed JSON"),
        ('{"a": 1}', "expected a COCO results list"),
    ],
)
def test_cli_eval_bad_predictions_give_one_line_errors(tmp_path, cli, results, message):
    _, _, gt_path, results_path = _write_case(tmp_path)
    results_path.write_text(results)
    r = cli("eval", gt_path, results_path)
    assert r.code == 2
    assert r.stderr.startswith("error: ") and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_nan_and_infinite_scores_in_json_are_refused(tmp_path, cli):
    _, results, gt_path, results_path = _write_case(tmp_path)
    results[3]["score"] = math.inf
    results_path.write_text(json.dumps(results))  # Python writes Infinity, which orjson refuses to parse
    r = cli("eval", gt_path, results_path)
    assert r.code == 2 and "error:" in r.stderr


def test_pycocotools_mask_codec_agrees_with_ours():
    """The cases above build RLE through instaseg.core.masks; pycocotools must read them the same way."""
    mask = _blob(np.random.default_rng(0), 30, 40, "normal")
    ours = _rle(mask)
    decoded = pycoco_mask.decode({"size": ours["size"], "counts": ours["counts"].encode()})
    assert (decoded.astype(bool) == mask).all()


def test_missing_gt_area_and_bbox_are_computed_from_the_mask():
    gt, results = make_case(0, crowd=False, polygons=False)
    bare = copy.deepcopy(gt)
    for ann in bare["annotations"]:
        del ann["area"], ann["bbox"]
    for ann in gt["annotations"]:  # pycocotools needs them given; give the mask's own
        ann["area"] = float(mask_ops.area(ann["segmentation"]))
        ann["bbox"] = mask_ops.bbox(ann["segmentation"])
    result = evaluate_results(Dataset(bare), copy.deepcopy(results), ("segm", "bbox"), errors=False)
    for iou_type in ("segm", "bbox"):
        assert (
            np.abs(np.asarray(result.stats[iou_type]) - pycocotools_eval(gt, results, iou_type).stats).max()
            <= TOLERANCE
        )


@pytest.mark.parametrize("segmentation", ["abc", {"size": [5, 5], "counts": "abc"}])
def test_malformed_ground_truth_masks_are_named(segmentation):
    gt = _tiny_gt()
    gt["annotations"][0]["segmentation"] = segmentation
    with pytest.raises(InstasegError, match=r"annotation id 1: segmentation must be polygons or an RLE"):
        evaluate_results(Dataset(gt), [_good_result()])


def test_a_prediction_inside_a_crowd_region_is_no_error():
    crowd = _square(10, 10, 30)
    gt = {
        "images": [{"id": 1, "file_name": "crowd.png", "width": 64, "height": 64}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle(crowd), "iscrowd": 1}],
    }
    inside = {"image_id": 1, "category_id": 1, "segmentation": _rle(_square(15, 15, 8)), "score": 0.9}
    breakdown = evaluate_results(Dataset(gt), [inside]).errors
    assert breakdown.totals["errors"] == 0 and breakdown.totals["gt"] == 0
    assert not breakdown.confusion.any()
    outside = {**inside, "segmentation": _rle(_square(50, 50, 8))}
    assert evaluate_results(Dataset(gt), [outside]).errors.totals["background"] == 1


def test_polygon_results_equal_pycocotools():
    gt, results = make_case(2)
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    for r in results[::2]:
        r["segmentation"] = mask_ops.to_polygons(mask_ops.decode(r["segmentation"], *sizes[r["image_id"]]))
    assert any(isinstance(r["segmentation"], list) for r in results)
    result = evaluate_results(Dataset(copy.deepcopy(gt)), copy.deepcopy(results), errors=False)
    assert np.abs(np.asarray(result.stats["segm"]) - pycocotools_eval(gt, results, "segm").stats).max() <= TOLERANCE


def test_box_only_results_evaluate_as_boxes_and_are_refused_for_masks():
    gt, results = make_case(3)
    for r in results:
        del r["segmentation"]
    result = evaluate_results(Dataset(copy.deepcopy(gt)), copy.deepcopy(results), ("bbox",))
    assert np.abs(np.asarray(result.stats["bbox"]) - pycocotools_eval(gt, results, "bbox").stats).max() <= TOLERANCE
    assert result.errors.iou_type == "bbox" and result.errors.totals["true_positives"] > 0
    with pytest.raises(InstasegError, match="has no 'segmentation'"):
        evaluate_results(Dataset(gt), results, ("segm",))
