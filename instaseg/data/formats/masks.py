"""Instance-id label PNGs: one per image, 0 = background, 1..N = instances.

Grey (8- or 16-bit) and palette PNGs give ids directly; in a colour PNG each colour is one
instance, with id R + 256 G + 256^2 B (black is background).

Layout: ``SRC/masks/<stem>.png`` (or PNGs directly in SRC) with images in ``SRC/images/`` (or
``--images DIR``), matched by file stem. Classes come from ``--classes FILE`` (or ``SRC/classes.json``):
a JSON/CSV mapping of instance id -> class, image stem -> class, or image stem -> {instance id -> class};
otherwise every instance gets ``--class NAME`` (default ``object``).

The writer paints the largest instance first, so a smaller overlapping instance stays on top; an
instance hidden entirely is reported. It writes 8-bit PNGs up to 255 instances, 16-bit above.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from instaseg import io, masks as mask_ops
from instaseg.data.dataset import Dataset
from instaseg.data.formats._common import (
    DEFAULT_CLASS,
    FAST_PNG,
    DatasetBuilder,
    Report,
    copy_image,
    output_names,
    paint_order,
    read_class_file,
    read_mask_png,
)
from instaseg.errors import InstasegError


def mask_folder(src: Path) -> Path:
    return src / "masks" if (src / "masks").is_dir() else src


def read(
    src: Path,
    *,
    report: Report,
    images: Path | None = None,
    class_name: str | None = None,
    classes: Path | None = None,
    **_,
) -> Dataset:
    """Read instance-id PNGs and their images into a dataset."""
    if not src.is_dir():
        raise InstasegError("instance-id masks input must be a folder", file=src)
    mask_dir = mask_folder(src)
    image_dir = images if images is not None else src / "images"
    if not image_dir.is_dir():
        raise InstasegError("image folder not found (pass --images DIR)", file=image_dir)
    if classes is None and (src / "classes.json").is_file():
        classes = src / "classes.json"
    mapping = read_class_file(classes) if classes is not None else {}
    if isinstance(mapping, list):
        raise InstasegError("expected a mapping (instance id or image -> class), not a names list", file=classes)
    if mask_dir.resolve() == image_dir.resolve():
        raise InstasegError("the masks and the images must be in different folders", file=image_dir)
    image_files: dict[str, Path] = {}
    for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in io.IMAGE_SUFFIXES):
        if path.stem in image_files:
            raise InstasegError(f"two images share the stem {path.stem!r}; masks are matched by stem", file=path)
        image_files[path.stem] = path
    mask_files = {p.stem: p for p in sorted(mask_dir.glob("*.png"))}
    if not mask_files:
        raise InstasegError("no instance-id PNGs found", file=mask_dir)
    for stem in sorted(set(mask_files) - set(image_files)):
        report.warn("mask without an image, skipped", file=mask_files[stem])
    builder = DatasetBuilder(report)
    for stem, image_file in tqdm(sorted(image_files.items()), desc="reading masks", unit="image", disable=None):
        image = builder.add_image(image_file)
        if stem not in mask_files:
            report.warn("no instance-id PNG, kept as a background image", file=image_file)
            continue
        labels = read_mask_png(mask_files[stem])
        if labels.shape != (image["height"], image["width"]):
            report.warn(
                f"mask is {labels.shape[1]}x{labels.shape[0]}, image {image['width']}x{image['height']}; all skipped",
                file=mask_files[stem],
            )
            continue
        for instance_id in np.unique(labels[labels > 0]):
            name = _class_of(mapping, stem, int(instance_id)) or class_name or DEFAULT_CLASS
            builder.add_instance(
                image,
                mask_ops.encode(labels == instance_id),
                name,
                file=mask_files[stem],
                record=f"instance {instance_id}",
            )
    return builder.build(image_dir)


def _class_of(mapping: dict[str, Any], stem: str, instance_id: int) -> str | None:
    per_image = mapping.get(stem)
    if isinstance(per_image, dict):
        return per_image.get(str(instance_id))
    if isinstance(per_image, str):
        return per_image
    value = mapping.get(str(instance_id))
    return value if isinstance(value, str) else None


def write(dataset: Dataset, out: Path, *, report: Report, overwrite: bool = False, **_) -> Path:
    """Write ``OUT/images/``, ``OUT/masks/<stem>.png`` and ``OUT/classes.json`` (stem -> {id: class})."""
    names = output_names(dataset)
    classes: dict[str, dict[str, str]] = {}
    with io.atomic_path(out, overwrite) as tmp:
        (tmp / "masks").mkdir(parents=True)
        for image in tqdm(dataset.images, desc="writing masks", unit="image", disable=None):
            name = names[image["id"]]
            copy_image(dataset, image, tmp / "images" / name)
            labels, visible = paint(dataset, image, report)
            stem = Path(name).stem
            classes[stem] = {}
            for ann, instance_id in visible:
                classes[stem][str(instance_id)] = dataset.class_names[dataset.category_index[ann["category_id"]]]
            report.instances_written += len(visible)
            dtype = np.uint8 if labels.max(initial=0) <= 255 else np.uint16
            Image.fromarray(labels.astype(dtype)).save(tmp / "masks" / f"{stem}.png", compress_level=FAST_PNG)
        io.write_json(tmp / "classes.json", classes, indent=True)
    return out


def paint(dataset: Dataset, image: dict, report: Report) -> tuple[np.ndarray, list[tuple[dict, int]]]:
    """An (H, W) int32 map of instance ids 1..N (annotation order) and the (annotation, id) pairs still visible.

    Instances are painted largest first so smaller ones stay on top; one hidden entirely is reported.
    """
    height, width = image["height"], image["width"]
    anns = [a for a in dataset.annotations_by_image.get(image["id"], []) if a.get("segmentation")]
    rles = [mask_ops.to_rle(a["segmentation"], height, width) for a in anns]
    labels = np.zeros((height, width), np.int32)
    for k in paint_order(anns, (mask_ops.area(r) for r in rles)):
        x, y, w, h = (int(v) for v in mask_ops.bbox(rles[k]))
        box = labels[y : y + h, x : x + w]  # painting inside the instance's box only is much faster
        box[mask_ops.decode(rles[k], height, width)[y : y + h, x : x + w]] = k + 1
    pixels = np.bincount(labels.reshape(-1), minlength=len(anns) + 1)
    visible = []
    for k, ann in enumerate(anns):
        if pixels[k + 1]:
            visible.append((ann, k + 1))
        else:
            report.warn(
                "instance hidden entirely by smaller ones on top, not written",
                file=dataset.source,
                record=f"annotation id {ann['id']}",
            )
    return labels, visible
