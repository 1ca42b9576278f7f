"""Dataset validation (``instaseg check``) and repair (``instaseg check --fix``).

``check_dataset`` reports every problem it finds, each with its place: the file, the image id,
the annotation id. Errors make a dataset unfit for training or evaluation as it stands; warnings
are worth a look but harmless. ``fix_dataset`` writes a repaired copy and lists every change.
Each ``ProblemKind`` carries its severity, what ``--fix`` does about it and a description.

Speed matters because datasets can hold hundreds of thousands of polygons: the per-record loop
only does cheap type checks and gathers coordinates, and the geometry (bounds, extents, areas,
self-intersections) is then checked on all polygons at once with NumPy and shapely's vectorised
functions, and the box and area of RLE masks are read by pycocotools straight from the run
lengths. Only suspects are rasterised: near-empty polygons, polygons that are not simple (to tell
zero-width bridges from real problems), and polygons whose stored box or area disagrees with the
polygon itself.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pycocotools import mask as mask_utils

from instaseg.core import events, io
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.core.geometry import coco_polygons, even_odd_shape
from instaseg.data.dataset import Dataset


class Severity(StrEnum):
    """How much a problem matters: an error makes a dataset unfit for training or evaluation as it
    stands; a warning is worth a look but harmless."""

    ERROR = "error"
    WARNING = "warning"


class Repair(StrEnum):
    """What ``check --fix`` does about a kind of problem (``fix_dataset`` tells the details)."""

    DROP_IMAGE = "drop-image"  # with its annotations
    DROP_ANNOTATION = "drop-annotation"
    RENUMBER = "renumber"  # a fresh id; annotations stay with the first record of the id
    MERGE_CATEGORY = "merge-category"  # into the first category of the same name
    NAME_CATEGORY = "name-category"  # ``class_<id>``
    REPAIR_POLYGONS = "repair-polygons"  # drop, split or clip them, keeping the drawn pixels; bbox and area follow
    RECOMPUTE_BBOX = "recompute-bbox"
    RECOMPUTE_AREA = "recompute-area"
    SET_ISCROWD = "set-iscrowd"  # to 0 or 1


class ProblemKind(StrEnum):
    """A kind of dataset problem: its stable name (the value, as in ``check --json``) and what goes with it.

    Attributes:
        severity: error or warning, the same for every problem of the kind.
        repair: what ``check --fix`` does about it; None when it leaves it as it is.
        description: the kind in words, for a front end's legend.
        stops_show: ``instaseg show`` refuses to draw a dataset with it (an annotation without a mask
            or a class to draw, or an image path outside the dataset folder).
    """

    severity: Severity
    repair: Repair | None
    description: str
    stops_show: bool

    def __new__(cls, value: str, severity: Severity, repair: Repair | None, description: str, stops_show: bool = False):
        """A member from its definition line: the value, then the properties in the order above."""
        member = str.__new__(cls, value)
        member._value_ = value
        member.severity = severity
        member.repair = repair
        member.description = description
        member.stops_show = stops_show
        return member

    @property
    def fixable(self) -> bool:
        """Whether ``check --fix`` tries to repair it (it may still leave a record unchanged, saying why)."""
        return self.repair is not None

    # Whole dataset
    NO_CATEGORIES = "no-categories", Severity.ERROR, None, "the dataset has no categories"
    NO_IMAGES = "no-images", Severity.ERROR, None, "the dataset has no images"
    # Any record
    DUPLICATE_ID = "duplicate-id", Severity.ERROR, Repair.RENUMBER, "an id used by more than one record"
    # Categories
    EMPTY_NAME = "empty-name", Severity.ERROR, Repair.NAME_CATEGORY, "a category without a name"
    DUPLICATE_NAME = "duplicate-name", Severity.ERROR, Repair.MERGE_CATEGORY, "two categories of the same name"
    # Images
    BAD_IMAGE_SIZE = "bad-image-size", Severity.ERROR, Repair.DROP_IMAGE, "a declared image size that is not positive"
    DUPLICATE_FILE = "duplicate-file", Severity.WARNING, None, "an image file listed twice"
    NO_INSTANCES = "no-instances", Severity.WARNING, None, "an image without annotations"
    PATH_ESCAPES = "path-escapes", Severity.ERROR, Repair.DROP_IMAGE, "an image path outside the dataset folder", True
    MISSING_IMAGE = "missing-image", Severity.ERROR, Repair.DROP_IMAGE, "an image file that does not exist"
    UNREADABLE_IMAGE = "unreadable-image", Severity.ERROR, Repair.DROP_IMAGE, "an image file that cannot be read"
    IMAGE_TOO_LARGE = "image-too-large", Severity.ERROR, Repair.DROP_IMAGE, "an image too large to decode"
    TRUNCATED_IMAGE = "truncated-image", Severity.ERROR, Repair.DROP_IMAGE, "an image file cut short"
    SIZE_MISMATCH = "size-mismatch", Severity.ERROR, None, "an image file of another size than the JSON says"
    # Annotations
    UNKNOWN_IMAGE = (
        "unknown-image",
        Severity.ERROR,
        Repair.DROP_ANNOTATION,
        "an annotation of an image not in the dataset",
    )
    UNKNOWN_CATEGORY = (
        "unknown-category",
        Severity.ERROR,
        Repair.DROP_ANNOTATION,
        "an annotation of a category not in the dataset",
        True,
    )
    NO_SEGMENTATION = "no-segmentation", Severity.ERROR, Repair.DROP_ANNOTATION, "an annotation without a mask"
    BAD_SEGMENTATION = (
        "bad-segmentation",
        Severity.ERROR,
        Repair.DROP_ANNOTATION,
        "a segmentation that is neither polygons nor RLE",
        True,
    )
    BAD_POLYGON = "bad-polygon", Severity.ERROR, Repair.REPAIR_POLYGONS, "a polygon that is not a list of numbers", True
    ODD_COORDINATES = (
        "odd-coordinates",
        Severity.ERROR,
        Repair.REPAIR_POLYGONS,
        "a polygon with an odd number of coordinates",
        True,
    )
    TOO_FEW_POINTS = "too-few-points", Severity.ERROR, Repair.REPAIR_POLYGONS, "a polygon of fewer than 3 points"
    POINTS_OUTSIDE = (
        "points-outside",
        Severity.WARNING,
        Repair.REPAIR_POLYGONS,
        "a polygon reaching a little outside its image",
    )
    POINTS_FAR_OUTSIDE = (
        "points-far-outside",
        Severity.ERROR,
        Repair.REPAIR_POLYGONS,
        "a polygon reaching far outside its image",
        True,
    )
    SELF_INTERSECTION = "self-intersection", Severity.WARNING, Repair.REPAIR_POLYGONS, "a polygon that crosses itself"
    ZERO_AREA = "zero-area", Severity.ERROR, Repair.REPAIR_POLYGONS, "a mask or polygon that covers no pixel"
    BAD_RLE = "bad-rle", Severity.ERROR, Repair.DROP_ANNOTATION, "a malformed RLE mask", True
    RLE_SIZE_MISMATCH = (
        "rle-size-mismatch",
        Severity.ERROR,
        Repair.DROP_ANNOTATION,
        "an RLE mask of another size than its image",
        True,
    )
    MISSING_BBOX = "missing-bbox", Severity.WARNING, Repair.RECOMPUTE_BBOX, "an annotation without a bbox"
    BAD_BBOX = (
        "bad-bbox",
        Severity.ERROR,
        Repair.RECOMPUTE_BBOX,
        "a bbox that is not [x, y, width, height] with an extent",
    )
    BBOX_OUTSIDE = "bbox-outside", Severity.ERROR, Repair.RECOMPUTE_BBOX, "a bbox reaching outside its image"
    BBOX_MISMATCH = "bbox-mismatch", Severity.ERROR, Repair.RECOMPUTE_BBOX, "a bbox that does not fit its mask"
    MISSING_AREA = "missing-area", Severity.WARNING, Repair.RECOMPUTE_AREA, "an annotation without an area"
    BAD_AREA = "bad-area", Severity.ERROR, Repair.RECOMPUTE_AREA, "an area that is not a non-negative number"
    AREA_MISMATCH = "area-mismatch", Severity.WARNING, Repair.RECOMPUTE_AREA, "an area far from its mask's"
    BAD_ISCROWD = "bad-iscrowd", Severity.ERROR, Repair.SET_ISCROWD, "an iscrowd that is not 0 or 1"


# A box may differ from its mask's extent by this many pixels per edge before it is reported
# (tools round boxes to whole pixels and may put edges on pixel centres).
BOX_TOLERANCE = 2.0
# Stored areas are compared with the polygon's own area, which differs from the rasterised area
# by about half the perimeter, so only gross mismatches are reported.
AREA_RELATIVE_TOLERANCE = 0.3
AREA_ABSOLUTE_TOLERANCE = 8.0
# Coordinates more than this many image sizes away from the image are "far outside".
FAR_OUTSIDE = 4.0
# Polygons smaller than this many square pixels are rasterised to see whether they draw any pixel.
TINY_POLYGON_AREA = 2.0

# (first bytes, last bytes) of a complete JPEG and PNG file.
_END_MARKERS = ((b"\xff\xd8", b"\xff\xd9"), (b"\x89PNG", b"IEND\xaeB`\x82"))

# Polygon problems that leave an annotation's mask undefined until ``--fix`` repairs it.
_MALFORMED_POLYGON = {
    ProblemKind.BAD_POLYGON,
    ProblemKind.ODD_COORDINATES,
    ProblemKind.TOO_FEW_POINTS,
    ProblemKind.POINTS_FAR_OUTSIDE,
}


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset, with where it is.

    Attributes:
        kind: what is wrong, e.g. ``ProblemKind.UNKNOWN_CATEGORY`` (a string given here is read as one).
        message: what is wrong, in words.
        file: the file at fault (the image file for file problems, else the dataset file).
        section: ``"images"``, ``"annotations"`` or ``"categories"``; None for the whole dataset.
        index: position of the record in its list (tells records with the same id apart).
        image_id, annotation_id, category_id: the ids of the record at fault.
    """

    kind: ProblemKind
    message: str
    file: str | None = None
    section: str | None = None
    index: int | None = None
    image_id: int | None = None
    annotation_id: int | None = None
    category_id: int | None = None

    def __post_init__(self) -> None:
        """Accept the kind's name too (as ``check --json`` writes it)."""
        # mypy reads the member fields of ``__new__`` as required, but a lookup by value takes the value alone.
        object.__setattr__(self, "kind", ProblemKind(self.kind))  # type: ignore[call-arg]

    @property
    def severity(self) -> Severity:
        """Error or warning: the kind's."""
        return self.kind.severity

    @property
    def record(self) -> str:
        """The record at fault in words, e.g. ``"annotation id 12 (image id 3)"``."""
        if self.section == "annotations":
            return f"annotation id {self.annotation_id} (image id {self.image_id})"
        if self.section == "images":
            return f"image id {self.image_id}"
        if self.section == "categories":
            return f"category id {self.category_id}"
        return ""

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.record, self.message) if p]
        return f"{self.severity}: " + ": ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The problem as ``check --json`` lists it: severity, kind, message and the known places."""
        fields = {"severity": self.severity, **asdict(self)}
        return {k: v for k, v in fields.items() if v is not None}


