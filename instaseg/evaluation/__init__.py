"""The COCO metric: mask (and box) mAP identical to pycocotools, per-class tables and an error breakdown.

The numbers come from faster-coco-eval's C++ port of COCOeval, fed with COCO objects built in
memory from a ``Dataset`` and a results list (no temporary files, no second RLE encoding). Its
output equals pycocotools' ``COCOeval`` (the tests check all twelve stats to 1e-9, crowd regions
included) at a fraction of the time. Beyond the twelve numbers, an error breakdown at a score
threshold says why AP is lost, and a class-confusion matrix shows which classes are mistaken for which.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from faster_coco_eval import COCO as _EngineCOCO, COCOeval_faster
from faster_coco_eval.core import mask as engine_mask
from tqdm import tqdm

from instaseg.core import io, masks as mask_ops
from instaseg.data import Dataset
from instaseg.core.errors import InstasegError
from instaseg.core.structures import Instances

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
ERROR_KINDS = ("missed", "background", "duplicate", "wrong_class", "localization", "class_and_location")
# IoU below which a prediction does not touch an instance at all, and above which it counts as found
TOUCH_IOU, MATCH_IOU = 0.1, 0.5

logger = logging.getLogger("instaseg")


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
        return {
            "score_threshold": self.score_threshold,
            "iou_type": self.iou_type,
            "totals": self.totals,
            "images": self.images,
            "confusion": self.confusion.tolist(),
        }


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
            "stats": {t: dict(zip(STAT_NAMES, values)) for t, values in self.stats.items()},
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
            for (kind, iou, area, dets), value in zip(_STAT_LINES, values):
                title = "Average Precision  (AP)" if kind == "AP" else "Average Recall     (AR)"
                lines.append(f" {title} @[ IoU={iou:<9} | area={area:>6s} | maxDets={dets:>3d} ] = {value:0.3f}")
        return "\n".join(lines)


# -- public API -------------------------------------------------------------------------------------
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
        dt_anns, ignored = _engine_detections(gt, results, need_masks="segm" in iou_types, source=source)
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
            breakdown = _error_breakdown(gt, gt_anns, dt_anns, error_iou_type, score_threshold)

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


def load_predictions(gt: Dataset, path: str | Path, warnings: list[str] | None = None) -> list[dict]:
    """Read predictions as a COCO results list in ``gt``'s image and category ids.

    ``path`` is either a COCO results JSON (a list of detections, used as is) or what
    ``instaseg predict`` writes: its folder or its ``predictions.json``. Those carry their own
    image and category ids, so images are matched to ``gt`` by file name (``match_images``) and
    categories by name. A predictions folder also lists the images it predicted, so one that
    covers no ground-truth image is refused and one that covers only some is warned about:
    the warning goes to ``warnings``, or to the ``instaseg`` logger without that list.
    """
    path = Path(path)
    if path.is_dir():
        folder = path
        path = path / "predictions.json"
        if not path.exists():
            raise InstasegError("folder has no predictions.json (is it an 'instaseg predict' output?)", file=folder)
    data = io.read_json(path)
    if isinstance(data, list):
        return data
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise InstasegError("expected a COCO results list or an 'instaseg predict' predictions.json", file=path)
    predicted = Dataset(data, source=path)
    image_ids = match_images(gt, predicted)
    covered = len(set(image_ids.values()))
    if covered == 0:
        raise InstasegError("lists no image; predictions for the ground-truth images are needed", file=path)
    if covered < len(gt.images):
        warning = (
            f"the predictions cover {covered} of the {len(gt.images)} ground-truth images; the other "
            f"{len(gt.images) - covered} count as images on which nothing was found"
        )
        if warnings is None:
            logger.warning(warning)
        else:
            warnings.append(warning)
    gt_category = {cat["name"]: cat["id"] for cat in gt.categories}
    category_ids: dict[int, int] = {}
    for cat in predicted.categories:
        if cat["name"] not in gt_category:
            raise InstasegError(
                f"class {cat['name']!r} is not a ground-truth class ({', '.join(gt_category)})",
                file=path,
                record=f"category id {cat['id']}",
            )
        category_ids[cat["id"]] = gt_category[cat["name"]]
    results = []
    for position, ann in enumerate(predicted.annotations):
        if ann["image_id"] not in image_ids or ann["category_id"] not in category_ids:
            raise InstasegError(
                "refers to an image or category id the file does not list", file=path, record=f"annotations[{position}]"
            )
        results.append({**ann, "image_id": image_ids[ann["image_id"]], "category_id": category_ids[ann["category_id"]]})
    return results


def match_images(gt: Dataset, predicted: Dataset) -> dict[int, int]:
    """``predicted``'s image ids -> the ids of the same images in ``gt``, matched by file name.

    Names are compared as relative paths, since each is relative to its own root: ``instaseg
    predict`` names images from the deepest folder holding them all, a dataset from its image
    folder. A name matches the image of the same path or else, when one of the two has more
    leading folders, the image whose path ends the same way (``000001.png`` and ``val/000001.png``).
    A bare basename therefore matches only when it is unique. A name with several candidates, two
    names for one image and a name the ground truth does not have are refused.
    """
    by_path, by_ending = _image_paths(gt)
    image_ids: dict[int, int] = {}
    matched_by: dict[int, str] = {}
    for image in predicted.images:
        name, record = image["file_name"], f"image id {image['id']}"
        parts = _path_parts(name)
        if parts in by_path:
            candidates = [by_path[parts]]
        else:
            shorter = [by_path[parts[k:]] for k in range(1, len(parts)) if parts[k:] in by_path]
            candidates = by_ending.get(parts, []) + shorter
        if not candidates:
            raise InstasegError(f"image {name!r} is not in the ground truth", file=predicted.source, record=record)
        if len(candidates) > 1:
            listed = ", ".join(repr(c["file_name"]) for c in candidates[:3]) + (", ..." if len(candidates) > 3 else "")
            raise InstasegError(
                f"image {name!r} could be any of the ground-truth images {listed}; "
                "predict on the ground truth's image folder, so that the names keep their sub-folders",
                file=predicted.source,
                record=record,
            )
        target = candidates[0]
        if target["id"] in matched_by:
            first = matched_by[target["id"]]
            raise InstasegError(
                f"images {first!r} and {name!r} both match ground-truth image {target['file_name']!r}",
                file=predicted.source,
                record=record,
            )
        matched_by[target["id"]] = name
        image_ids[image["id"]] = target["id"]
    return image_ids


def _image_paths(gt: Dataset) -> tuple[dict[tuple[str, ...], dict], dict[tuple[str, ...], list[dict]]]:
    """GT images by path parts, and by each ending of their paths that leaves out leading folders."""
    by_path: dict[tuple[str, ...], dict] = {}
    by_ending: dict[tuple[str, ...], list[dict]] = {}
    for image in gt.images:
        parts = _path_parts(image["file_name"])
        if parts in by_path:
            raise InstasegError(
                f"two images named {image['file_name']!r}; predictions are matched by file name",
                file=gt.source,
                record=f"image id {image['id']}",
            )
        by_path[parts] = image
        for start in range(1, len(parts)):
            by_ending.setdefault(parts[start:], []).append(image)
    return by_path, by_ending


def _path_parts(name: str) -> tuple[str, ...]:
    """A relative file name's folders and basename, for names written with either separator."""
    return tuple(part for part in str(name).replace("\\", "/").split("/") if part not in ("", "."))


