"""The COCO metric: the twelve COCO numbers and a per-class table, identical to pycocotools.

``evaluate_results`` checks a COCO results list (``results``), builds the engine's COCO objects in
memory (fresh records, ids renumbered so that none is 0), runs faster-coco-eval's ``COCOeval`` once
per IoU type and, when asked, adds the error breakdown (``breakdown``). ``evaluate`` does the same
for ``Instances`` held in memory, through the records ``instaseg predict`` writes.
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval import COCO as _EngineCOCO
from faster_coco_eval import COCOeval_faster

from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.core.structures import Instances
from instaseg.data import Dataset
from instaseg.evaluation.breakdown import ErrorBreakdown, error_breakdown
from instaseg.evaluation.results import engine_detections

IOU_TYPES = ("segm", "bbox")
STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip
# (AP or AR, IoU label, area label, max detections) of each stat, for pycocotools' familiar summary lines
_STAT_LINES = (
    ("AP", "0.50:0.95", "all", 100), ("AP", "0.50", "all", 100), ("AP", "0.75", "all", 100),
    ("AP", "0.50:0.95", "small", 100), ("AP", "0.50:0.95", "medium", 100), ("AP", "0.50:0.95", "large", 100),
    ("AR", "0.50:0.95", "all", 1), ("AR", "0.50:0.95", "all", 10), ("AR", "0.50:0.95", "all", 100),
    ("AR", "0.50:0.95", "small", 100), ("AR", "0.50:0.95", "medium", 100), ("AR", "0.50:0.95", "large", 100),
)  # fmt: skip


@dataclass
class EvalResult:
    """The outcome of ``evaluate``.

    Attributes:
        class_names: category names in ``Dataset.categories`` order.
        stats: iou_type -> the 12 COCO numbers in ``STAT_NAMES`` order (-1 where undefined, as COCO).
        per_class: iou_type -> one row per class: ``class``, ``AP``, ``AP50``, ``AP75``, ``AR100``
            (None where the class has no ground truth), ``gt`` and ``predictions`` counts.
        precision: iou_type -> (T, R, K) interpolated precision at the ``iou_thresholds`` x
            ``recall_thresholds`` for each class (area all, 100 detections; -1 where undefined).
        errors: the error breakdown and confusion matrix, or None when not asked for.
        notes: remarks on how to read the numbers.
        warnings: what in the input may make the numbers not mean what they seem (results that
            were left out, ground-truth images the predictions do not cover).
    """

    class_names: list[str]
    stats: dict[str, list[float]]
    per_class: dict[str, list[dict]]
    precision: dict[str, np.ndarray]
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    errors: ErrorBreakdown | None = None
    num_images: int = 0
    num_predictions: int = 0
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def stat(self, name: str = "AP", iou_type: str = "segm") -> float:
        """One of the 12 COCO numbers by name, e.g. ``result.stat("AP50", "bbox")``."""
        return self.stats[iou_type][STAT_NAMES.index(name)]

    def to_dict(self) -> dict:
        """A JSON-ready dict: stats by name, per-class rows, error breakdown."""
        return {
            "num_images": self.num_images,
            "num_predictions": self.num_predictions,
            "class_names": self.class_names,
            "stats": {t: dict(zip(STAT_NAMES, values, strict=True)) for t, values in self.stats.items()},
            "per_class": self.per_class,
            "errors": self.errors.to_dict() if self.errors is not None else None,
            "notes": self.notes,
            "warnings": self.warnings,
        }

    def summary(self) -> str:
        """The twelve numbers per IoU type in pycocotools' layout."""
        lines = []
        for iou_type, values in self.stats.items():
            lines.append(f"{'mask' if iou_type == 'segm' else 'box'} ({iou_type}):")
            for (kind, iou, area, dets), value in zip(_STAT_LINES, values, strict=True):
                title = "Average Precision  (AP)" if kind == "AP" else "Average Recall     (AR)"
                lines.append(f" {title} @[ IoU={iou:<9} | area={area:>6s} | maxDets={dets:>3d} ] = {value:0.3f}")
        return "\n".join(lines)


