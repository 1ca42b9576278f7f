"""What every format module shares: the conversion report, the dataset builder and helpers."""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from instaseg.core import events, io
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.core.geometry import join_polygons
from instaseg.data.dataset import Dataset

DEFAULT_CLASS = "object"
# zlib level for label PNGs: flat label maps compress nearly as well at 1 as at PIL's default 6, several times faster.
FAST_PNG = 1


@dataclass
class Report:
    """What a conversion did: counts, the detected format and every warning (file and record named).

    Warnings are kept here and sent to ``events.warn`` by ``send_warnings``, once the read (or
    write) they belong to has succeeded: a read refused for keeping too little ends with its one
    error, not with every skipped record before it.
    """

    source_format: str | None = None
    detected: bool = False
    images: int = 0
    instances_read: int = 0
    instances_written: int = 0
    warnings: list[str] = field(default_factory=list)
    # label records read but not kept, by message; the first warning of each names an example
    skipped: dict[str, int] = field(default_factory=dict)
    first_skipped: dict[str, str] = field(default_factory=dict)
    warnings_sent: int = field(default=0, repr=False)

    def warn(self, message: str, *, file: str | Path | None = None, record: str | None = None) -> None:
        """Record one problem that was skipped rather than fatal."""
        self.warnings.append(": ".join([*(str(p) for p in (file, record) if p not in (None, "")), message]))

    def skip(self, message: str, *, file: str | Path | None = None, record: str | None = None, count: int = 1) -> None:
        """Warn that ``count`` label records (instances, or label files whose content is unknown) were not kept.

        ``open_dataset`` refuses a read that keeps none, or under half, of the records it saw.
        """
        self.warn(message, file=file, record=record)
        self.skipped[message] = self.skipped.get(message, 0) + count
        self.first_skipped.setdefault(message, self.warnings[-1])

    def send_warnings(self) -> None:
        """Send the warnings recorded since the last call to ``events.warn``."""
        for warning in self.warnings[self.warnings_sent :]:
            events.warn(warning)
        self.warnings_sent = len(self.warnings)


class DatasetBuilder:
    """Collects images and instances read from any format into a COCO ``Dataset``.

    Images are added by path; ``build`` makes their common folder the image root and stores each
    ``file_name`` relative to it. Area and box are computed from the mask, so every format yields
    the same numbers pycocotools would.
    """

    def __init__(self, report: Report, class_names: Sequence[str] = ()):
        self.report = report
        self.images: list[dict] = []
        self.paths: list[Path] = []
        self.annotations: list[dict] = []
        self.category_ids: dict[str, int] = {}
        for name in class_names:
            self.category_id(name)

    def category_id(self, name: str) -> int:
        """The COCO id of class ``name``, creating the category on first use (ids 1, 2, ...)."""
        if name not in self.category_ids:
            self.category_ids[name] = len(self.category_ids) + 1
        return self.category_ids[name]

    def add_image(self, path: Path, width: int | None = None, height: int | None = None) -> dict:
        """Register an image (its size read from the file header unless given) and return its record."""
        check_utf8_name(path)
        if width is None or height is None:
            width, height = io.image_size(path)
        record = {"id": len(self.images) + 1, "file_name": "", "width": int(width), "height": int(height)}
        self.images.append(record)
        self.paths.append(Path(os.path.abspath(path)))
        return record

    def add_instance(
        self,
        image: dict,
        segmentation: Any,
        class_name: str,
        *,
        iscrowd: bool = False,
        file: str | Path | None = None,
        record: str | None = None,
    ) -> None:
        """Add one instance (COCO polygons or RLE); an empty mask is reported and skipped."""
        rle = mask_ops.to_rle(segmentation, image["height"], image["width"])
        area = mask_ops.area(rle)
        if area == 0:
            self.report.skip("instance draws an empty mask, skipped", file=file, record=record)
            return
        self.annotations.append(
            {
                "id": len(self.annotations) + 1,
                "image_id": image["id"],
                "category_id": self.category_id(class_name),
                "segmentation": segmentation,
                "area": area,
                "bbox": mask_ops.bbox(rle),
                "iscrowd": int(bool(iscrowd)),
            }
        )

    def build(self, source: Path) -> Dataset:
        """The collected dataset; counts go to the report."""
        root = Path(os.path.commonpath([p.parent for p in self.paths])) if self.paths else source
        for image, path in zip(self.images, self.paths, strict=True):
            image["file_name"] = path.relative_to(root).as_posix()
        categories = [{"id": cid, "name": name, "supercategory": ""} for name, cid in self.category_ids.items()]
        coco = {"images": self.images, "annotations": self.annotations, "categories": categories}
        self.report.images = len(self.images)
        self.report.instances_read = len(self.annotations)
        return Dataset(coco, root, source=source)