def check_dataset(dataset: Dataset, check_files: bool = True) -> list[Problem]:
    """Every problem in a dataset, in the order categories, images, annotations.

    Args:
        dataset: the dataset to check.
        check_files: also open each image file's header to check that it exists, is an image,
            is complete and has the size the JSON declares (pixels are not decoded).
    """
    checker = _Checker(dataset)
    checker.check_categories()
    checker.check_images(check_files)
    checker.check_annotations()
    # Vectorised checks report late; list each record's problems together, in file order.
    order: dict[str | None, int] = {"categories": 0, "images": 1, "annotations": 2}
    return sorted(checker.problems, key=lambda p: (order.get(p.section, -1), p.index or 0))


def count_problems(problems: Iterable[Problem]) -> tuple[int, int]:
    """(errors, warnings) among ``problems``."""
    counts = Counter(p.severity for p in problems)
    return counts[Severity.ERROR], counts[Severity.WARNING]


class _Checker:
    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.source = str(dataset.source) if dataset.source is not None else None
        self.problems: list[Problem] = []
        self.image_size_by_id: dict[int, tuple[int, int]] = {}  # id -> (width, height), first of duplicates
        self.category_ids: set[int] = set()

    def _add(self, kind: ProblemKind, message: str, **where: Any) -> None:
        where.setdefault("file", self.source)
        self.problems.append(Problem(kind, message, **where))

    # -- categories ---------------------------------------------------------------------------
    def check_categories(self) -> None:
        names: dict[str, int] = {}
        for index, category in enumerate(self.dataset.categories):
            category_id, name = category["id"], category["name"]
            where = dict(section="categories", index=index, category_id=category_id)
            if category_id in self.category_ids:
                self._add(ProblemKind.DUPLICATE_ID, f"category id {category_id} is used more than once", **where)
            self.category_ids.add(category_id)
            if not name.strip():
                self._add(ProblemKind.EMPTY_NAME, "category name is empty", **where)
            elif name in names:
                self._add(
                    ProblemKind.DUPLICATE_NAME,
                    f"category name {name!r} is also used by category id {names[name]}",
                    **where,
                )
            else:
                names[name] = category_id
        if not self.dataset.categories:
            self._add(ProblemKind.NO_CATEGORIES, "the dataset has no categories")

    # -- images -------------------------------------------------------------------------------
    def check_images(self, check_files: bool) -> None:
        images = self.dataset.images
        if not images:
            self._add(ProblemKind.NO_IMAGES, "the dataset has no images")
        file_names: dict[str, int] = {}
        annotated = {ann["image_id"] for ann in self.dataset.annotations}
        # Only opening the files takes long enough to be worth a progress report.
        tracked = events.track(images, "checking images", unit="img") if check_files else images
        for index, image in enumerate(tracked):
            image_id, width, height = image["id"], image["width"], image["height"]
            where = dict(section="images", index=index, image_id=image_id)
            if image_id in self.image_size_by_id:
                self._add(ProblemKind.DUPLICATE_ID, f"image id {image_id} is used more than once", **where)
            else:
                self.image_size_by_id[image_id] = (width, height)
            if width <= 0 or height <= 0:
                self._add(ProblemKind.BAD_IMAGE_SIZE, f"declared size {width}x{height} is not positive", **where)
            name = image["file_name"]
            if name in file_names:
                self._add(
                    ProblemKind.DUPLICATE_FILE, f"file {name!r} is also listed as image id {file_names[name]}", **where
                )
            else:
                file_names[name] = image_id
            if image_id not in annotated:
                self._add(ProblemKind.NO_INSTANCES, "image has no annotations", **where)
            try:
                path = io.safe_join(self.dataset.image_root, name)
            except InstasegError as exc:
                self._add(ProblemKind.PATH_ESCAPES, str(exc), **where)
                continue
            if check_files:
                self._check_image_file(path, width, height, where)

    def _check_image_file(self, path: Path, width: int, height: int, where: dict) -> None:
        where = {**where, "file": str(path)}
        try:
            real_width, real_height = io.image_size(path)
        except InstasegError as exc:
            kind = ProblemKind.MISSING_IMAGE if not path.exists() else ProblemKind.UNREADABLE_IMAGE
            message = str(exc).removeprefix(f"{path}: ")
            self._add(kind, message, **where)
            return
        if real_width * real_height > io.MAX_IMAGE_PIXELS:
            self._add(ProblemKind.IMAGE_TOO_LARGE, f"image is {real_width}x{real_height}, too large to decode", **where)
            return
        if _is_truncated(path):
            self._add(ProblemKind.TRUNCATED_IMAGE, "file is truncated (its end marker is missing)", **where)
        if (real_width, real_height) != (width, height):
            hint = ""
            if (real_height, real_width) == (width, height):
                hint = " (width and height swapped: is the file EXIF-rotated?)"
            self._add(
                ProblemKind.SIZE_MISMATCH,
                f"image is {real_width}x{real_height} but the JSON says {width}x{height}{hint}",
                **where,
            )

    # -- annotations --------------------------------------------------------------------------
    def check_annotations(self) -> None:
        annotations = self.dataset.annotations
        count = len(annotations)
        polygons = _PolygonBatch()
        rle_candidates: list[int] = []  # annotations with an RLE of their image's size
        # Per annotation: [x1, y1, x2, y2] of the declared bbox and the declared area, NaN where
        # missing or malformed (already reported), filled by the loop and checked in bulk after it.
        boxes = np.full((count, 4), np.nan)
        declared_area = np.full(count, np.nan)
        box_records: list[int] = []
        box_values: list[list] = []
        area_records: list[int] = []
        area_values: list = []
        seen_ids: set[int] = set()
        for index, ann in enumerate(annotations):
            annotation_id, image_id = ann["id"], ann["image_id"]
            if annotation_id in seen_ids:
                self._add(
                    ProblemKind.DUPLICATE_ID,
                    f"annotation id {annotation_id} is used more than once",
                    **self._where(index),
                )
            seen_ids.add(annotation_id)
            size = self.image_size_by_id.get(image_id)
            if size is None:
                self._add(ProblemKind.UNKNOWN_IMAGE, f"image id {image_id} is not in the dataset", **self._where(index))
                continue
            if ann["category_id"] not in self.category_ids:
                self._add(
                    ProblemKind.UNKNOWN_CATEGORY,
                    f"category id {ann['category_id']} is not in the dataset",
                    **self._where(index),
                )
            width, height = size
            segmentation = ann.get("segmentation")
            if type(segmentation) is list and segmentation:
                self._gather_polygons(index, segmentation, width, height, polygons)
            elif type(segmentation) is dict:
                if self._rle_size_ok(index, segmentation, width, height):
                    rle_candidates.append(index)
            elif not segmentation:
                self._add(
                    ProblemKind.NO_SEGMENTATION,
                    "annotation has no mask (segmentation missing or empty)",
                    **self._where(index),
                )
            else:
                found = type(segmentation).__name__
                self._add(
                    ProblemKind.BAD_SEGMENTATION,
                    f"segmentation is a {found}, expected polygons or RLE",
                    **self._where(index),
                )
            box = ann.get("bbox")
            if type(box) is list and len(box) == 4:
                box_records.append(index)
                box_values.append(box)
            elif box is None:
                self._add(ProblemKind.MISSING_BBOX, "annotation has no bbox", **self._where(index))
            else:
                self._add(ProblemKind.BAD_BBOX, f"bbox {box!r} is not [x, y, width, height]", **self._where(index))
            area = ann.get("area")
            if area is None:
                self._add(
                    ProblemKind.MISSING_AREA, "annotation has no area (COCO evaluation needs it)", **self._where(index)
                )
            else:
                area_records.append(index)
                area_values.append(area)
            if ann.get("iscrowd", 0) not in (0, 1):
                self._add(
                    ProblemKind.BAD_ISCROWD, f"iscrowd is {ann['iscrowd']!r}, expected 0 or 1", **self._where(index)
                )

        self._check_boxes(box_records, box_values, boxes)
        self._check_areas(area_records, area_values, declared_area)
        extents, areas = self._check_polygons(polygons, count)
        rle_owners = self._check_rles(rle_candidates, extents, areas)
        exact = np.zeros(count, bool)
        exact[rle_owners] = True
        self._check_consistency(boxes, declared_area, extents, areas, exact)

    def _where(self, index: int | np.integer) -> dict:
        ann = self.dataset.annotations[index]
        return dict(section="annotations", index=int(index), image_id=ann["image_id"], annotation_id=ann["id"])

    def _gather_polygons(self, index: int, segmentation: list, width: int, height: int, batch: _PolygonBatch) -> None:
        if type(segmentation[0]) is not list:
            message = "segmentation is a flat list; polygons must be a list of [x1, y1, x2, y2, ...] lists"
            self._add(ProblemKind.BAD_POLYGON, message, **self._where(index))
            return
        for part, polygon in enumerate(segmentation):
            if type(polygon) is not list:
                message = f"polygon {part} is a {type(polygon).__name__}, expected a list of numbers"
                self._add(ProblemKind.BAD_POLYGON, message, **self._where(index))
            elif len(polygon) % 2:
                message = f"polygon {part} has an odd number of coordinates ({len(polygon)})"
                self._add(ProblemKind.ODD_COORDINATES, message, **self._where(index))
            elif len(polygon) < 6:
                message = f"polygon {part} has {len(polygon) // 2} point(s), at least 3 are needed"
                self._add(ProblemKind.TOO_FEW_POINTS, message, **self._where(index))
            else:
                batch.owners.append(index)
                batch.parts.append(part)
                batch.polygons.append(polygon)
                batch.widths.append(width)
                batch.heights.append(height)

    def _rle_size_ok(self, index: int, segmentation: dict, width: int, height: int) -> bool:
        """False, reported, for an RLE of another size than its image; a malformed size is left to ``_check_rles``."""
        size = segmentation.get("size")
        if type(size) is not list or len(size) != 2 or not all(type(v) is int for v in size):
            return True
        if size != [height, width]:
            message = f"RLE size is {size[0]}x{size[1]} (h x w) but the image is {height}x{width}"
            self._add(ProblemKind.RLE_SIZE_MISMATCH, message, **self._where(index))
            return False
        return True

    def _check_rles(self, candidates: list[int], extents: np.ndarray, areas: np.ndarray) -> list[int]:
        """Report malformed RLE masks; fill ``extents`` and ``areas`` for the others and return their indexes."""
        annotations = self.dataset.annotations
        segmentations = [annotations[i]["segmentation"] for i in candidates]
        image_sizes = [self.image_size_by_id[annotations[i]["image_id"]] for i in candidates]
        sizes = [(height, width) for width, height in image_sizes]
        problems = mask_ops.invalid_rles(segmentations, sizes)
        for position, problem in problems.items():
            self._add(ProblemKind.BAD_RLE, problem, **self._where(candidates[position]))
        usable = [k for k in range(len(candidates)) if k not in problems]
        if not usable:
            return []
        rles = [mask_ops.to_rle(segmentations[k], *sizes[k]) for k in usable]
        owners = np.asarray([candidates[k] for k in usable])
        x, y, w, h = mask_utils.toBbox(rles).reshape(-1, 4).T
        extents[owners] = np.stack([x, y, x + w, y + h], axis=1)
        # pycocotools' area() overflows on lists of more than 255 masks under NumPy 2: go in chunks.
        areas[owners] = np.concatenate([mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)])
        return owners.tolist()

    def _check_boxes(self, records: list[int], values: list[list], boxes: np.ndarray) -> None:
        """Check well-shaped bboxes in bulk; fill ``boxes`` with the usable ones as x1, y1, x2, y2."""
        if not records:
            return
        numbers = _numbers(values, 4)
        rows = np.asarray(records)
        for k in np.flatnonzero(~np.isfinite(numbers).all(axis=1)):
            self._add(ProblemKind.BAD_BBOX, f"bbox {values[k]!r} is not [x, y, width, height]", **self._where(rows[k]))
        x, y, w, h = numbers.T
        sizes = np.asarray(
            [self.image_size_by_id[self.dataset.annotations[r]["image_id"]] for r in records], np.float64
        )
        margin = BOX_TOLERANCE / 2
        with np.errstate(invalid="ignore"):
            empty = (w <= 0) | (h <= 0)
            outside = ~empty & (
                (x < -margin) | (y < -margin) | (x + w > sizes[:, 0] + margin) | (y + h > sizes[:, 1] + margin)
            )
        for k in np.flatnonzero(empty):
            self._add(ProblemKind.BAD_BBOX, f"bbox {values[k]} has no extent", **self._where(rows[k]))
        for k in np.flatnonzero(outside):
            width, height = sizes[k].astype(int)
            self._add(
                ProblemKind.BBOX_OUTSIDE,
                f"bbox {values[k]} reaches outside the {width}x{height} image",
                **self._where(rows[k]),
            )
        usable = ~empty & ~outside & np.isfinite(numbers).all(axis=1)
        boxes[rows[usable]] = np.stack([x, y, x + w, y + h], axis=1)[usable]

    def _check_areas(self, records: list[int], values: list, areas: np.ndarray) -> None:
        if not records:
            return
        numbers = _numbers(values)
        bad = ~np.isfinite(numbers)
        bad[~bad] = numbers[~bad] < 0
        for k in np.flatnonzero(bad):
            self._add(
                ProblemKind.BAD_AREA, f"area {values[k]!r} is not a non-negative number", **self._where(records[k])
            )
        areas[np.asarray(records)[~bad]] = numbers[~bad]

    def _check_polygons(self, batch: _PolygonBatch, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised geometry checks; returns each annotation's polygon extent (x1, y1, x2, y2)
        and area (NaN for annotations without a usable polygon)."""
        extents = np.full((count, 4), np.nan)
        areas = np.full(count, np.nan)
        if not batch.owners:
            return extents, areas
        coords, point_polygon, starts = batch.arrays()
        owners = np.asarray(batch.owners)
        finite = np.logical_and.reduceat(np.isfinite(coords).all(axis=1), starts)
        xs, ys = coords[:, 0], coords[:, 1]
        width = np.asarray(batch.widths, np.float64)[point_polygon]
        height = np.asarray(batch.heights, np.float64)[point_polygon]
        with np.errstate(invalid="ignore"):
            outside = np.logical_or.reduceat((xs < 0) | (ys < 0) | (xs > width) | (ys > height), starts) & finite
            # pycocotools walks every polygon edge pixel by pixel: an edge reaching millions of pixels
            # away exhausts memory, so such polygons are flagged to be clipped before anything draws them.
            far = (
                np.logical_or.reduceat((np.abs(xs) > FAR_OUTSIDE * width) | (np.abs(ys) > FAR_OUTSIDE * height), starts)
                & finite
            )
        ring_offsets = np.r_[starts, len(coords)]
        shapes = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON,
            np.where(np.isfinite(coords), coords, 0.0),
            (ring_offsets, np.arange(len(starts) + 1)),
        )
        valid = shapely.is_valid(shapes)
        # The shoelace area of a self-intersecting polygon cancels out; measure the area it fills instead.
        invalid = np.flatnonzero(finite & ~valid)
        filled = [even_odd_shape(coords[ring_offsets[p] : ring_offsets[p + 1]]) for p in invalid]
        polygon_areas = np.where(finite, shapely.area(shapes), 0.0)
        polygon_areas[invalid] = shapely.area(filled)

        for p in np.flatnonzero(~finite):
            self._add(
                ProblemKind.BAD_POLYGON,
                f"{batch.label(p)} has coordinates that are not finite numbers",
                **self._where(owners[p]),
            )
        for p in np.flatnonzero(outside):
            w, h = batch.widths[p], batch.heights[p]
            # Drawing clips a polygon to its image, so points a little outside are harmless.
            kind, how = (ProblemKind.POINTS_FAR_OUTSIDE, "far ") if far[p] else (ProblemKind.POINTS_OUTSIDE, "")
            self._add(kind, f"{batch.label(p)} has points {how}outside the {w}x{h} image", **self._where(owners[p]))
        empty = np.zeros(len(starts), bool)
        for p in np.flatnonzero(finite & (polygon_areas < TINY_POLYGON_AREA)):
            if far[p]:
                drawn = (
                    shapely.box(0, 0, batch.widths[p], batch.heights[p])
                    .intersection(shapely.make_valid(shapes[p]))
                    .area
                )
            else:
                rle = mask_utils.frPyObjects([batch.polygons[p]], int(batch.heights[p]), int(batch.widths[p]))
                drawn = mask_utils.area(rle).sum()
            if drawn == 0:
                empty[p] = True
                self._add(ProblemKind.ZERO_AREA, f"{batch.label(p)} encloses no pixel", **self._where(owners[p]))
        for p, shape in zip(invalid, filled, strict=True):
            points = coords[ring_offsets[p] : ring_offsets[p + 1]]
            # No pixels to compare where the image size is unusable (reported with the image) or the polygon far outside.
            drawable = not (empty[p] or far[p]) and min(batch.widths[p], batch.heights[p]) > 0
            problem = (
                _self_intersection(batch.polygons[p], points, shape, batch.widths[p], batch.heights[p])
                if drawable
                else None
            )
            if problem:
                self._add(ProblemKind.SELF_INTERSECTION, f"{batch.label(p)} {problem}", **self._where(owners[p]))

        # Per annotation: the union of its polygons' extents (clipped to the image) and the sum of their areas.
        keep = finite & ~empty
        x = np.clip(xs, 0, width)
        y = np.clip(ys, 0, height)
        per_polygon = np.stack(
            [
                np.where(keep, np.minimum.reduceat(x, starts), np.inf),
                np.where(keep, np.minimum.reduceat(y, starts), np.inf),
                np.where(keep, np.maximum.reduceat(x, starts), -np.inf),
                np.where(keep, np.maximum.reduceat(y, starts), -np.inf),
            ],
            axis=1,
        )
        first = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        any_kept = np.logical_or.reduceat(keep, first)
        annotated = owners[first][any_kept]
        extents[annotated, :2] = np.minimum.reduceat(per_polygon[:, :2], first)[any_kept]
        extents[annotated, 2:] = np.maximum.reduceat(per_polygon[:, 2:], first)[any_kept]
        areas[annotated] = np.add.reduceat(np.where(keep, polygon_areas, 0.0), first)[any_kept]
        return extents, areas

    def _check_consistency(
        self, boxes: np.ndarray, declared_area: np.ndarray, extents: np.ndarray, areas: np.ndarray, exact: np.ndarray
    ) -> None:
        """Compare each annotation's bbox and area with its mask.

        ``extents`` and ``areas`` are exact for RLE masks (``exact``) and polygon measures for
        the others; a polygon annotation that seems off is rasterised before it is reported,
        because a box or area may rightly describe the drawn pixels, which thin spikes and
        slivers of a polygon do not reach.
        """
        reported: defaultdict[int | None, set[ProblemKind]] = defaultdict(set)
        for p in self.problems:
            if p.section == "annotations":
                reported[p.index].add(p.kind)
        measured = np.isfinite(areas)
        for index in np.flatnonzero(measured & (areas <= 0)).tolist():
            if ProblemKind.ZERO_AREA not in reported[index]:
                self._add(ProblemKind.ZERO_AREA, "mask is empty", **self._where(index))
        # Box and area are meaningless until malformed polygons are repaired.
        malformed = [i for i, kinds in reported.items() if kinds & _MALFORMED_POLYGON]
        measured[malformed] = False
        measured &= areas > 0
        with np.errstate(invalid="ignore"):
            box_off = measured & (np.abs(boxes - extents).max(axis=1) > BOX_TOLERANCE)
            area_off = measured & (
                np.abs(declared_area - areas) > np.maximum(AREA_ABSOLUTE_TOLERANCE, AREA_RELATIVE_TOLERANCE * areas)
            )
        annotations = self.dataset.annotations
        for index in np.flatnonzero(box_off | area_off).tolist():
            ann, box, area = annotations[index], boxes[index], declared_area[index]
            extent, mask_area = extents[index], areas[index]
            box_wrong, area_wrong = bool(box_off[index]), bool(area_off[index])
            if not exact[index]:
                extent, mask_area = self._rasterised(ann)
                box_wrong = box_wrong and np.abs(box - extent).max() > BOX_TOLERANCE
                area_wrong = area_wrong and _area_off(area, mask_area)
            if box_wrong:
                x1, y1, x2, y2 = (float(v) for v in extent)
                mask_box = [round(x1, 1), round(y1, 1), round(x2 - x1, 1), round(y2 - y1, 1)]
                self._add(
                    ProblemKind.BBOX_MISMATCH,
                    f"bbox {ann['bbox']} does not fit the mask (mask box {mask_box})",
                    **self._where(index),
                )
            if area_wrong:
                self._add(
                    ProblemKind.AREA_MISMATCH,
                    f"area {ann['area']} is far from the mask's area ({mask_area:.0f})",
                    **self._where(index),
                )

    def _rasterised(self, ann: dict) -> tuple[np.ndarray, float]:
        width, height = self.image_size_by_id[ann["image_id"]]
        rle = mask_ops.to_rle(ann["segmentation"], height, width)
        x, y, w, h = mask_ops.bbox(rle)
        return np.asarray([x, y, x + w, y + h]), float(mask_ops.area(rle))


def _self_intersection(
    polygon: list, points: np.ndarray, filled: shapely.Geometry, width: int, height: int
) -> str | None:
    """What is wrong with a polygon that is not simple, or None when nothing is.

    ``filled`` is ``even_odd_shape(points)``. Zero-width bridges walked there and back, which YOLO
    and VIA files (this tool's own included) use to join holes and parts into one outline, are no
    problem as long as the polygon draws exactly the pixels of its simple parts. Edges that cross
    (a bow-tie) are reported even when the pixels agree: such an outline is likely a slip.
    """
    crossing = _crossing(points)
    if crossing is not None:
        return f"crosses itself at ({crossing[0]:.6g}, {crossing[1]:.6g})"
    changed = _changed_pixels([polygon], coco_polygons(filled), width, height)
    if changed:
        reason = shapely.is_valid_reason(shapely.Polygon(points))
        return f"is not a simple polygon ({reason}) and its simple parts would draw {changed} pixel(s) differently"
    return None


def _crossing(points: np.ndarray) -> tuple[float, float] | None:
    """A point where two edges of a ring cross, leaving out zero-width bridges (edges walked back the
    other way as well), which cancel out in an even-odd fill; None when no edges cross."""
    edges = np.concatenate([points, np.roll(points, -1, axis=0)], axis=1)
    walked = set(map(tuple, edges.tolist()))
    kept = [i for i, (x1, y1, x2, y2) in enumerate(edges.tolist()) if (x2, y2, x1, y1) not in walked]
    segments = shapely.linestrings(edges[kept].reshape(-1, 2, 2))
    first, second = shapely.STRtree(segments).query(segments)  # pairs whose boxes meet
    first, second = first[first < second], second[first < second]
    # "crosses" leaves out edges that only meet at a vertex or overlap along a line.
    crossed = np.flatnonzero(shapely.crosses(segments[first], segments[second]))
    if not len(crossed):
        return None
    point = shapely.intersection(segments[first[crossed[0]]], segments[second[crossed[0]]])
    return float(point.x), float(point.y)


def _changed_pixels(before: list, after: list, width: int, height: int) -> int:
    """How many pixels pycocotools draws differently for two lists of polygons."""
    old, new = mask_ops.to_rle(before, height, width), mask_ops.to_rle(after, height, width)
    if old["counts"] == new["counts"]:
        return 0
    return int((mask_ops.decode(old, height, width) != mask_ops.decode(new, height, width)).sum())


def _area_off(area: float, expected: float) -> bool:
    return abs(area - expected) > max(AREA_ABSOLUTE_TOLERANCE, AREA_RELATIVE_TOLERANCE * expected)


class _PolygonBatch:
    """Every well-formed polygon of the dataset, gathered for the vectorised checks
    (``_Checker._gather_polygons`` appends to the lists directly: it runs once per polygon)."""

    def __init__(self) -> None:
        self.owners: list[int] = []  # annotation index of each polygon
        self.parts: list[int] = []  # position of the polygon in its annotation
        self.polygons: list[list] = []
        self.widths: list[int] = []
        self.heights: list[int] = []

    def label(self, p: int | np.integer) -> str:
        return f"polygon {self.parts[p]}"

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(points (P, 2) float, polygon number of each point, first point of each polygon)."""
        lengths = np.fromiter(map(len, self.polygons), np.int64, len(self.polygons)) // 2
        if set(map(type, itertools.chain.from_iterable(self.polygons))) <= {int, float}:
            flat = np.fromiter(itertools.chain.from_iterable(self.polygons), np.float64)
        else:  # some value is not a number: convert polygon by polygon, NaN marking the culprits
            flat = np.concatenate([_numbers(p) for p in self.polygons])
        starts = np.r_[0, np.cumsum(lengths)[:-1]]
        return flat.reshape(-1, 2), np.repeat(np.arange(len(lengths)), lengths), starts


def _numbers(values: list, width: int = 0) -> np.ndarray:
    """A flat list (``width`` 0) or a list of ``width``-long lists as floats, NaN for anything that
    is not a real number. NumPy alone would accept strings such as ``"5"`` and booleans, so the
    types are looked at first (one pass, in C)."""
    flat = itertools.chain.from_iterable(values) if width else values
    if set(map(type, flat)) <= {int, float}:
        array = np.asarray(values, np.float64)
    elif width:
        array = np.asarray([_numbers(row) for row in values], np.float64)
    else:
        array = np.asarray([_number(v) for v in values], np.float64)
    return array.reshape(-1, width) if width else array


def _number(value: Any) -> float:
    return float(value) if type(value) in (int, float) else math.nan


def _is_truncated(path: Path) -> bool:
    """Whether a JPEG or PNG file was cut short; other formats are not checked.

    Reading the last bytes for the end marker is cheap; only a file without one is decoded to be
    sure, since some cameras append data (e.g. a motion-photo video) after a complete JPEG.
    """
    with open(path, "rb") as handle:
        head = handle.read(8)
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 64))
        tail = handle.read()
    marker = next((end for start, end in _END_MARKERS if head.startswith(start)), None)
    if marker is None or marker in tail:
        return False
    try:
        io.read_image(path)
    except InstasegError:
        return True
    return False