def evaluate(
    gt: Dataset,
    predictions: Mapping[int, Instances] | Iterable[tuple[int, Instances]],
    iou_types: Sequence[str] = ("segm",),
    *,
    score_threshold: float = 0.5,
    errors: bool = True,
) -> EvalResult:
    """COCO metrics of model predictions against a ground-truth dataset.

    Args:
        gt: the ground truth.
        predictions: image id -> that image's predicted ``Instances`` (a dict, or (id, Instances)
            pairs such as ``Predictor.iter_dataset`` yields, each turned into RLE records as it
            comes so that full-size masks need not all be in memory); masks must have the image's
            size and ``class_names`` must be names of ``gt`` categories (empty means ``gt``'s order).
            Images left out count as images on which nothing was predicted.
        iou_types: any of ``"segm"`` (mask IoU) and ``"bbox"``.
        score_threshold: the score from which a prediction counts in the error breakdown
            (the COCO numbers always use every prediction).
        errors: also compute the error breakdown and confusion matrix.

    The predictions go through the same COCO results records that ``instaseg predict`` writes
    (``Instances.to_coco``), so evaluating in memory and evaluating ``results.json`` agree exactly.
    """
    results: list[dict] = []
    for image_id, instances in predictions.items() if isinstance(predictions, Mapping) else predictions:
        image = gt.image_by_id.get(image_id)
        if image is None:
            raise InstasegError(
                "predictions for an image the ground truth does not have", record=f"image id {image_id!r}"
            )
        if len(instances) and instances.image_size != (image["height"], image["width"]):
            height, width = instances.image_size
            raise InstasegError(
                f"masks are {width}x{height} but the image is {image['width']}x{image['height']}",
                record=f"image id {image_id}",
            )
        names = instances.class_names or tuple(gt.class_names)
        results += instances.to_coco(image_id, _category_ids_for(gt, names, f"image id {image_id}"))
    return evaluate_results(gt, results, iou_types, score_threshold=score_threshold, errors=errors)


def evaluate_results(
    gt: Dataset,
    results: list[dict],
    iou_types: Sequence[str] = ("segm",),
    *,
    score_threshold: float = 0.5,
    errors: bool = True,
    source: str | Path | None = None,
    warnings: Sequence[str] = (),
) -> EvalResult:
    """COCO metrics of a COCO results list (``image_id``, ``category_id``, ``segmentation``, ``bbox``,
    ``score`` per detection) against a ground-truth dataset.

    Records are checked (unknown image ids, category ids that are not integers, masks of the
    wrong size, scores that are not finite non-negative numbers, duplicate ``id`` values) and the
    first bad one is reported with its position; ``source`` names the file in that message.
    Results of a category the ground truth does not have are left out, as pycocotools does, with
    one warning counting them; ``warnings`` (e.g. those of ``load_predictions``) come first in
    the result's. An empty list gives AP 0 for every class that has ground truth (pycocotools
    itself would crash on it).
    """
    iou_types = tuple(dict.fromkeys(iou_types))
    if not iou_types or any(t not in IOU_TYPES for t in iou_types):
        raise InstasegError(f"iou_types must be among {', '.join(IOU_TYPES)}, got {', '.join(iou_types) or 'none'}")
    if not math.isfinite(score_threshold) or score_threshold < 0:
        raise InstasegError(f"score threshold must be a finite number >= 0, got {score_threshold}")
    with _gc_paused():
        gt_anns = _engine_ground_truth(gt)
        dt_anns, ignored = engine_detections(gt, results, need_masks="segm" in iou_types, source=source)
        stats, per_class, precision = {}, {}, {}
        for iou_type in iou_types:
            try:
                evaluator = _run_cocoeval(gt, gt_anns, dt_anns, iou_type)
            except (RuntimeError, ValueError, TypeError) as exc:  # e.g. a corrupt RLE string
                raise InstasegError(
                    f"the COCO engine rejected the input ({exc}); 'instaseg check' finds malformed annotations",
                    file=gt.source,
                ) from None
            stats[iou_type] = [float(v) for v in evaluator.stats[: len(STAT_NAMES)]]
            precision[iou_type] = evaluator.eval["precision"][:, :, :, 0, -1]
            per_class[iou_type] = _per_class_rows(gt, evaluator, gt_anns, dt_anns)
        breakdown = None
        if errors:
            # masks when they were evaluated: the engine has already left each record's RLE in "rle"
            error_iou_type = "segm" if "segm" in iou_types else "bbox"
            breakdown = error_breakdown(gt, gt_anns, dt_anns, iou_type=error_iou_type, score_threshold=score_threshold)

    notes = []
    if not dt_anns:
        notes.append("no predictions: every AP is 0 where there is ground truth")
    warnings = list(warnings)
    if ignored:
        warnings.append(_left_out_warning(ignored, len(results)))
    return EvalResult(
        class_names=gt.class_names,
        stats=stats,
        per_class=per_class,
        precision=precision,
        iou_thresholds=np.asarray(evaluator.params.iouThrs),
        recall_thresholds=np.asarray(evaluator.params.recThrs),
        errors=breakdown,
        num_images=len(gt.images),
        num_predictions=len(dt_anns),
        notes=notes,
        warnings=warnings,
    )