# -- building the engine's COCO objects --------------------------------------------------------------
@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Suspend Python's cycle collector while ~10^5 record dicts are built and evaluated.

    Each burst of allocations would otherwise trigger full collections that walk every object
    alive (the caller's dataset and results included); on a 5,000-image evaluation that cost
    more than the evaluation itself. The records form no cycles, so nothing waits to be collected.
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


def _bad(record: str, message: str, source: str | Path | None) -> InstasegError:
    return InstasegError(message, file=source, record=record)


def _engine_detections(
    gt: Dataset, results: list[dict], need_masks: bool, source: str | Path | None
) -> tuple[list[dict], list[int]]:
    """Check a COCO results list and turn it into the engine's detection records.

    Follows pycocotools' ``loadRes``: when the first result has a ``bbox``, every detection's
    ``area`` is its box area (which decides the small/medium/large bin of unmatched detections,
    even for masks); otherwise box and area come from the mask. Like COCOeval, which only looks
    at the ground truth's categories, results of another category id are left out; their
    category ids come back as the second item.
    """
    if not isinstance(results, list):
        raise InstasegError("predictions must be a list of COCO results", file=source)
    use_boxes = bool(results) and isinstance(results[0], dict) and results[0].get("bbox") not in (None, [])
    images, categories = gt.image_by_id, gt.category_index
    ids = [result.get("id") for result in results if isinstance(result, dict) and "id" in result]
    if len(set(ids)) < len(ids):
        _raise_duplicate_id(results, source)
    sizes = {image_id: [image["height"], image["width"]] for image_id, image in images.items()}
    detections, derive, ignored = [], [], []
    for position, result in enumerate(results):
        # the common, valid record is checked inline; anything odd goes to _explain for the message
        try:
            image_id, category_id, score = result["image_id"], result["category_id"], result["score"]
            segmentation = result.get("segmentation")
            valid = (
                type(image_id) is int
                and image_id in sizes
                and type(category_id) is int
                and category_id in categories
                and type(score) in (float, int)
                and 0 <= score < math.inf
                and (segmentation is not None or not need_masks)
            )
            if use_boxes:
                box = result["bbox"]
                valid = valid and type(box) is list and len(box) == 4 and box[2] >= 0 and box[3] >= 0
                valid = valid and math.isfinite(box[0] + box[1] + box[2] + box[3])
        except (KeyError, TypeError, AttributeError):
            valid = False
        if not valid:
            if _other_category(result, sizes, categories):
                ignored.append(result["category_id"])
                continue
            _explain(result, position, images, need_masks, use_boxes, source)
        if segmentation is not None and not (
            type(segmentation) is dict
            and type(segmentation.get("counts")) is str
            and segmentation.get("size") == sizes[image_id]
        ):
            record = f"result {position} (image id {image_id})"
            segmentation = _checked_segmentation(segmentation, images[image_id], record, source)
        if use_boxes:
            detection = {
                "id": position + 1, "image_id": image_id, "category_id": category_id, "score": score,
                "iscrowd": 0, "segmentation": segmentation, "bbox": box, "area": box[2] * box[3],
            }  # fmt: skip
        else:
            detection = {
                "id": position + 1, "image_id": image_id, "category_id": category_id, "score": score,
                "iscrowd": 0, "segmentation": segmentation,
            }  # fmt: skip
            derive.append(detection)
        detections.append(detection)
    masked = [d for d in detections if d["segmentation"] is not None]
    malformed = mask_ops.invalid_rles([d["segmentation"] for d in masked], [sizes[d["image_id"]] for d in masked])
    if malformed:
        k, problem = next(iter(malformed.items()))
        raise _bad(f"result {masked[k]['id'] - 1} (image id {masked[k]['image_id']})", problem, source)
    if derive:  # box and area from the masks, in one call
        rles = [d["segmentation"] for d in derive]
        for detection, area, box in zip(derive, engine_mask.area(rles), engine_mask.toBbox(rles)):
            detection["area"] = float(area)
            detection["bbox"] = [float(v) for v in box]
    return detections, ignored


def _other_category(result: Any, sizes: dict, categories: dict) -> bool:
    """Whether a result is for a ground-truth image but of a category the ground truth does not have."""
    return (
        isinstance(result, dict)
        and type(result.get("image_id")) is int
        and result["image_id"] in sizes
        and type(result.get("category_id")) is int
        and result["category_id"] not in categories
    )


def _raise_duplicate_id(results: list[dict], source: str | Path | None) -> None:
    seen: set = set()
    for position, result in enumerate(results):
        if isinstance(result, dict) and "id" in result:
            if result["id"] in seen:
                raise _bad(f"result {position}", f"duplicate result id {result['id']!r}", source)
            seen.add(result["id"])


def _explain(
    result: Any,
    position: int,
    images: dict,
    need_masks: bool,
    use_boxes: bool,
    source: str | Path | None,
) -> None:
    """Raise the one-line error saying what is wrong with a result record that failed the fast check."""
    record = f"result {position}"
    if not isinstance(result, dict):
        raise _bad(record, "is not an object", source)
    image_id = result.get("image_id")
    if type(image_id) is not int or image_id not in images:
        raise _bad(record, f"unknown image id {image_id!r}", source)
    record = f"result {position} (image id {image_id})"
    category_id = result.get("category_id")
    if type(category_id) is not int:
        raise _bad(record, f"category id must be an integer, got {category_id!r}", source)
    score = result.get("score")
    if not _finite(score) or score < 0:
        raise _bad(record, f"score must be a finite number >= 0, got {score!r}", source)
    if need_masks and result.get("segmentation") is None:
        raise _bad(record, "has no 'segmentation' (mask evaluation needs one; use --iou-type bbox for boxes)", source)
    if not use_boxes and result.get("segmentation") is None:
        raise _bad(record, "has neither 'bbox' nor 'segmentation'", source)
    raise _bad(
        record, f"bbox must be [x, y, width, height] with width, height >= 0, got {result.get('bbox')!r}", source
    )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _checked_segmentation(segmentation: Any, image: dict, record: str, source: str | Path | None) -> Any:
    """The segmentation, verified to fit the image; polygons and uncompressed RLE become compressed RLE."""
    height, width = image["height"], image["width"]
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        counts = segmentation.get("counts")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and isinstance(counts, (str, bytes, list))):
            raise _bad(record, "segmentation must be an RLE {'size': [h, w], 'counts': ...} or polygons", source)
        if list(size) != [height, width]:
            raise _bad(record, f"mask is {size[1]}x{size[0]} but image id {image['id']} is {width}x{height}", source)
        problem = mask_ops.invalid_rles([segmentation], [(height, width)]).get(0)
        if problem is not None:
            raise _bad(record, problem, source)
        if isinstance(counts, str | bytes):
            return segmentation
    elif not (
        isinstance(segmentation, list) and all(isinstance(p, list) and all(_finite(v) for v in p) for p in segmentation)
    ):
        raise _bad(record, "segmentation must be an RLE {'size': [h, w], 'counts': ...} or polygons", source)
    try:
        return mask_ops.to_rle(segmentation, height, width)
    except (TypeError, ValueError) as exc:
        raise _bad(record, f"malformed segmentation ({exc})", source) from None


