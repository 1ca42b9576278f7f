"""Inject known label errors into a dataset, to measure how well a review finds them.

Each error type mimics a real annotation slip, and is named after the ``SuggestionType`` a review should find:

- ``missing_label``: an annotation is dropped (the object is left unlabelled);
- ``extra_label``: a spurious annotation is added in an empty part of an image, shaped like
  another instance of the dataset (moved there), so its shape is plausible but nothing is there;
- ``wrong_class``: an annotation gets another category (only when there are several);
- ``bad_mask``: a mask is eroded, dilated, shifted or redrawn as a coarse polygon, strongly
  enough that its IoU with the original falls below ``BAD_MASK_MAX_IOU``;
- ``duplicate``: an annotation is copied with a shift of one to three pixels, as a double click
  would (an exact copy for objects too small to shift and stay at IoU >= ``DUPLICATE_MIN_IOU``).

Rates are fractions of the dataset's (non-crowd) annotations. The types are drawn from disjoint
sets of annotations, so every injected error has exactly one type and can be scored on its own.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import cv2
import numpy as np

from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.data.dataset import Dataset
from instaseg.review.score import SuggestionType

# A distortion milder than this could pass for annotator style rather than an error.
BAD_MASK_MAX_IOU = 0.75
# Jittered duplicates stay this close to the original, so they still look like one object.
DUPLICATE_MIN_IOU = 0.6
_PLACEMENT_TRIES = 50


def inject_noise(
    dataset: Dataset,
    *,
    missing: float = 0.1,
    extra: float = 0.1,
    wrong_class: float = 0.05,
    bad_mask: float = 0.1,
    duplicate: float = 0.03,
    seed: int = 0,
) -> tuple[Dataset, list[dict]]:
    """Return a noisy copy of ``dataset`` and the list of the errors injected into it.

    Args:
        dataset: the clean dataset; it is not modified.
        missing, extra, wrong_class, bad_mask, duplicate: fraction of the annotations to affect
            with each error type (``extra`` and ``duplicate`` add that many annotations).
        seed: the same seed gives the same errors.

    Returns:
        ``(noisy, injected)``: ``injected`` holds one dict per error with its ``type``,
        ``image_id``, ``file_name``, the ``annotation_id`` concerned (the dropped, changed or
        added annotation), and type-specific details: the dropped annotation itself for
        ``missing_label``, ``old_category_id``/``new_category_id`` for ``wrong_class``, the
        ``distortion`` and its ``iou`` for ``bad_mask``, ``source_annotation_id`` for
        ``duplicate`` and ``extra_label``.
    """
    rates = {
        SuggestionType.MISSING_LABEL: missing,
        SuggestionType.EXTRA_LABEL: extra,
        SuggestionType.WRONG_CLASS: wrong_class,
        SuggestionType.BAD_MASK: bad_mask,
        SuggestionType.DUPLICATE: duplicate,
    }
    # Drawn from the same annotations one after the other (extra labels are new ones).
    taken = (
        SuggestionType.MISSING_LABEL,
        SuggestionType.WRONG_CLASS,
        SuggestionType.BAD_MASK,
        SuggestionType.DUPLICATE,
    )
    for name, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise InstasegError(f"the {name} rate must lie in [0, 1], got {rate}")
    if sum(rates[t] for t in taken) > 1.0:
        raise InstasegError("the missing, wrong_class, bad_mask and duplicate rates add up to more than 1")

    rng = np.random.default_rng(seed)
    noisy = dataset.copy()
    coco = noisy.coco
    candidates = [k for k, ann in enumerate(coco["annotations"]) if not ann.get("iscrowd", 0)]
    if not candidates:
        raise InstasegError("has no annotations to inject errors into", file=dataset.source)
    order = list(rng.permutation(candidates))
    total = len(candidates)
    next_id = max((ann["id"] for ann in coco["annotations"]), default=0) + 1
    if len(coco["categories"]) < 2:
        rates[SuggestionType.WRONG_CLASS] = 0.0

    def take(rate: float) -> list[int]:
        count = int(round(rate * total))
        chosen, order[:] = order[:count], order[count:]
        return chosen

    chosen = {name: take(rates[name]) for name in taken}
    injected: list[dict] = []
    removed: set[int] = set()
    added: list[dict] = []

    for k in chosen[SuggestionType.MISSING_LABEL]:
        ann = coco["annotations"][k]
        removed.add(k)
        injected.append(_record(noisy, SuggestionType.MISSING_LABEL, ann, annotation=copy.deepcopy(ann)))

    category_ids = [cat["id"] for cat in coco["categories"]]
    for k in chosen[SuggestionType.WRONG_CLASS]:
        ann = coco["annotations"][k]
        new = int(rng.choice([c for c in category_ids if c != ann["category_id"]]))
        injected.append(
            _record(noisy, SuggestionType.WRONG_CLASS, ann, old_category_id=ann["category_id"], new_category_id=new)
        )
        ann["category_id"] = new

    for k in chosen[SuggestionType.BAD_MASK]:
        ann = coco["annotations"][k]
        image = noisy.image_by_id[ann["image_id"]]
        mask = _mask(ann, image)
        distorted, how, overlap = _distort(mask, rng)
        if distorted is None:  # too small to distort recognisably: leave it clean
            continue
        _set_mask(ann, distorted)
        injected.append(_record(noisy, SuggestionType.BAD_MASK, ann, distortion=how, iou=round(overlap, 4)))

    for k in chosen[SuggestionType.DUPLICATE]:
        source = coco["annotations"][k]
        image = noisy.image_by_id[source["image_id"]]
        copy_mask = _jitter(_mask(source, image), rng)
        if copy_mask is None:
            continue
        twin = {key: copy.deepcopy(value) for key, value in source.items() if key not in ("id", "segmentation")}
        twin["id"] = next_id
        next_id += 1
        _set_mask(twin, copy_mask, like=source)
        added.append(twin)
        injected.append(_record(noisy, SuggestionType.DUPLICATE, twin, source_annotation_id=source["id"]))

    shapes = [ann for ann in coco["annotations"] if not ann.get("iscrowd", 0)]
    # Pixels labelled per image, dropped labels included: a spurious label must not land on a real object.
    occupied: dict[int, np.ndarray] = {}
    for _ in range(int(round(rates[SuggestionType.EXTRA_LABEL] * total))):
        spurious = _spurious(noisy, shapes, occupied, rng)
        if spurious is None:
            continue
        spurious_ann, source_id = spurious
        spurious_ann["id"] = next_id
        next_id += 1
        added.append(spurious_ann)
        injected.append(_record(noisy, SuggestionType.EXTRA_LABEL, spurious_ann, source_annotation_id=source_id))

    noisy.annotations = [ann for k, ann in enumerate(coco["annotations"]) if k not in removed] + added
    return noisy, injected


def _record(dataset: Dataset, kind: SuggestionType, ann: dict, **details: Any) -> dict:
    image = dataset.image_by_id[ann["image_id"]]
    return {
        "type": kind,
        "image_id": ann["image_id"],
        "file_name": image["file_name"],
        "annotation_id": ann["id"],
        **details,
    }


def _mask(ann: dict, image: dict) -> np.ndarray:
    return mask_ops.decode(ann.get("segmentation") or [], image["height"], image["width"])


def _set_mask(ann: dict, mask: np.ndarray, like: dict | None = None) -> None:
    """Store ``mask`` in the annotation, as polygons if the annotation (or ``like``) used polygons."""
    ann.update(mask_ops.annotation_fields(mask, polygons=isinstance((like or ann).get("segmentation"), list)))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _distort(mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray | None, str, float]:
    """Apply a random distortion, growing it until the IoU with ``mask`` drops below ``BAD_MASK_MAX_IOU``."""
    area = int(mask.sum())
    if area < 12:
        return None, "", 1.0
    kinds = ["erode", "dilate", "shift", "coarse_polygon"]
    first = int(rng.integers(len(kinds)))
    size = math.sqrt(area)
    for kind in kinds[first:] + kinds[:first]:
        for step in range(1, 40):
            distorted = _distortion(mask, kind, step, size, rng)
            if distorted is None or not distorted.any():
                break
            overlap = _iou(mask, distorted)
            if overlap <= BAD_MASK_MAX_IOU:
                return distorted, kind, overlap
    return None, "", 1.0


def _distortion(mask: np.ndarray, kind: str, step: int, size: float, rng: np.random.Generator) -> np.ndarray | None:
    m8 = np.ascontiguousarray(mask, dtype=np.uint8)
    if kind == "erode":
        return cv2.erode(m8, _disk(step)).astype(bool)
    if kind == "dilate":
        return cv2.dilate(m8, _disk(step)).astype(bool)
    if kind == "shift":
        angle = rng.uniform(0, 2 * math.pi)
        dx, dy = round(step * math.cos(angle)), round(step * math.sin(angle))
        shifted = cv2.warpAffine(m8, np.array([[1, 0, dx], [0, 1, dy]], np.float32), (mask.shape[1], mask.shape[0]))
        return shifted.astype(bool)
    # coarse polygon: fewer and fewer vertices, as a hurried annotator would click
    contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    out = np.zeros(mask.shape, np.uint8)
    for contour in contours:
        epsilon = 0.04 * step * size
        coarse = cv2.approxPolyDP(contour, epsilon, True)
        if len(coarse) < 3:
            return None
        cv2.fillPoly(out, [coarse], 1)
    return out.astype(bool)


def _jitter(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A copy moved by a pixel or a few, staying at IoU >= ``DUPLICATE_MIN_IOU`` with the original."""
    height, width = mask.shape
    for radius in (3, 2, 1):
        dx, dy = (int(v) for v in rng.integers(-radius, radius + 1, size=2))
        if dx == 0 and dy == 0:
            dx = 1
        moved = cv2.warpAffine(
            np.ascontiguousarray(mask, dtype=np.uint8), np.array([[1, 0, dx], [0, 1, dy]], np.float32), (width, height)
        ).astype(bool)
        if moved.any() and _iou(mask, moved) >= DUPLICATE_MIN_IOU:
            return moved
    return mask.copy() if mask.any() else None