def _left_out_warning(category_ids: list[int], total: int) -> str:
    ids = sorted(set(category_ids))
    shown = ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")
    return (
        f"left out {len(category_ids)} of {total} results: their category id ({shown}) is not a "
        "ground-truth category (pycocotools ignores them too)"
    )


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Suspend Python's cycle collector while the record dicts (one per annotation and per result)
    are built and evaluated.

    Each burst of allocations would otherwise trigger full collections that walk every object
    alive (the caller's dataset and results included), a cost that grows with the size of the
    evaluation. The records form no cycles, so nothing waits to be collected.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _category_ids_for(gt: Dataset, names: Sequence[str], record: str) -> list[int]:
    by_name = {cat["name"]: cat["id"] for cat in gt.categories}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise InstasegError(f"class {missing[0]!r} is not a ground-truth class ({', '.join(by_name)})", record=record)
    return [by_name[name] for name in names]


def _engine_ground_truth(gt: Dataset) -> list[dict]:
    """Fresh annotation dicts for the engine (it adds keys; the user's dataset stays untouched).

    Ids are renumbered 1..N in file order: COCOeval uses annotation ids as match markers with 0
    meaning "unmatched", so an id 0 (common in converted datasets) would silently turn a hit into
    a miss. The order, which decides ties, is kept, so results equal pycocotools' for valid ids.
    Missing ``area`` and ``bbox`` are computed from the mask.
    """
    anns = []
    for position, ann in enumerate(gt.annotations):
        image = gt.image_by_id.get(ann["image_id"])
        if image is None or ann["category_id"] not in gt.category_index:
            what = "image" if image is None else "category"
            raise InstasegError(
                f"refers to unknown {what} id {ann['image_id' if image is None else 'category_id']}",
                file=gt.source,
                record=f"annotation id {ann['id']}",
            )
        segmentation = ann.get("segmentation") or []
        if not isinstance(segmentation, (list, dict)) or (
            isinstance(segmentation, dict) and list(segmentation.get("size") or []) != [image["height"], image["width"]]
        ):
            raise InstasegError(
                f"segmentation must be polygons or an RLE of the image's size [{image['height']}, {image['width']}]",
                file=gt.source,
                record=f"annotation id {ann['id']}",
            )
        record = {
            "id": position + 1,
            "image_id": ann["image_id"],
            "category_id": ann["category_id"],
            "segmentation": segmentation,
            "iscrowd": int(bool(ann.get("iscrowd", 0))),
            "area": ann.get("area"),
            "bbox": ann.get("bbox"),
        }
        if record["area"] is None or record["bbox"] is None:
            try:
                rle = mask_ops.to_rle(segmentation, image["height"], image["width"])
            except (TypeError, ValueError, KeyError) as exc:
                raise InstasegError(
                    f"malformed segmentation ({exc})", file=gt.source, record=f"annotation id {ann['id']}"
                ) from None
            record["area"] = float(mask_ops.area(rle)) if record["area"] is None else record["area"]
            record["bbox"] = mask_ops.bbox(rle) if record["bbox"] is None else record["bbox"]
        anns.append(record)
    return anns


def _run_cocoeval(gt: Dataset, gt_anns: list[dict], dt_anns: list[dict], iou_type: str) -> COCOeval_faster:
    coco_gt = _engine_coco(gt, gt_anns)
    coco_dt = _engine_coco(gt, dt_anns)
    # extra_calc (match lists, mIoU) stays off: nothing here reads it. The default one-pass
    # evaluate+accumulate is faster than separate_eval and gives the same numbers. The mask
    # IoU holds the GIL, so the engine's IoU thread pool only adds overhead: one worker.
    evaluator = COCOeval_faster(
        coco_gt, coco_dt, iou_type, print_function=_quiet, extra_calc=False, rle_iou_max_workers=1
    )
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator


def _engine_coco(gt: Dataset, annotations: list[dict]) -> _EngineCOCO:
    coco = _EngineCOCO(print_function=_quiet)
    coco.dataset = {"images": gt.images, "categories": gt.categories, "annotations": annotations}
    coco.createIndex()
    return coco


def _quiet(*_: Any, **__: Any) -> None:
    """The engine reports progress through this; the CLI prints its own summary instead."""


def _per_class_rows(gt: Dataset, evaluator: COCOeval_faster, gt_anns: list[dict], dt_anns: list[dict]) -> list[dict]:
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # T x R x K, area all, 100 detections
    recall = evaluator.eval["recall"][:, :, 0, -1]  # T x K
    iou_thresholds = np.asarray(evaluator.params.iouThrs)
    at50, at75 = int(np.argmin(abs(iou_thresholds - 0.5))), int(np.argmin(abs(iou_thresholds - 0.75)))
    column = {cat_id: k for k, cat_id in enumerate(evaluator.params.catIds)}
    gt_counts = np.bincount(
        [gt.category_index[a["category_id"]] for a in gt_anns if not a["iscrowd"]], minlength=len(gt.categories)
    )
    dt_counts = np.bincount([gt.category_index[d["category_id"]] for d in dt_anns], minlength=len(gt.categories))

    def mean(values: np.ndarray) -> float | None:
        values = values[values > -1]
        return float(values.mean()) if values.size else None

    rows = []
    for index, category in enumerate(gt.categories):
        k = column[category["id"]]
        rows.append({
            "class": category["name"],
            "AP": mean(precision[:, :, k]),
            "AP50": mean(precision[at50, :, k]),
            "AP75": mean(precision[at75, :, k]),
            "AR100": mean(recall[:, k]),
            "gt": int(gt_counts[index]),
            "predictions": int(dt_counts[index]),
        })  # fmt: skip
    return rows