def fix_dataset(dataset: Dataset, problems: list[Problem]) -> tuple[Dataset, list[str]]:
    """A repaired copy of ``dataset`` and one line per change made.

    ``problems`` must come from ``check_dataset(dataset)``. Repairs: images that are missing,
    unreadable, truncated, too large or outside the dataset folder are dropped with their
    annotations; duplicate ids are renumbered (annotations stay with the first record of an id);
    categories sharing a name are merged into the first; annotations with no usable mask, an
    unknown image or an unknown category are dropped; broken polygons and polygons that draw no
    pixel are dropped, polygons that cross themselves are split into simple parts and polygons
    reaching outside the image are clipped to it, each only if pycocotools draws the same pixels
    afterwards (zero-width bridges joining holes and parts are kept); bbox and area are recomputed
    from the repaired mask. Problems that cannot be repaired safely (a file whose size differs
    from the JSON, an image without annotations, a repair that would change a mask's pixels) are
    listed as left unchanged.
    """
    coco = copy.deepcopy(dataset.coco)
    changes: list[str] = []
    flagged: dict[tuple[str, int], list[Problem]] = defaultdict(list)
    for problem in problems:
        if problem.section is not None and problem.index is not None:
            flagged[(problem.section, problem.index)].append(problem)

    category_map = _fix_categories(coco, flagged, changes)
    dropped_images = _fix_images(coco, flagged, changes)
    _fix_annotations(coco, flagged, category_map, dropped_images, changes)
    return Dataset(coco, dataset.image_root, dataset.source), changes


