"""COCO instances JSON: polygons, compressed or uncompressed RLE, ``iscrowd``.

Images are never copied: the written JSON keeps each ``file_name`` relative to the image folder and,
when that folder is not the JSON's own, records it in ``info.image_root`` (relative to the JSON),
which ``Dataset.load`` follows.
"""

from __future__ import annotations

import math
from pathlib import Path

from instaseg.core.errors import InstasegError
from instaseg.data.dataset import Dataset
from instaseg.data.formats._common import Report


def read(src: Path, *, report: Report, images: Path | None = None, **_) -> Dataset:
    """Read a COCO JSON, keeping every annotation that draws a mask and reporting the others."""
    if src.is_dir():
        raise InstasegError("COCO input must be the JSON file, not a folder", file=src)
    dataset = Dataset.load(src, images)
    if dataset.images and not dataset.image_root.is_dir():
        # labels alone are enough to evaluate or to convert to COCO; formats that copy images will stop
        report.warn("image folder not found (pass --images DIR)", file=dataset.image_root)
    kept = [ann for ann in dataset.annotations if _usable(ann, dataset, src, report)]
    dataset.annotations = kept
    report.images = len(dataset.images)
    report.instances_read = len(kept)
    return dataset


def _usable(ann: dict, dataset: Dataset, src: Path, report: Report) -> bool:
    record = f"annotation id {ann['id']}"
    if ann["image_id"] not in dataset.image_by_id:
        report.skip(f"image id {ann['image_id']} is not in 'images', skipped", file=src, record=record)
        return False
    if ann["category_id"] not in dataset.category_index:
        report.skip(f"category id {ann['category_id']} is not in 'categories', skipped", file=src, record=record)
        return False
    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list) and segmentation:
        for polygon in segmentation:
            # type(), not isinstance(): JSON's true and false are not coordinates.
            if not isinstance(polygon, list) or not all(type(v) in (int, float) and math.isfinite(v) for v in polygon):
                raise InstasegError("polygon is not a list of numbers", file=src, record=record)
            if len(polygon) % 2:
                raise InstasegError(
                    f"polygon has an odd number of coordinates ({len(polygon)})", file=src, record=record
                )
        if all(len(p) < 6 for p in segmentation):
            report.skip("no polygon with 3 or more points, skipped", file=src, record=record)
            return False
        return True
    if isinstance(segmentation, dict):
        return True  # Dataset.load has refused malformed RLE and RLE of another size
    report.skip("no segmentation, skipped", file=src, record=record)
    return False


def write(dataset: Dataset, out: Path, *, report: Report, overwrite: bool = False, **_) -> Path:
    """Write the dataset as one COCO JSON; the images stay where they are (``Dataset.save``)."""
    if out.suffix.lower() != ".json":
        raise InstasegError("COCO output must be a .json file", file=out)
    dataset.save(out, overwrite=overwrite, record_image_root=True)
    report.instances_written = len(dataset.annotations)
    return out
