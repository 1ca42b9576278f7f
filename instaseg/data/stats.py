"""Dataset statistics (``instaseg stats``): counts per class, per image and per COCO size range.

Sizes follow the COCO metric: an instance is small below 32² pixels of area, medium below 96²
and large above, judged on the annotation's ``area`` field exactly as pycocotools' evaluation does
(measured from the mask when the field is missing).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from instaseg.core import io
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.data.dataset import Dataset

SMALL_AREA = 32**2
MEDIUM_AREA = 96**2
SIZE_NAMES = ("small", "medium", "large")
# At most this many bars in the instances-per-image histogram; wider counts share a bin.
MAX_HISTOGRAM_BINS = 20


def dataset_stats(dataset: Dataset) -> dict[str, Any]:
    """Statistics of a dataset as a JSON-ready dict.

    Keys: ``images``, ``instances``, ``classes``, ``crowd`` (instances marked iscrowd),
    ``images_without_instances``, ``per_class`` (class name -> instances, images, small, medium,
    large), ``sizes`` (small/medium/large totals), ``instances_per_image`` (min, median, mean,
    max and ``histogram``: a list of ``{"from", "to", "images"}`` bins, bounds inclusive).
    Annotations whose category is not in the dataset are counted under ``"<unknown id N>"``.
    """
    names = {cat["id"]: cat["name"] for cat in dataset.categories}
    per_class: dict[str, dict[str, int]] = {
        name: {"instances": 0, "images": 0, **dict.fromkeys(SIZE_NAMES, 0)} for name in names.values()
    }
    images_of_class: dict[str, set[int]] = {name: set() for name in per_class}
    per_image: Counter[int] = Counter()
    crowd = 0
    image_sizes = {img["id"]: (img["height"], img["width"]) for img in dataset.images}
    for ann in dataset.annotations:
        name = names.get(ann["category_id"], f"<unknown id {ann['category_id']}>")
        if name not in per_class:
            per_class[name] = {"instances": 0, "images": 0, **dict.fromkeys(SIZE_NAMES, 0)}
            images_of_class[name] = set()
        row = per_class[name]
        row["instances"] += 1
        row[_size_name(ann, image_sizes, dataset.source)] += 1
        images_of_class[name].add(ann["image_id"])
        per_image[ann["image_id"]] += 1
        crowd += bool(ann.get("iscrowd", 0))
    for name, ids in images_of_class.items():
        per_class[name]["images"] = len(ids)

    counts = np.asarray([per_image.get(img["id"], 0) for img in dataset.images], np.int64)
    return {
        "images": len(dataset.images),
        "instances": len(dataset.annotations),
        "classes": len(dataset.categories),
        "crowd": crowd,
        "images_without_instances": int((counts == 0).sum()),
        "per_class": per_class,
        "sizes": {size: sum(row[size] for row in per_class.values()) for size in SIZE_NAMES},
        "instances_per_image": _distribution(counts),
    }


def object_size(dataset: Dataset, image: dict) -> float | None:
    """The typical side of an image's labelled objects: the median square root of their areas, in pixels.

    None when the image has no instance of positive area. Crowd regions are left out.
    """
    size = (image["height"], image["width"])
    areas = [
        _area(ann, size, dataset.source)
        for ann in dataset.annotations_by_image.get(image["id"], [])
        if not ann.get("iscrowd")
    ]
    sides = np.sqrt([a for a in areas if a > 0])
    return float(np.median(sides)) if len(sides) else None


def _size_name(ann: dict, image_sizes: dict[int, tuple[int, int]], source: Path | None) -> str:
    area = _area(ann, image_sizes.get(ann["image_id"], (0, 0)), source)
    return "small" if area < SMALL_AREA else "medium" if area < MEDIUM_AREA else "large"


def _area(ann: dict, image_size: tuple[int, int], source: Path | None) -> float:
    """The annotation's ``area`` field, or its mask's area when the field is missing or not a number."""
    area = ann.get("area")
    if type(area) is int or type(area) is float:  # not bool, which is an int too
        return float(area)
    return _mask_area(ann, *image_size, source)


def _mask_area(ann: dict, height: int, width: int, source: Path | None) -> float:
    """The area of an annotation without an ``area`` field: RLE pixels, or polygon area inside the image.

    Polygons are measured geometrically rather than drawn, because a malformed one (say, a point
    a billion pixels away) would make pycocotools allocate without bound.
    """
    segmentation = ann.get("segmentation")
    try:
        if isinstance(segmentation, dict):
            return float(mask_ops.area(mask_ops.to_rle(segmentation, height, width)))
        frame = shapely.box(0, 0, width, height)
        # Polygons of fewer than 3 points draw nothing, as in pycocotools (see ``masks.to_rle``).
        polygons = [p for p in segmentation or [] if len(p) >= 6]
        shapes = [shapely.make_valid(shapely.Polygon(np.asarray(p, np.float64).reshape(-1, 2))) for p in polygons]
        return float(shapely.union_all([frame.intersection(s) for s in shapes]).area) if shapes else 0.0
    except (TypeError, ValueError, KeyError, shapely.errors.GEOSException):
        raise InstasegError(
            "cannot measure the mask (run 'instaseg check')",
            file=source,
            record=f"annotation id {ann['id']} (image id {ann['image_id']})",
        ) from None


def _distribution(counts: np.ndarray) -> dict[str, Any]:
    if len(counts) == 0:
        return {"min": 0, "median": 0.0, "mean": 0.0, "max": 0, "histogram": []}
    top = int(counts.max())
    width = max(1, -(-(top + 1) // MAX_HISTOGRAM_BINS))  # ceiling division
    bins = np.bincount(counts // width, minlength=top // width + 1)
    histogram = [{"from": k * width, "to": k * width + width - 1, "images": int(n)} for k, n in enumerate(bins)]
    return {
        "min": int(counts.min()),
        "median": float(np.median(counts)),
        "mean": round(float(counts.mean()), 3),
        "max": top,
        "histogram": histogram,
    }


def stats_tables(stats: dict[str, Any]) -> list:
    """The statistics as rich tables: an overview, one row per class, and the histogram."""
    from rich.table import Table

    spread = stats["instances_per_image"]
    overview = Table(title="Dataset", show_header=False)
    overview.add_column(justify="left")
    overview.add_column(justify="right")
    for label, value in (
        ("images", stats["images"]),
        ("instances", stats["instances"]),
        ("classes", stats["classes"]),
        ("crowd instances", stats["crowd"]),
        ("images without instances", stats["images_without_instances"]),
        (
            "instances per image (min / median / mean / max)",
            f"{spread['min']} / {spread['median']:g} / {spread['mean']:g} / {spread['max']}",
        ),
        ("small / medium / large (area < 32², < 96², more)", " / ".join(str(stats["sizes"][s]) for s in SIZE_NAMES)),
    ):
        overview.add_row(label, str(value))

    classes = Table(title="Instances per class")
    for column in ("class", "instances", "images", *SIZE_NAMES):
        classes.add_column(column, justify="left" if column == "class" else "right")
    for name, row in stats["per_class"].items():
        classes.add_row(name, *(str(row[c]) for c in ("instances", "images", *SIZE_NAMES)))

    histogram = Table(title="Instances per image")
    histogram.add_column("instances", justify="right")
    histogram.add_column("images", justify="right")
    histogram.add_column("", justify="left")
    peak = max((b["images"] for b in spread["histogram"]), default=0)
    for b in spread["histogram"]:
        label = str(b["from"]) if b["from"] == b["to"] else f"{b['from']}-{b['to']}"
        bar = "█" * round(30 * b["images"] / peak) if peak else ""
        histogram.add_row(label, str(b["images"]), bar)
    return [overview, classes, histogram]


def plot_stats(stats: dict[str, Any], path: str | Path, overwrite: bool = False) -> Path:
    """Save a figure of instances per class, instances per image and the size ranges (PNG, atomically)."""
    # The object API (no pyplot) draws off-screen without touching any global backend state.
    from matplotlib.figure import Figure

    io.check_output(path, overwrite)
    figure = Figure(figsize=(13, 4), layout="constrained")
    file_format = Path(path).suffix.lstrip(".").lower() or "png"
    if file_format not in figure.canvas.get_supported_filetypes():
        raise InstasegError(f"cannot save a figure as .{file_format}; use .png, .svg or .pdf", file=path)
    by_class, per_image, sizes = figure.subplots(1, 3)

    names = list(stats["per_class"])
    by_class.barh(names[::-1], [stats["per_class"][n]["instances"] for n in names[::-1]], color="tab:blue")
    by_class.set_title("instances per class")
    by_class.set_xlabel("instances")
    if len(names) > 30:  # unreadable labels are worse than none
        by_class.set_yticks([])

    bins = stats["instances_per_image"]["histogram"]
    per_image.bar(
        [b["from"] for b in bins],
        [b["images"] for b in bins],
        width=(bins[0]["to"] - bins[0]["from"] + 1) * 0.9 if bins else 0.9,
        align="edge",
        color="tab:green",
    )
    per_image.set_title("instances per image")
    per_image.set_xlabel("instances")
    per_image.set_ylabel("images")

    sizes.bar(list(SIZE_NAMES), [stats["sizes"][s] for s in SIZE_NAMES], color=["tab:orange", "tab:purple", "tab:red"])
    sizes.set_title("instance sizes (COCO ranges)")
    sizes.set_ylabel("instances")

    with io.atomic_path(path, overwrite) as tmp:
        figure.savefig(tmp, format=file_format, dpi=100)
    return Path(path)