def _next_id(records: list[dict]) -> Iterator[int]:
    next_id = max((r["id"] for r in records), default=0) + 1
    while True:
        yield next_id
        next_id += 1


def _fix_categories(coco: dict, flagged: dict, changes: list[str]) -> dict[int, int]:
    """Renumber duplicate ids and merge duplicate names; returns old id -> new id for annotations."""
    categories = coco["categories"]
    fresh = _next_id(categories)
    first_with_name: dict[str, int] = {}
    for category in categories:
        first_with_name.setdefault(category["name"], category["id"])
    category_map: dict[int, int] = {}
    kept = []
    for index, category in enumerate(categories):
        kinds = {p.kind for p in flagged.get(("categories", index), [])}
        label = f"category id {category['id']} ({category['name']!r})"
        if ProblemKind.DUPLICATE_NAME in kinds:
            target = first_with_name[category["name"]]
            if category["id"] != target:
                category_map[category["id"]] = target
            changes.append(f"{label}: merged into category id {target} of the same name")
            continue
        if ProblemKind.DUPLICATE_ID in kinds:
            new_id = next(fresh)
            changes.append(f"{label}: duplicate id renumbered to {new_id} (its annotations stay with the first)")
            category["id"] = new_id
        if ProblemKind.EMPTY_NAME in kinds:
            category["name"] = f"class_{category['id']}"
            changes.append(f"category id {category['id']}: empty name replaced by {category['name']!r}")
        kept.append(category)
    coco["categories"] = kept
    return category_map