def _run_cocoeval(gt: Dataset, gt_anns: list[dict], dt_anns: list[dict], iou_type: str) -> COCOeval_faster:
    coco_gt = _engine_coco(gt, gt_anns)
    coco_dt = _engine_coco(gt, dt_anns)
    # extra_calc (match lists, mIoU) stays off: nothing here reads it. The default one-pass
    # evaluate+accumulate is ~7% faster than separate_eval and gives the same numbers. The mask
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


# -- error breakdown ---------------------------------------------------------------------------------
def _error_breakdown(
    gt: Dataset, gt_anns: list[dict], dt_anns: list[dict], iou_type: str, score_threshold: float
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
    for image in tqdm(gt.images, desc="error breakdown", unit="image", disable=None, leave=False):
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
    order = np.argsort(-ious[pairs[:, 0], regular[pairs[:, 1]]], kind="stable") if len(pairs) else []
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


# -- reports -------------------------------------------------------------------------------------------
def write_report(result: EvalResult, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``metrics.json``, precision-recall curves, the confusion matrix and the error tables to ``out``.

    Files: ``metrics.json`` (``EvalResult.to_dict``), ``pr_<iou type>_iou50.png``, ``..._iou75.png``
    and ``..._iou50-95.png`` (one curve per class), and, with an error breakdown,
    ``confusion_matrix.png``, ``errors.json`` and ``errors.csv`` (per image, worst first). The
    folder appears complete or not at all.
    """
    with io.atomic_path(out, overwrite) as folder:
        folder.mkdir()
        io.write_json(folder / "metrics.json", result.to_dict(), indent=True)
        for iou_type, precision in result.precision.items():
            for label, curves in _pr_curve_sets(precision, result.iou_thresholds):
                io.write_bytes(
                    folder / f"pr_{iou_type}_iou{label}.png",
                    _plot_pr_curves(
                        curves, result.recall_thresholds, result.class_names, f"{iou_type}, IoU {_IOU_TITLES[label]}"
                    ),
                )
        if result.errors is not None:
            io.write_bytes(folder / "confusion_matrix.png", _plot_confusion(result.errors, result.class_names))
            io.write_json(folder / "errors.json", result.errors.to_dict(), indent=True)
            io.write_text(folder / "errors.csv", _errors_csv(result.errors))
    return Path(out)


_IOU_TITLES = {"50": "0.50", "75": "0.75", "50-95": "0.50:0.95 (mean)"}


def _pr_curve_sets(precision: np.ndarray, iou_thresholds: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(file label, R x K precision) at IoU 0.5, 0.75 and the mean over 0.50:0.95."""
    at = {label: int(np.argmin(abs(iou_thresholds - value))) for label, value in (("50", 0.5), ("75", 0.75))}
    # a class is -1 at every threshold (no ground truth) or at none, so the plain mean keeps -1 intact
    return [("50", precision[at["50"]]), ("75", precision[at["75"]]), ("50-95", precision.mean(0))]


def _figure_png(figure: Any) -> bytes:
    import io as bytes_io

    import matplotlib.pyplot as plt

    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _plot_pr_curves(curves: np.ndarray, recall: np.ndarray, class_names: list[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    drawn = 0
    for k, name in enumerate(class_names):
        if (curves[:, k] > -1).all():
            axes.plot(recall, curves[:, k], label=f"{name} (AP {curves[:, k].mean():.3f})", linewidth=1.2)
            drawn += 1
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"Precision-recall, {title}")
    axes.grid(alpha=0.3)
    if drawn == 0:
        axes.text(0.5, 0.5, "no class has ground truth", ha="center", va="center")
    elif drawn <= 30:  # beyond that a legend hides the plot; metrics.json has every number
        axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _figure_png(figure)


def _plot_confusion(errors: ErrorBreakdown, class_names: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*class_names, "background"]
    counts = errors.confusion
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)  # colour by row share, so rare classes show
    side = min(3 + 0.45 * len(labels), 30)
    figure, axes = plt.subplots(figsize=(side + 1.5, side))
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.set(xlabel="predicted class", ylabel="ground-truth class")
    axes.set_title(f"Confusion ({errors.iou_type} IoU >= {MATCH_IOU}, score >= {errors.score_threshold:g})")
    if len(labels) <= 25:
        for (row, column), value in np.ndenumerate(counts):
            if value:
                axes.text(column, row, str(value), ha="center", va="center", fontsize=7,
                          color="white" if share[row, column] > 0.6 else "black")  # fmt: skip
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the row")
    return _figure_png(figure)


def _errors_csv(errors: ErrorBreakdown) -> str:
    import csv
    import io as text_io

    columns = ["image_id", "file_name", "gt", "predictions", "true_positives", *ERROR_KINDS, "errors"]
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(errors.images)
    return buffer.getvalue()
