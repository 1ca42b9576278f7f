"""Reading and checking predictions before they are scored.

``load_predictions`` reads a COCO results JSON or an ``instaseg predict`` output and maps it to the
ground truth's image ids (``match_images``, by file name) and category ids (by name);
``engine_detections`` checks every record of a results list (image and category ids, scores,
boxes, RLE and polygon masks) and turns it into the engine's detection record, raising a one-line
error that names the first bad record and its position.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypeGuard

from faster_coco_eval.core import mask as engine_mask

from instaseg.core import events, io
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.data import Dataset


def load_predictions(gt: Dataset, path: str | Path, warnings: list[str] | None = None) -> list[dict]:
    """Read predictions as a COCO results list in ``gt``'s image and category ids.

    ``path`` is either a COCO results JSON (a list of detections, used as is) or what
    ``instaseg predict`` writes: its folder or its ``predictions.json``. Those carry their own
    image and category ids, so images are matched to ``gt`` by file name (``match_images``) and
    categories by name. A predictions folder also lists the images it predicted, so one that
    covers no ground-truth image is refused and one that covers only some is warned about:
    the warning goes to ``warnings``, or out as an ``events.warn`` without that list.
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
            events.warn(warning)
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


def _bad(record: str, message: str, source: str | Path | None) -> InstasegError:
    return InstasegError(message, file=source, record=record)


def engine_detections(
    gt: Dataset, results: list[dict], *, need_masks: bool, source: str | Path | None
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
        for detection, area, box in zip(derive, engine_mask.area(rles), engine_mask.toBbox(rles), strict=True):
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


def _finite(value: Any) -> TypeGuard[int | float]:
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