def _fix_images(coco: dict, flagged: dict, changes: list[str]) -> set[int]:
    """Drop unusable images and renumber duplicate ids; returns the ids whose annotations must go."""
    images = coco["images"]
    fresh = _next_id(images)
    dropped: set[int] = set()
    annotation_count = Counter(ann["image_id"] for ann in coco["annotations"])
    kept = []
    for index, image in enumerate(images):
        found = flagged.get(("images", index), [])
        label = f"image id {image['id']} ({image['file_name']})"
        unusable = [p for p in found if p.kind.repair is Repair.DROP_IMAGE]
        if unusable:
            duplicate = any(p.kind is ProblemKind.DUPLICATE_ID for p in found)
            count = 0 if duplicate else annotation_count[image["id"]]
            changes.append(f"{label}: dropped with its {count} annotation(s) ({unusable[0].message})")
            if not duplicate:
                dropped.add(image["id"])
            continue
        for problem in found:
            if problem.kind is ProblemKind.DUPLICATE_ID:
                new_id = next(fresh)
                changes.append(f"{label}: duplicate id renumbered to {new_id} (annotations stay with the first)")
                image["id"] = new_id
            elif problem.severity is Severity.ERROR:
                changes.append(f"{label}: left unchanged: {problem.message}")
        kept.append(image)
    coco["images"] = kept
    return dropped


