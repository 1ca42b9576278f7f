"""VGG Image Annotator (VIA) 1.x and 2.x region JSON.

Entries are matched to images by ``filename``: the dict key (``<filename><size>``) and ``size`` are
ignored, since files are often re-saved. Polygons, rectangles, circles, ellipses and closed polylines
become polygons (clipped to the image); points and open polylines enclose no area and are reported.
The class comes from ``region_attributes`` (a ``class``/``label``/``name``/``type``/``category``
attribute, or the only one there is), else from ``--class``, else ``object``.

The writer produces the VIA 1.x layout (images copied beside ``via_region_data.json``), one polygon
region per instance with ``region_attributes = {"class": name}``; VIA cannot group regions, so a
multi-part instance (or one with holes) becomes one polygon with zero-width bridges, as in YOLO.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from instaseg.core import events, io
from instaseg.core.errors import InstasegError
from instaseg.core.geometry import clip_to_image
from instaseg.data.dataset import Dataset
from instaseg.data.formats._common import (
    DEFAULT_CLASS,
    DatasetBuilder,
    Report,
    coordinates,
    copy_image,
    output_names,
    single_outline,
)

CLASS_ATTRIBUTES = ("class", "label", "name", "type", "category")
# Circles and ellipses become polygons with this many vertices (under 1% area error at any size).
ELLIPSE_VERTICES = 64
# A polyline closed by clicking its first point again ends within a pixel or two of where it starts.
CLOSED_POLYLINE_GAP = 2.0


def find_json(src: Path) -> Path | None:
    """The VIA JSON of a folder: ``via_region_data.json``, else the only JSON in it."""
    if src.is_file():
        return src
    preferred = src / "via_region_data.json"
    if preferred.is_file():
        return preferred
    candidates = sorted(src.glob("*.json"))
    return candidates[0] if len(candidates) == 1 else None


def read(
    src: Path,
    *,
    report: Report,
    images: Path | None = None,
    class_name: str | None = None,
    polylines_as_polygons: bool = False,
    **_,
) -> Dataset:
    """Read a VIA JSON (SRC is the file or the folder holding it and the images).

    A polyline whose ends meet (within ``CLOSED_POLYLINE_GAP`` pixels) is read as a polygon, as is
    every polyline with ``polylines_as_polygons``; other polylines are reported and skipped.
    """
    json_file = find_json(src)
    if json_file is None:
        raise InstasegError("no via_region_data.json (or single .json) in this folder", file=src)
    data = io.read_json(json_file)
    entries = data.get("_via_img_metadata", data) if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not all(isinstance(e, dict) and "filename" in e for e in entries.values()):
        raise InstasegError("not a VIA file (expected entries with 'filename' and 'regions')", file=json_file)
    image_dir = images if images is not None else json_file.parent
    if not image_dir.is_dir():
        raise InstasegError("image folder not found", file=image_dir)
    regions_by_file: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for key, entry in entries.items():
        if not isinstance(entry["filename"], str) or not entry["filename"]:
            raise InstasegError(
                f"'filename' must be a file name, got {entry['filename']!r}", file=json_file, record=f"entry {key!r}"
            )
        regions = entry.get("regions") or []
        items = regions.items() if isinstance(regions, dict) else enumerate(regions)
        regions_by_file[str(entry["filename"])] += [(f"{entry['filename']} region {k}", r) for k, r in items]
    builder = DatasetBuilder(report)
    for filename, regions in events.track(sorted(regions_by_file.items()), "reading VIA", unit="image"):
        path = io.safe_join(image_dir, filename, record=filename, file=json_file)
        if not path.is_file():
            report.skip(f"image file not found, its {len(regions)} regions skipped", file=path, count=len(regions))
            continue
        image = builder.add_image(path)
        for record, region in regions:
            _add_region(builder, image, region, class_name, json_file, record, polylines_as_polygons)
    return builder.build(image_dir)


def _add_region(
    builder: DatasetBuilder,
    image: dict,
    region: Any,
    class_name: str | None,
    json_file: Path,
    record: str,
    polylines_as_polygons: bool,
) -> None:
    report = builder.report
    if not isinstance(region, dict) or not isinstance(region.get("shape_attributes"), dict):
        raise InstasegError("region has no 'shape_attributes'", file=json_file, record=record)
    shape = region["shape_attributes"]
    try:
        points = _shape_points(shape)
        enough = points is not None and len(points) >= 3
        polygons = clip_to_image(points, image["width"], image["height"]) if points is not None and enough else None
    except (KeyError, TypeError, ValueError) as exc:
        raise InstasegError(f"malformed {shape.get('name')} shape ({exc})", file=json_file, record=record) from None
    if points is None:
        report.skip(f"{shape.get('name')!r} shape encloses no area, skipped", file=json_file, record=record)
    elif shape.get("name") == "polyline" and not (polylines_as_polygons or _is_closed(points)):
        report.skip(
            f"open polyline (ends over {CLOSED_POLYLINE_GAP:g} px apart) encloses no area, skipped; "
            "pass --polylines-as-polygons if the polylines are outlines",
            file=json_file,
            record=record,
        )
    elif polygons is None:
        report.skip("polygon with fewer than 3 points, skipped", file=json_file, record=record)
    else:
        name = _region_class(region.get("region_attributes"), report, json_file, record) or class_name or DEFAULT_CLASS
        builder.add_instance(image, polygons, name, file=json_file, record=record)


def _is_closed(points: np.ndarray) -> bool:
    """Whether a polyline ends where it starts, as one drawn round an outline does."""
    return len(points) >= 4 and math.dist(points[0], points[-1]) <= CLOSED_POLYLINE_GAP


def _shape_points(shape: dict) -> np.ndarray | None:
    kind = shape.get("name")
    if kind in ("polygon", "polyline"):
        xs, ys = shape["all_points_x"], shape["all_points_y"]
        if len(xs) != len(ys):
            raise ValueError(f"{len(xs)} x values but {len(ys)} y values")
        return np.stack([coordinates(xs), coordinates(ys)], 1)
    if kind == "rect":
        x, y, w, h = (float(shape[k]) for k in ("x", "y", "width", "height"))
        return np.asarray([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
    if kind in ("circle", "ellipse"):
        cx, cy = float(shape["cx"]), float(shape["cy"])
        rx = float(shape["r"] if kind == "circle" else shape["rx"])
        ry = float(shape["r"] if kind == "circle" else shape["ry"])
        theta = float(shape.get("theta", 0.0))
        t = np.linspace(0, 2 * math.pi, ELLIPSE_VERTICES, endpoint=False)
        dx, dy = rx * np.cos(t), ry * np.sin(t)
        return np.stack(
            [cx + dx * math.cos(theta) - dy * math.sin(theta), cy + dx * math.sin(theta) + dy * math.cos(theta)], 1
        )
    return None


def _region_class(attributes: Any, report: Report, json_file: Path, record: str) -> str | None:
    if not isinstance(attributes, dict) or not attributes:
        return None
    key = next((k for k in attributes if k.lower() in CLASS_ATTRIBUTES), None)
    if key is None and len(attributes) == 1:
        key = next(iter(attributes))
    if key is None:
        report.warn(
            f"cannot tell which of {sorted(attributes)} is the class; used the default", file=json_file, record=record
        )
        return None
    value = attributes[key]
    if isinstance(value, dict):  # a checkbox attribute: {"option": true, ...}
        chosen = [k for k, v in value.items() if v]
        value = chosen[0] if len(chosen) == 1 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return (value.strip() or None) if isinstance(value, str) else None


def write(dataset: Dataset, out: Path, *, report: Report, overwrite: bool = False, **_) -> Path:
    """Write ``OUT/via_region_data.json`` (VIA 1.x) with the images copied beside it."""
    names = output_names(dataset)
    entries = {}
    with io.atomic_path(out, overwrite) as tmp:
        tmp.mkdir()
        for image in events.track(dataset.images, "writing VIA", unit="image"):
            name = names[image["id"]]
            copy_image(dataset, image, tmp / name)
            regions: dict[str, dict] = {}
            for ann in dataset.annotations_by_image.get(image["id"], []):
                points = single_outline(dataset, image, ann, report)
                if points is None:
                    continue
                shape = {
                    "name": "polygon",
                    "all_points_x": points[:, 0].tolist(),
                    "all_points_y": points[:, 1].tolist(),
                }
                label = dataset.class_names[dataset.category_index[ann["category_id"]]]
                regions[str(len(regions))] = {"shape_attributes": shape, "region_attributes": {"class": label}}
            report.instances_written += len(regions)
            size = (tmp / name).stat().st_size
            entries[f"{name}{size}"] = {
                "fileref": "",
                "size": size,
                "filename": name,
                "base64_img_data": "",
                "file_attributes": {},
                "regions": regions,
            }
        crowd = sum(1 for ann in dataset.annotations if ann.get("iscrowd"))
        if crowd:
            report.warn(f"{crowd} crowd regions written as ordinary instances (VIA has no crowd flag)", file=out)
        io.write_json(tmp / "via_region_data.json", entries)
    return out
