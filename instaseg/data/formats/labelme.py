"""LabelMe: one JSON per image with ``shapes`` (label = class).

Polygons, rectangles, circles and masks (LabelMe 5.3+) are read; lines and points enclose no area
and are reported. Shapes sharing a ``group_id`` and label form one instance, which is how a
multi-part instance is written back. A shape flag ``iscrowd`` carries COCO's crowd marker.
Following labelme's ``labels.txt`` convention, ``__ignore__`` and background (``_background_``)
shapes are dropped and are never classes. When the image file is missing, the size of the image
embedded in ``imageData`` is used. The writer copies each image beside its JSON, as LabelMe expects.
"""

from __future__ import annotations

import base64
import io as bytes_io
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from instaseg.core import events, io
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.core.geometry import clip_to_image
from instaseg.data.dataset import Dataset
from instaseg.data.formats._common import (
    DatasetBuilder,
    Report,
    coordinates,
    copy_image,
    instance_polygons,
    names_from_mapping,
    output_names,
    read_class_file,
)

LABELME_VERSION = "5.5.0"
CIRCLE_VERTICES = 64
# labelme's labels.txt convention: class -1 marks regions to ignore and class 0 is the background.
NOT_CLASSES = ("__ignore__", "_background_", "__background__")


def is_labelme(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("shapes"), list) and "imagePath" in data


def read(src: Path, *, report: Report, images: Path | None = None, classes: Path | None = None, **_) -> Dataset:
    """Read one LabelMe JSON or every LabelMe JSON under a folder.

    ``classes`` (labelme's ``labels.txt``, or any names file) sets the class list and order; a shape
    with a label not in it is an error. Shapes labelled ``__ignore__`` or as background are dropped.
    """
    files = [src] if src.is_file() else sorted(src.rglob("*.json"))
    names = _class_names(classes)
    builder = DatasetBuilder(report, names or ())
    found = 0
    for json_file in events.track(files, "reading LabelMe", unit="file"):
        data = io.read_json(json_file)
        if not is_labelme(data):
            if src.is_file():
                raise InstasegError("not a LabelMe file (needs 'shapes' and 'imagePath')", file=json_file)
            report.warn("not a LabelMe file, skipped", file=json_file)
            continue
        found += 1
        image = _add_image(builder, data, json_file, images)
        if image is not None:
            _add_shapes(builder, image, data["shapes"], json_file, names)
    if not found:
        raise InstasegError("no LabelMe JSON files found", file=src)
    return builder.build(src if src.is_dir() else src.parent)


def _usable_size(width: Any, height: Any) -> bool:
    return all(type(v) is int and v > 0 for v in (width, height)) and width * height <= io.MAX_IMAGE_PIXELS


def _class_names(classes: Path | None) -> list[str] | None:
    """The class names of a ``--classes`` file, leaving out labelme's ignore and background entries."""
    if classes is None:
        return None
    names = [n for n in names_from_mapping(read_class_file(classes), classes) if n not in NOT_CLASSES]
    if not names:
        raise InstasegError(f"no class names besides {', '.join(NOT_CLASSES)}", file=classes)
    return names


def _add_image(builder: DatasetBuilder, data: dict, json_file: Path, images: Path | None) -> dict | None:
    image_path = str(data.get("imagePath") or "").replace("\\", "/")
    path = json_file.parent / image_path
    if not path.is_file() and images is not None:
        path = images / Path(image_path).name
    if path.is_file() and image_path:
        return builder.add_image(path)
    embedded = _embedded_size(data.get("imageData"), json_file)
    width, height = embedded or (data.get("imageWidth"), data.get("imageHeight"))
    if width is not None and height is not None and not _usable_size(width, height):
        raise InstasegError(f"imageWidth/imageHeight {width!r}x{height!r} is not a usable image size", file=json_file)
    if width is None or height is None:
        builder.report.skip(
            "image file not found and no imageWidth/imageHeight, skipped", file=json_file, count=len(data["shapes"])
        )
        return None
    size_from = "the embedded imageData" if embedded else "imageWidth/imageHeight"
    builder.report.warn(
        f"image file {image_path!r} not found (pass --images DIR); labels kept, image size from {size_from}",
        file=json_file,
    )
    return builder.add_image(path, width, height)


