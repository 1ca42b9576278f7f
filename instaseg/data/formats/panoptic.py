"""COCO panoptic (output only): ``OUT/panoptic/<stem>.png`` + ``OUT/panoptic.json``.

Each PNG encodes segment ids as colours (id = R + 256 * G + 256^2 * B, 0 = unlabelled); the JSON
lists per image the ``segments_info`` (id, category_id, area, bbox, iscrowd) and the categories,
all things (``isthing: 1``). Overlaps are resolved as in every single-layer output: largest painted
first, smaller on top; ``area`` and ``bbox`` describe the pixels that remain visible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from instaseg.core import events, io
from instaseg.core import masks as mask_ops
from instaseg.data.dataset import Dataset
from instaseg.data.formats._common import FAST_PNG, Report, output_names
from instaseg.data.formats.masks import paint
from instaseg.data.formats.semantic import palette

# Segment k gets id (k * this) mod 2^24: odd, so ids are distinct and non-zero for k < 2^24, and
# neighbouring segments get very different colours in the PNG.
ID_STRIDE = 2654435761


def segment_id(instance_id: int) -> int:
    return instance_id * ID_STRIDE % (1 << 24)


def write(dataset: Dataset, out: Path, *, report: Report, overwrite: bool = False, **_) -> Path:
    """Write the panoptic PNGs and JSON; the images stay where they are (``info.image_root``)."""
    names = output_names(dataset)
    colours = palette(len(dataset.categories) + 1)
    annotations = []
    with io.atomic_path(out, overwrite) as tmp:
        (tmp / "panoptic").mkdir(parents=True)
        for image in events.track(dataset.images, "writing panoptic", unit="image"):
            labels, visible = paint(dataset, image, report)
            lookup = np.zeros(labels.max(initial=0) + 1, np.uint32)
            segments = []
            for ann, instance_id in visible:
                lookup[instance_id] = segment_id(instance_id)
                area, bbox = _visible_extent(labels, instance_id, ann, image)
                segments.append(
                    {
                        "id": segment_id(instance_id),
                        "category_id": ann["category_id"],
                        "area": area,
                        "bbox": bbox,
                        "iscrowd": int(bool(ann.get("iscrowd", 0))),
                    }
                )
            ids = lookup[labels]
            # id = R + 256 G + 256^2 B: the low three bytes of the little-endian id
            rgb = np.ascontiguousarray(ids.astype("<u4").view(np.uint8).reshape(*ids.shape, 4)[..., :3])
            png_name = f"{Path(names[image['id']]).stem}.png"
            Image.fromarray(rgb).save(tmp / "panoptic" / png_name, compress_level=FAST_PNG)
            annotations.append({"image_id": image["id"], "file_name": png_name, "segments_info": segments})
            report.instances_written += len(segments)
        categories = [
            {
                "id": cat["id"],
                "name": cat["name"],
                "supercategory": cat.get("supercategory") or cat["name"],
                "isthing": 1,
                "color": colours[k + 1].tolist(),
            }
            for k, cat in enumerate(dataset.categories)
        ]
        images = [{k: image[k] for k in ("id", "file_name", "width", "height")} for image in dataset.images]
        info = {"image_root": dataset.image_root_relative_to(out)}
        coco = {"info": info, "images": images, "annotations": annotations, "categories": categories}
        io.write_json(tmp / "panoptic.json", coco)
    return out


def _visible_extent(labels: np.ndarray, instance_id: int, ann: dict, image: dict) -> tuple[int, list[float]]:
    """Pixel count and COCO box [x, y, w, h] of what is left of an instance after painting.

    Only the instance's own box is searched: the visible part lies inside it.
    """
    x, y, w, h = (int(v) for v in mask_ops.bbox(mask_ops.to_rle(ann["segmentation"], image["height"], image["width"])))
    visible = labels[y : y + h, x : x + w] == instance_id
    rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
    box = [x + cols[0], y + rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
    return int(visible.sum()), [float(v) for v in box]