def _fix_annotations(
    coco: dict, flagged: dict, category_map: dict, dropped_images: set[int], changes: list[str]
) -> None:
    images: dict[int, dict] = {}
    for image in coco["images"]:
        images.setdefault(image["id"], image)
    fresh = _next_id(coco["annotations"])
    kept = []
    for index, ann in enumerate(coco["annotations"]):
        if ann["image_id"] in dropped_images:
            continue  # already reported with its image
        found = flagged.get(("annotations", index), [])
        label = f"annotation id {ann['id']} (image id {ann['image_id']})"
        if ann["category_id"] in category_map:
            ann["category_id"] = category_map[ann["category_id"]]
        if not found:
            kept.append(ann)
            continue
        kinds = {p.kind for p in found}
        unusable = [p for p in found if p.kind.repair is Repair.DROP_ANNOTATION]
        if unusable:
            changes.append(f"{label}: dropped ({unusable[0].message})")
            continue
        if ProblemKind.DUPLICATE_ID in kinds:
            new_id = next(fresh)
            changes.append(f"{label}: duplicate id renumbered to {new_id}")
            ann["id"] = new_id
            label = f"annotation id {new_id} (image id {ann['image_id']})"
        repairs = {kind.repair for kind in kinds}
        if Repair.SET_ISCROWD in repairs:
            ann["iscrowd"] = int(bool(ann.get("iscrowd")))
            changes.append(f"{label}: iscrowd set to {ann['iscrowd']}")
        image = images[ann["image_id"]]
        # A repaired polygon changes the mask, so its box and area are recomputed too.
        reshaped = Repair.REPAIR_POLYGONS in repairs
        if isinstance(ann.get("segmentation"), list) and reshaped:
            polygons, notes = _repair_polygons(ann["segmentation"], image["width"], image["height"])
            if not polygons:
                changes.append(f"{label}: dropped (no usable polygon left: {'; '.join(notes) or 'empty mask'})")
                continue
            ann["segmentation"] = polygons
            changes.extend(f"{label}: {note}" for note in notes)
        rle = mask_ops.to_rle(ann["segmentation"], image["height"], image["width"])
        area = mask_ops.area(rle)
        if area == 0:
            changes.append(f"{label}: dropped (empty mask)")
            continue
        box = mask_ops.bbox(rle)
        if ann.get("bbox") != box and (reshaped or Repair.RECOMPUTE_BBOX in repairs):
            changes.append(f"{label}: bbox {ann.get('bbox')} recomputed from the mask as {box}")
            ann["bbox"] = box
        if ann.get("area") != area and (reshaped or Repair.RECOMPUTE_AREA in repairs):
            changes.append(f"{label}: area {ann.get('area')} recomputed from the mask as {area}")
            ann["area"] = area
        kept.append(ann)
    coco["annotations"] = kept