def check_utf8_name(path: Path) -> None:
    """Refuse file names that are not valid UTF-8: JSON outputs could not name them."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise InstasegError("file name is not valid UTF-8; rename the file", file=ascii(str(path))) from None


def read_text(path: Path) -> str:
    """A UTF-8 text file's content, with undecodable bytes reported as a one-line error."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InstasegError(f"not UTF-8 text (byte {exc.start})", file=path) from None
    except OSError as exc:
        raise InstasegError(f"cannot read ({exc.strerror})", file=path) from None


def read_class_file(path: Path) -> list[str] | dict[str, Any]:
    """A user's class file: a names list (``.txt`` lines, YAML ``names``, JSON list) or a JSON/CSV mapping.

    CSV rows are ``key,class`` (key = instance id or image stem) or ``image,instance,class``; a first
    row whose last cell is ``class``/``name``/``label`` is a header.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = io.read_json(path)
    elif suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(read_text(path))
        except yaml.YAMLError as exc:
            raise InstasegError(f"malformed YAML ({str(exc).splitlines()[0]})", file=path) from None
        if isinstance(data, dict) and "names" in data:
            data = data["names"]
    elif suffix == ".csv":
        return _read_class_csv(path)
    else:
        return [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if isinstance(data, list) and all(isinstance(n, str) for n in data):
        return data
    if isinstance(data, dict):
        return {str(k): v for k, v in data.items()}
    raise InstasegError("expected a list of class names or a mapping to class names", file=path)


def _read_class_csv(path: Path) -> dict[str, Any]:
    rows = [r for r in csv.reader(read_text(path).splitlines()) if r and any(c.strip() for c in r)]
    if rows and rows[0][-1].strip().lower() in ("class", "name", "label", "category"):
        rows = rows[1:]
    mapping: dict[str, Any] = {}
    for number, row in enumerate(rows, 1):
        row = [c.strip() for c in row]
        if len(row) == 2:
            mapping[row[0]] = row[1]
        elif len(row) == 3:
            mapping.setdefault(row[0], {})[row[1]] = row[2]
        else:
            raise InstasegError(f"expected 2 or 3 columns, found {len(row)}", file=path, record=f"row {number}")
    return mapping


def names_from_mapping(mapping: list[str] | dict[str, Any], path: Path) -> list[str]:
    """A names list from a class file that should hold one ({0: name} mappings are accepted)."""
    if isinstance(mapping, list):
        return mapping
    if all(_is_int(k) for k in mapping) and all(isinstance(v, str) for v in mapping.values()):
        by_id = {int(k): v for k, v in mapping.items()}
        if sorted(by_id) == list(range(len(by_id))):
            return [by_id[k] for k in range(len(by_id))]
    raise InstasegError("expected a list of class names (or {0: name, 1: name, ...})", file=path)


def _is_int(value: Any) -> bool:
    try:
        int(value)
        return True
    except (TypeError, ValueError):
        return False


def coordinates(values: Any) -> np.ndarray:
    """A JSON list of coordinates (nested lists allowed) as a float array, refusing anything but numbers.

    ``np.asarray(values, float)`` would take ``true`` for 1 and the string ``"12"`` for 12.

    Raises:
        ValueError: a value is not a number (booleans and strings included).
    """
    if not isinstance(values, list):
        raise ValueError(f"expected a list of coordinates, got {type(values).__name__}")
    flat = values
    while flat and all(isinstance(v, list) for v in flat):
        flat = [v for item in flat for v in item]
    if any(type(v) not in (int, float) for v in flat):
        raise ValueError("coordinates must be numbers")
    return np.asarray(values, float)


def read_mask_png(path: Path) -> np.ndarray:
    """A label or mask PNG as a 2-D integer array: grey values, palette indices, or for colour
    images R + 256 G + 256^2 B, so that every colour stays a distinct value (alpha is ignored)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGB", "RGBA"):
                rgb = np.asarray(img.convert("RGB")).astype(np.uint32)
                return rgb[..., 0] | rgb[..., 1] << 8 | rgb[..., 2] << 16
            return np.asarray(img.getchannel("L") if img.mode == "LA" else img)
    except FileNotFoundError:
        raise InstasegError("mask file not found", file=path) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InstasegError(f"not a readable image ({exc})", file=path) from None