def _spurious(dataset: Dataset, shapes: list[dict], occupied: dict[int, np.ndarray], rng: np.random.Generator):
    """A copy of a random instance's shape placed where its image has no labels; None if no room is found.

    ``occupied`` caches each image's labelled pixels and is updated with the new label.
    """
    for _ in range(_PLACEMENT_TRIES):
        image = dataset.images[int(rng.integers(len(dataset.images)))]
        source = shapes[int(rng.integers(len(shapes)))]
        source_image = dataset.image_by_id[source["image_id"]]
        shape = _mask(source, source_image)
        ys, xs = np.nonzero(shape)
        if len(xs) == 0:
            continue
        shape = shape[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        h, w = shape.shape
        height, width = image["height"], image["width"]
        if h >= height or w >= width:
            continue
        if image["id"] not in occupied:
            labelled = np.zeros((height, width), bool)
            for ann in dataset.annotations_by_image.get(image["id"], []):
                labelled |= _mask(ann, image)
            occupied[image["id"]] = labelled
        # Keep a margin, so the spurious label does not touch a real one.
        margin = _disk(max(2, int(0.2 * max(h, w))))
        forbidden = cv2.dilate(np.ascontiguousarray(occupied[image["id"]], dtype=np.uint8), margin).astype(bool)
        for _ in range(_PLACEMENT_TRIES):
            y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            placed = np.zeros((height, width), bool)
            placed[y : y + h, x : x + w] = shape
            if not (placed & forbidden).any():
                ann = {"image_id": image["id"], "category_id": source["category_id"], "iscrowd": 0}
                _set_mask(ann, placed, like=source)
                occupied[image["id"]] |= placed
                return ann, source["id"]
    return None