def _repair_polygons(segmentation: list, width: int, height: int) -> tuple[list[list[float]], list[str]]:
    """Drop malformed polygons and those that draw no pixel, split the ones that cross themselves into
    simple parts and clip the rest to the image. A repair that would change the pixels pycocotools
    draws is not made: the polygon is kept as it is and the note says so."""
    if segmentation and not isinstance(segmentation[0], list):
        segmentation = [segmentation]  # a flat list is one polygon missing its brackets
    repaired: list[list[float]] = []
    notes: list[str] = []
    for part, polygon in enumerate(segmentation):
        label = f"polygon {part}"
        coords = _numbers(polygon) if type(polygon) is list else np.full(1, np.nan)
        if len(coords) % 2 or len(coords) < 6 or not np.isfinite(coords).all():
            notes.append(f"{label} removed (malformed)")
            continue
        points = coords.reshape(-1, 2)
        pieces, steps = _simple_clipped(polygon, points, width, height)
        drawn = [p for p in pieces if mask_ops.area(mask_ops.to_rle([p], height, width)) > 0]
        # pycocotools cannot draw a polygon reaching that far (to_rle keeps its largest part in the
        # image), so there are no pixels to hold its clipped parts to.
        far = (np.abs(points) > FAR_OUTSIDE * np.array([width, height])).any()
        changed = 0 if far or not steps else _changed_pixels([polygon], drawn, width, height)
        if changed:
            notes.append(
                f"{label} left unchanged: once {' and '.join(steps)} it would draw {changed} pixel(s) differently"
            )
            repaired.append(polygon)
        elif not drawn:
            notes.append(f"{label} removed (encloses no pixel)")
        else:
            repaired.extend(drawn)
            if steps:
                notes.append(f"{label} {' and '.join(steps)}" + (f" ({len(drawn)} pieces)" if len(drawn) > 1 else ""))
    return repaired, notes


def _simple_clipped(polygon: list, points: np.ndarray, width: int, height: int) -> tuple[list[list[float]], list[str]]:
    """A polygon made simple where ``_self_intersection`` finds it wrong and clipped to the image,
    as COCO polygons, with the steps taken (none: the polygon as it is)."""
    shape = shapely.Polygon(points)
    steps = []
    if not shape.is_valid:
        shape = even_odd_shape(points)
        if _self_intersection(polygon, points, shape, width, height):
            steps.append("made simple")
    if not shapely.box(0, 0, width, height).contains(shape):
        shape = shape.intersection(shapely.box(0, 0, width, height))
        steps.append("clipped to the image")
    return (coco_polygons(shape) if steps else [polygon]), steps
