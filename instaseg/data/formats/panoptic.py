"""COCO panoptic (output only): ``OUT/panoptic/<stem>.png`` + ``OUT/panoptic.json``.

Each PNG encodes segment ids as colours (id = R + 256 * G + 256^2 * B, 0 = unlabelled); the JSON
lists per image the ``segments_info`` (id, category_id, area, bbox, iscrowd) and the categories,
all things (``isthing: 1``). Overlaps are resolved as in every single-layer output: largest painted
first, smaller on top; ``area`` and ``bbox`` describe the pixels that remain visible.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from instaseg import io, masks as mask_ops
from instaseg.data.dataset import Dataset
from instaseg.data.formats._common import Report, output_names
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
        for image in tqdm(dataset.images, desc="writing panoptic", unit="image", disable=None):
            labels, visible = paint(dataset, image, report)
            lookup = np.zeros(labels.max(initial=0) + 1, np.int64)
            segments = []
            for ann, instance_id in visible:
                lookup[instance_id] = segment_id(instance_id)
                rle = mask_ops.encode(labels == instance_id)
                segments.append(
                    {
                        "id": segment_id(instance_id),
                        "category_id": ann["category_id"],
                        "area": mask_ops.area(rle),
                        "bbox": mask_ops.bbox(rle),
                        "iscrowd": int(bool(ann.get("iscrowd", 0))),
                    }
                )
            ids = lookup[labels]
            rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
            png_name = f"{Path(names[image['id']]).stem}.png"
            io.write_image(tmp / "panoptic" / png_name, rgb)
            annotations.append({"image_id": image["id"], "file_name": png_name, "segments_info": segments})
            report.instances_written += len(segments)
        categories = [
            {"id": cat["id"], "name": cat["name"], "supercategory": cat.get("supercategory") or cat["name"], "isthing": 1, "color": colours[k + 1].tolist()}
            for k, cat in enumerate(dataset.categories)
        ]
        images = [{k: image[k] for k in ("id", "file_name", "width", "height")} for image in dataset.images]
        info = {"image_root": Path(os.path.relpath(dataset.image_root.absolute(), out.absolute())).as_posix()}
        coco = {"info": info, "images": images, "annotations": annotations, "categories": categories}
        io.write_json(tmp / "panoptic.json", coco)
    return out
