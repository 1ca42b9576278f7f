"""LabelMe: one JSON per image with ``shapes`` (label = class).

Polygons, rectangles, circles and masks (LabelMe 5.3+) are read; lines and points enclose no area
and are reported. Shapes sharing a ``group_id`` and label form one instance, which is how a
multi-part instance is written back. A shape flag ``iscrowd`` carries COCO's crowd marker.
The writer copies each image beside its JSON, as LabelMe expects.
"""

from __future__ import annotations

import base64
import io as bytes_io
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from instaseg import io, masks as mask_ops
from instaseg.data.dataset import Dataset
from instaseg.data.formats._common import (
    DatasetBuilder,
    Report,
    clip_polygon,
    copy_image,
    instance_polygons,
    output_names,
)
from instaseg.errors import InstasegError

LABELME_VERSION = "5.5.0"
CIRCLE_VERTICES = 64


def is_labelme(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("shapes"), list) and "imagePath" in data


def read(src: Path, *, report: Report, images: Path | None = None, **_) -> Dataset:
    """Read one LabelMe JSON or every LabelMe JSON under a folder."""
    files = [src] if src.is_file() else sorted(src.rglob("*.json"))
    builder = DatasetBuilder(report)
    found = 0
    for json_file in tqdm(files, desc="reading LabelMe", unit="file", disable=None):
        data = io.read_json(json_file)
        if not is_labelme(data):
            if src.is_file():
                raise InstasegError("not a LabelMe file (needs 'shapes' and 'imagePath')", file=json_file)
            report.warn("not a LabelMe file, skipped", file=json_file)
            continue
        found += 1
        image = _add_image(builder, data, json_file, images)
        if image is not None:
            _add_shapes(builder, image, data["shapes"], json_file)
    if not found:
        raise InstasegError("no LabelMe JSON files found", file=src)
    return builder.build(src if src.is_dir() else src.parent)


def _add_image(builder: DatasetBuilder, data: dict, json_file: Path, images: Path | None) -> dict | None:
    image_path = str(data.get("imagePath") or "").replace("\\", "/")
    path = json_file.parent / image_path
    if not path.is_file() and images is not None:
        path = images / Path(image_path).name
    if path.is_file() and image_path:
        return builder.add_image(path)
    width, height = data.get("imageWidth"), data.get("imageHeight")
    if not isinstance(width, int) or not isinstance(height, int):
        builder.report.warn("image file not found and no imageWidth/imageHeight, skipped", file=json_file)
        return None
    builder.report.warn(f"image file {image_path!r} not found (pass --images DIR); labels kept", file=json_file)
    return builder.add_image(path, width, height)


def _add_shapes(builder: DatasetBuilder, image: dict, shapes: list, json_file: Path) -> None:
    groups: dict[Any, list] = {}
    for number, shape in enumerate(shapes):
        record = f"shape {number}"
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise InstasegError("shape needs a 'label' string", file=json_file, record=record)
        try:
            segmentation = _segmentation(shape, image)
        except (TypeError, ValueError, IndexError, OSError) as exc:
            raise InstasegError(
                f"malformed {shape.get('shape_type')} shape ({exc})", file=json_file, record=record
            ) from None
        if segmentation is None:
            builder.report.warn(
                f"{shape.get('shape_type')!r} shape encloses no area, skipped", file=json_file, record=record
            )
            continue
        group = shape.get("group_id")
        key = (shape["label"], group) if group is not None else number
        iscrowd = bool((shape.get("flags") or {}).get("iscrowd"))
        groups.setdefault(key, [shape["label"], [], iscrowd, record])[1].append(segmentation)
    for label, parts, iscrowd, record in groups.values():
        if all(isinstance(p, list) for p in parts):
            segmentation = parts
        else:  # a mask among the parts: merge everything as pixels
            height, width = image["height"], image["width"]
            merged = np.any([mask_ops.decode(p if isinstance(p, dict) else [p], height, width) for p in parts], 0)
            segmentation = mask_ops.encode(merged)
        builder.add_instance(image, segmentation, label, iscrowd=iscrowd, file=json_file, record=record)


def _segmentation(shape: dict, image: dict) -> list[float] | dict | None:
    """One shape as a COCO polygon (a flat list) or RLE, or None for shapes without area."""
    kind = shape.get("shape_type") or "polygon"
    points = np.asarray(shape.get("points"), float).reshape(-1, 2)
    width, height = image["width"], image["height"]
    if kind == "polygon":
        return clip_polygon(points, width, height) if len(points) >= 3 else None
    if kind == "rectangle":
        (x1, y1), (x2, y2) = points[:2]
        return clip_polygon(np.asarray([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]), width, height)
    if kind == "circle":
        (cx, cy), edge = points[:2]
        radius = math.dist((cx, cy), edge)
        t = np.linspace(0, 2 * math.pi, CIRCLE_VERTICES, endpoint=False)
        return clip_polygon(np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1), width, height)
    if kind == "mask":
        crop = np.asarray(Image.open(bytes_io.BytesIO(base64.b64decode(shape["mask"]))).convert("L")) > 0
        x, y = (int(round(v)) for v in points[0])
        full = np.zeros((height, width), bool)
        h, w = full[y : y + crop.shape[0], x : x + crop.shape[1]].shape
        full[y : y + h, x : x + w] = crop[:h, :w]
        return mask_ops.encode(full)
    return None


def write(dataset: Dataset, out: Path, *, report: Report, overwrite: bool = False, **_) -> Path:
    """Write ``OUT/<image>`` + ``OUT/<stem>.json`` per image (polygons; multi-part instances grouped)."""
    names = output_names(dataset)
    with io.atomic_path(out, overwrite) as tmp:
        tmp.mkdir()
        for image in tqdm(dataset.images, desc="writing LabelMe", unit="image", disable=None):
            name = names[image["id"]]
            copy_image(dataset, image, tmp / name)
            shapes = []
            for ann in dataset.annotations_by_image.get(image["id"], []):
                polygons = instance_polygons(ann, image)
                if not polygons:
                    report.warn(
                        "no outline to write, skipped", file=dataset.source, record=f"annotation id {ann['id']}"
                    )
                    continue
                group_id = ann["id"] if len(polygons) > 1 else None
                flags = {"iscrowd": True} if ann.get("iscrowd") else {}
                label = dataset.class_names[dataset.category_index[ann["category_id"]]]
                for polygon in polygons:
                    points = np.asarray(polygon).reshape(-1, 2).tolist()
                    shapes.append(
                        {
                            "label": label,
                            "points": points,
                            "group_id": group_id,
                            "description": "",
                            "shape_type": "polygon",
                            "flags": flags,
                        }
                    )
                report.instances_written += 1
            document = {
                "version": LABELME_VERSION,
                "flags": {},
                "shapes": shapes,
                "imagePath": name,
                "imageData": None,
                "imageHeight": image["height"],
                "imageWidth": image["width"],
            }
            (tmp / Path(name).with_suffix(".json")).write_bytes(io.dumps_json(document, indent=True))
    return out
