"""The COCO metric on a real dataset (balloon val, read by the VIA converter) against pycocotools."""

from __future__ import annotations

import copy

import cv2
import numpy as np

from instaseg.core import masks as mask_ops
from instaseg.evaluation import evaluate_results
from tests.conftest import shared_dataset
from tests.test_evaluate import TOLERANCE, pycocotools_eval


def _perturbed_predictions(dataset, seed: int = 0) -> list[dict]:
    """Ground truth turned into imperfect predictions: masks grown, shrunk or shifted, some dropped,
    some duplicated, plus a few false positives; random scores."""
    rng = np.random.default_rng(seed)
    results = []
    for ann in dataset.annotations:
        image = dataset.image_by_id[ann["image_id"]]
        height, width = image["height"], image["width"]
        if rng.random() < 0.15:
            continue  # missed
        mask = mask_ops.decode(ann["segmentation"], height, width).astype(np.uint8)
        change = rng.integers(3)
        if change == 0:
            mask = cv2.dilate(mask, np.ones((15, 15), np.uint8))
        elif change == 1:
            mask = cv2.erode(mask, np.ones((11, 11), np.uint8))
        else:
            mask = np.roll(mask, tuple(rng.integers(-25, 26, 2)), axis=(0, 1))
        copies = 2 if rng.random() < 0.1 else 1
        for _ in range(copies):
            rle = mask_ops.encode(mask.astype(bool))
            results.append(
                {
                    "image_id": image["id"],
                    "category_id": ann["category_id"],
                    "segmentation": rle,
                    "bbox": mask_ops.bbox(rle),
                    "score": float(rng.random()),
                }
            )
    for image in dataset.images[:5]:
        mask = np.zeros((image["height"], image["width"]), bool)
        y, x = rng.integers(0, image["height"] - 60), rng.integers(0, image["width"] - 80)
        mask[y : y + 60, x : x + 80] = True
        rle = mask_ops.encode(mask)
        results.append(
            {
                "image_id": image["id"],
                "category_id": dataset.category_ids[0],
                "segmentation": rle,
                "bbox": mask_ops.bbox(rle),
                "score": float(rng.random()),
            }
        )
    return results


def test_balloon_val_with_perturbed_ground_truth_equals_pycocotools():
    from instaseg.data.convert import open_dataset

    dataset = open_dataset(shared_dataset("balloon") / "val", "via")
    results = _perturbed_predictions(dataset)
    gt_coco = copy.deepcopy(dataset.coco)
    result = evaluate_results(dataset, copy.deepcopy(results), ("segm", "bbox"))
    for iou_type in ("segm", "bbox"):
        reference = pycocotools_eval(gt_coco, results, iou_type).stats
        assert np.abs(np.asarray(result.stats[iou_type]) - reference).max() <= TOLERANCE, iou_type
    assert 0.2 < result.stat("AP") < 0.95  # perturbed: neither perfect nor useless
    assert result.errors.totals["missed"] > 0 and result.errors.totals["duplicate"] > 0


def test_cli_eval_reads_balloon_through_the_via_converter(tmp_path, cli):
    import json

    from instaseg.data.convert import open_dataset

    balloon_val = shared_dataset("balloon") / "val"
    dataset = open_dataset(balloon_val, "via")
    results = _perturbed_predictions(dataset, seed=1)
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    r = cli("eval", balloon_val, results_path, "--from", "via", "--out", tmp_path / "report")
    assert r.code == 0, r.stderr
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    reference = pycocotools_eval(dataset.coco, results, "segm").stats
    assert abs(metrics["stats"]["segm"]["AP"] - reference[0]) <= TOLERANCE
    assert metrics["errors"]["totals"]["gt"] == len(dataset.annotations)
