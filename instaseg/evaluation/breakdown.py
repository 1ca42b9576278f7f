"""Where AP is lost: each prediction at a score threshold classified by its kind of error, and class confusion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from faster_coco_eval.core import mask as engine_mask

from instaseg.core import events
from instaseg.data import Dataset

ERROR_KINDS = ("missed", "background", "duplicate", "wrong_class", "localization", "class_and_location")
# IoU below which a prediction does not touch an instance at all, and above which it counts as found
TOUCH_IOU, MATCH_IOU = 0.1, 0.5


@dataclass
class ErrorBreakdown:
    """Why AP is lost, counted at one score threshold (predictions scoring below it are left out).

    Each prediction is a true positive or exactly one kind of false positive; each ground-truth
    instance nobody touches is ``missed``. Crowd regions are never errors, and a prediction
    inside one is ignored, as COCO does.

    Attributes:
        score_threshold: predictions scoring below this were not counted.
        iou_type: ``"segm"`` (mask IoU) or ``"bbox"``.
        totals: count of each kind in ``ERROR_KINDS`` plus ``true_positives``, ``gt`` and ``predictions``.
        images: one dict per image with the same counts, ``image_id`` and ``file_name``, worst first.
        confusion: (K+1, K+1) counts, rows the ground-truth class, columns the predicted class,
            the last row and column "background" (a prediction matching nothing, an instance found
            by no prediction); pairs are matched class-agnostically at IoU >= 0.5.
    """

    score_threshold: float
    iou_type: str
    totals: dict[str, int]
    images: list[dict]
    confusion: np.ndarray

    def to_dict(self) -> dict:
        """A JSON-ready dict, the confusion matrix as nested lists."""
        return {
            "score_threshold": self.score_threshold,
            "iou_type": self.iou_type,
            "totals": self.totals,
            "images": self.images,
            "confusion": self.confusion.tolist(),
        }


def error_breakdown(
    gt: Dataset, gt_anns: list[dict], dt_anns: list[dict], *, iou_type: str, score_threshold: float
) -> ErrorBreakdown:
    """Classify every prediction scoring at least ``score_threshold`` and every missed instance.

    Predictions are taken in score order per image and classified by the first rule that holds:
    true positive (IoU >= 0.5 with a not yet matched instance of its class), duplicate (IoU >= 0.5
    with an already matched instance of its class), ignored (inside a crowd region of its class),
    wrong class (IoU >= 0.5 with an instance of another class), poor localization (best IoU with its
    class in [0.1, 0.5)), class and location (touches only other classes, IoU in [0.1, 0.5)),
    background (IoU < 0.1 with every instance). An instance is missed when no prediction of any
    class touches it (IoU >= 0.1). ``gt_anns``/``dt_anns`` are the engine records built by
    ``evaluate_results``.
    """
    num_classes = len(gt.categories)
    gt_by_image: dict[int, list[dict]] = {}
    for ann in gt_anns:
        gt_by_image.setdefault(ann["image_id"], []).append(ann)
    dt_by_image: dict[int, list[dict]] = {}
    for det in dt_anns:
        if det["score"] >= score_threshold:
            dt_by_image.setdefault(det["image_id"], []).append(det)
    confusion = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    rows = []
    for image in events.track(gt.images, "error breakdown", unit="image"):
        gts = gt_by_image.get(image["id"], [])
        dts = sorted(dt_by_image.get(image["id"], []), key=lambda d: -d["score"])
        counts = _image_errors(gt, gts, dts, iou_type, confusion)
        rows.append({"image_id": image["id"], "file_name": image["file_name"], **counts})
    rows.sort(key=lambda row: (-row["errors"], row["image_id"]))
    totals = {
        key: int(sum(row[key] for row in rows))
        for key in ("gt", "predictions", "true_positives", *ERROR_KINDS, "errors")
    }
    return ErrorBreakdown(float(score_threshold), iou_type, totals, rows, confusion)


def _iou_matrix(gts: list[dict], dts: list[dict], iou_type: str) -> np.ndarray:
    if not gts or not dts:
        return np.zeros((len(dts), len(gts)))
    # after a mask evaluation the engine has left each record's compressed RLE in "rle"
    key = "rle" if iou_type == "segm" else "bbox"
    shapes = [a[key] for a in (*dts, *gts)]
    ious = engine_mask.iou(shapes[: len(dts)], shapes[len(dts) :], [a["iscrowd"] for a in gts])
    return np.asarray(ious, np.float64).reshape(len(dts), len(gts))


def _image_errors(
    gt: Dataset, gts: list[dict], dts: list[dict], iou_type: str, confusion: np.ndarray
) -> dict[str, int]:
    ious = _iou_matrix(gts, dts, iou_type)  # detections (score order) x instances
    gt_class = np.asarray([gt.category_index[a["category_id"]] for a in gts], np.int64)
    dt_class = np.asarray([gt.category_index[d["category_id"]] for d in dts], np.int64)
    crowd = np.asarray([bool(a["iscrowd"]) for a in gts], bool)
    regular = ~crowd
    same = dt_class[:, None] == gt_class[None, :]
    hit, touch = ious >= MATCH_IOU, ious >= TOUCH_IOU
    # only detections that hit an instance of their class need the sequential, score-ordered matching;
    # those that find all such instances taken are duplicates
    candidate = (hit & same & regular).any(1)
    matched = np.zeros(len(gts), bool)
    true_positive = np.zeros(len(dts), bool)
    for d in np.flatnonzero(candidate):
        options = np.where(hit[d] & same[d] & regular & ~matched, ious[d], -1.0)
        best = int(options.argmax())
        if options[best] >= 0:
            matched[best] = true_positive[d] = True
    rest = ~candidate & ~(hit & same & crowd).any(1)  # COCO ignores detections inside a crowd region
    kinds = {"duplicate": candidate & ~true_positive}
    for kind, rule in (
        ("wrong_class", hit & ~same & regular),
        ("localization", touch & same & regular),
        ("class_and_location", touch & regular),
    ):
        kinds[kind] = rest & rule.any(1)
        rest = rest & ~kinds[kind]
    kinds["background"] = rest
    counts = {"true_positives": int(true_positive.sum()), "missed": int((~touch[:, regular].any(0)).sum())}
    counts.update({kind: int(flags.sum()) for kind, flags in kinds.items()})
    _add_confusion(confusion, ious, gt_class, dt_class, crowd)
    return {
        "gt": int(regular.sum()),
        "predictions": len(dts),
        **{key: counts[key] for key in ("true_positives", *ERROR_KINDS)},
        "errors": sum(counts[kind] for kind in ERROR_KINDS),
    }


def _add_confusion(
    confusion: np.ndarray, ious: np.ndarray, gt_class: np.ndarray, dt_class: np.ndarray, crowd: np.ndarray
) -> None:
    """Class-agnostic greedy matching at IoU >= 0.5, best pairs first, each side used once."""
    background = len(confusion) - 1
    regular = np.flatnonzero(~crowd)
    dt_used = np.zeros(len(dt_class), bool)
    gt_used = np.zeros(len(gt_class), bool)
    pairs = np.argwhere(ious[:, regular] >= MATCH_IOU) if len(dt_class) else np.zeros((0, 2), int)
    order = np.argsort(-ious[pairs[:, 0], regular[pairs[:, 1]]], kind="stable")
    for d, column in pairs[order]:
        g = regular[column]
        if not dt_used[d] and not gt_used[g]:
            dt_used[d] = gt_used[g] = True
            confusion[gt_class[g], dt_class[d]] += 1
    for g in regular[~gt_used[regular]]:
        confusion[gt_class[g], background] += 1
    in_crowd = (ious[:, crowd] >= MATCH_IOU).any(1) if crowd.any() else np.zeros(len(dt_class), bool)
    for d in np.flatnonzero(~dt_used & ~in_crowd):
        confusion[background, dt_class[d]] += 1