def _embedded_size(image_data: Any, json_file: Path) -> tuple[int, int] | None:
    """(width, height) of the image LabelMe embeds as base64 ``imageData``, or None when there is none.

    Only the header is decoded. labelme itself trusts this image's size over ``imageWidth``/``imageHeight``.
    """
    if not image_data:
        return None
    try:
        with Image.open(bytes_io.BytesIO(base64.b64decode(image_data, validate=True))) as img:
            return img.size
    except (TypeError, ValueError, OSError) as exc:  # binascii.Error is a ValueError, UnidentifiedImageError an OSError
        raise InstasegError(f"imageData is not a base64-encoded image ({exc})", file=json_file) from None


def _add_shapes(builder: DatasetBuilder, image: dict, shapes: list, json_file: Path, names: list[str] | None) -> None:
    groups: dict[Any, list] = {}
    dropped: Counter[str] = Counter()
    for number, shape in enumerate(shapes):
        record = f"shape {number}"
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str) or not shape["label"].strip():
            raise InstasegError("shape needs a non-empty 'label' string", file=json_file, record=record)
        if shape["label"] in NOT_CLASSES:
            dropped[shape["label"]] += 1
            continue
        if names is not None and shape["label"] not in names:
            message = f"label {shape['label']!r} is not one of the {len(names)} classes of --classes"
            raise InstasegError(message, file=json_file, record=record)
        try:
            segmentation = _segmentation(shape, image)
        except (TypeError, ValueError, IndexError, OSError) as exc:
            raise InstasegError(
                f"malformed {shape.get('shape_type')} shape ({exc})", file=json_file, record=record
            ) from None
        if segmentation is None:
            builder.report.skip(
                f"{shape.get('shape_type')!r} shape encloses no area, skipped", file=json_file, record=record
            )
            continue
        group = shape.get("group_id")
        key = (shape["label"], group) if group is not None else number
        iscrowd = bool((shape.get("flags") or {}).get("iscrowd"))
        groups.setdefault(key, [shape["label"], [], iscrowd, record])[1].append(segmentation)
    for label, count in dropped.items():
        builder.report.warn(f"{count} shapes labelled {label!r} dropped (not a class in labelme)", file=json_file)
    for label, parts, iscrowd, record in groups.values():
        if all(isinstance(p, list) for p in parts):
            segmentation = [polygon for part in parts for polygon in part]
        else:  # a mask among the parts: merge everything as pixels
            height, width = image["height"], image["width"]
            merged = np.any([mask_ops.decode(p, height, width) for p in parts], 0)
            segmentation = mask_ops.encode(merged)
        builder.add_instance(image, segmentation, label, iscrowd=iscrowd, file=json_file, record=record)


def _segmentation(shape: dict, image: dict) -> list[list[float]] | dict | None:
    """One shape as COCO polygons or RLE, or None for shapes without area."""
    kind = shape.get("shape_type") or "polygon"
    points = coordinates(shape.get("points")).reshape(-1, 2)
    width, height = image["width"], image["height"]
    if kind == "polygon":
        return clip_to_image(points, width, height) if len(points) >= 3 else None
    if kind == "rectangle":
        (x1, y1), (x2, y2) = points[:2]
        return clip_to_image(np.asarray([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]), width, height)
    if kind == "circle":
        (cx, cy), edge = points[:2]
        radius = math.dist((cx, cy), edge)
        t = np.linspace(0, 2 * math.pi, CIRCLE_VERTICES, endpoint=False)
        return clip_to_image(np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], 1), width, height)
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
        for image in events.track(dataset.images, "writing LabelMe", unit="image"):
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