def output_names(dataset: Dataset) -> dict[int, str]:
    """A unique flat file name (and stem) per image, for formats that copy images into one folder.

    The base name is kept when its stem is unique; otherwise the folders and the suffix of
    ``file_name`` are joined into the stem (``train/a.jpg`` -> ``train_a_jpg.jpg``).
    """
    stems: dict[str, int] = {}
    for image in dataset.images:
        stem = Path(image["file_name"]).stem
        stems[stem] = stems.get(stem, 0) + 1
    names = {}
    for image in dataset.images:
        path = Path(image["file_name"])
        unique = "_".join([*path.parent.parts, path.stem, path.suffix.lstrip(".")]) + path.suffix
        names[image["id"]] = path.name if stems[path.stem] == 1 else unique
    if len(set(Path(n).stem for n in names.values())) != len(names):
        raise InstasegError("two images would get the same output name", file=dataset.source)
    return names


def copy_image(dataset: Dataset, image: dict, target: Path) -> None:
    """Copy an image file into a folder-format output."""
    source = dataset.image_path(image)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(source, target)
    except FileNotFoundError:
        raise InstasegError("image file not found", file=source, record=f"image id {image['id']}") from None


def instance_polygons(annotation: dict, image: dict, even_odd: bool = False) -> list[list[float]]:
    """An annotation's outline as polygons: its own when it has them, traced from the mask otherwise.

    With ``even_odd`` the polygons are meant to be joined into one (``join_polygons``) and filled
    by the even-odd rule: holes, and islands inside holes, are traced too, so the joined polygon
    redraws the mask exactly. Without it, holes are filled (COCO polygons are a union).
    """
    height, width = image["height"], image["width"]
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        polygons = [list(map(float, p)) for p in segmentation if len(p) >= 6]
        if not even_odd or len(polygons) < 2:
            return polygons
        parts = [mask_ops.decode([p], height, width) for p in polygons]
        mask = np.any(parts, 0)
        if sum(int(p.sum()) for p in parts) == int(mask.sum()):  # disjoint parts: joining keeps every pixel
            return polygons
    elif segmentation:
        mask = mask_ops.decode(segmentation, height, width)
    else:
        return []
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return []
    # Tracing only the instance's box (plus a blank margin) is many times faster on large images.
    top, left = rows[0] - 1, cols[0] - 1
    crop = np.pad(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], 1)
    polygons = _even_odd_outlines(crop) if even_odd else mask_ops.to_polygons(crop)
    return [(np.asarray(p).reshape(-1, 2) + (left, top)).reshape(-1).round(2).tolist() for p in polygons]


def _even_odd_outlines(mask: np.ndarray, max_levels: int = 8) -> list[list[float]]:
    """Outer contours, then the contours of what their fill gets wrong (holes), then of what that gets
    wrong (islands in holes), ...: an even-odd fill of all of them together is the mask."""
    height, width = mask.shape
    polygons: list[list[float]] = []
    drawn = np.zeros_like(mask)
    for _ in range(max_levels):
        wrong = drawn ^ mask
        level = mask_ops.to_polygons(wrong)
        if not level:
            break
        polygons += level
        drawn ^= mask_ops.decode(level, height, width)
    return polygons


def single_outline(dataset: Dataset, image: dict, annotation: dict, report: Report) -> np.ndarray | None:
    """An instance as the (K, 2) vertices of one even-odd polygon, for formats with one polygon per
    instance (YOLO, VIA); None, with a warning, when it has no outline to write."""
    polygons = instance_polygons(annotation, image, even_odd=True)
    if not polygons:
        report.warn("no outline to write, skipped", file=dataset.source, record=f"annotation id {annotation['id']}")
        return None
    return np.asarray(join_polygons(polygons)).reshape(-1, 2)


def paint_order(annotations: Sequence[dict], areas: Iterable[int]) -> list[int]:
    """Indices in drawing order for single-layer outputs: largest first, so smaller instances end on top.

    Ties keep the annotation order (later on top).
    """
    areas = list(areas)
    return sorted(range(len(annotations)), key=lambda k: -areas[k])
