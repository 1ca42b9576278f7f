"""One binary PNG per instance, the Kaggle DSB2018 layout: ``<id>/images/<id>.png`` + ``<id>/masks/*.png``.

SRC is the folder holding the ``<id>`` folders (or its parent, e.g. ``dsb2018_nuclei`` with
``stage1_train/`` inside). Masks are kept as RLE, losslessly (holes and multiple parts included).
Every instance gets ``--class NAME`` (default ``object``): the layout carries no class.
The writer mirrors the layout, one PNG (0/255) per instance named by its zero-padded annotation id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from instaseg.core import events, io
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.data.dataset import Dataset
from instaseg.data.formats._common import DEFAULT_CLASS, DatasetBuilder, Report, copy_image, output_names, read_mask_png


def sample_folders(src: Path) -> list[Path]:
    """The ``<id>`` folders (holding ``images/`` and ``masks/``) in SRC or one level below."""
    for pattern in ("*/masks", "*/*/masks"):
        folders = sorted(p.parent for p in src.glob(pattern) if p.is_dir() and (p.parent / "images").is_dir())
        if folders:
            return folders
    return []


def read(src: Path, *, report: Report, class_name: str | None = None, **_) -> Dataset:
    """Read every ``<id>/images`` + ``<id>/masks`` folder under SRC."""
    folders = sample_folders(src) if src.is_dir() else []
    if not folders:
        raise InstasegError("no <id>/images/ + <id>/masks/ folders found", file=src)
    name = class_name or DEFAULT_CLASS
    builder = DatasetBuilder(report, [name])
    for folder in events.track(folders, "reading mask files", unit="image"):
        candidates = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in io.IMAGE_SUFFIXES)
        preferred = [p for p in candidates if p.stem == folder.name]
        mask_files = sorted((folder / "masks").glob("*.png"))
        if len(preferred) != 1 and len(candidates) != 1:
            report.skip(
                f"expected one image in images/, found {len(candidates)}; folder skipped",
                file=folder,
                count=len(mask_files),
            )
            continue
        image = builder.add_image((preferred or candidates)[0])
        for mask_file in mask_files:
            mask = read_mask_png(mask_file) > 0
            if mask.shape != (image["height"], image["width"]):
                report.skip(
                    f"mask is {mask.shape[1]}x{mask.shape[0]}, image {image['width']}x{image['height']}; skipped",
                    file=mask_file,
                )
                continue
            builder.add_instance(image, mask_ops.encode(mask), name, file=mask_file)
    return builder.build(src)


def write(dataset: Dataset, out: Path, *, report: Report, overwrite: bool = False, **_) -> Path:
    """Write ``OUT/<stem>/images/<image>`` + ``OUT/<stem>/masks/<annotation id>.png`` (classes are not kept)."""
    if len(dataset.categories) > 1:
        report.warn(f"{len(dataset.categories)} classes merged: this layout has no class labels", file=out)
    names = output_names(dataset)
    # zero-padded ids keep the annotation order when the files are read back in name order
    digits = len(str(max((ann["id"] for ann in dataset.annotations), default=0)))
    with io.atomic_path(out, overwrite) as tmp:
        tmp.mkdir()
        for image in events.track(dataset.images, "writing mask files", unit="image"):
            name = names[image["id"]]
            folder = tmp / Path(name).stem
            copy_image(dataset, image, folder / "images" / name)
            (folder / "masks").mkdir(parents=True)
            for ann in dataset.annotations_by_image.get(image["id"], []):
                mask = mask_ops.decode(ann["segmentation"], image["height"], image["width"])
                Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / f"{ann['id']:0{digits}d}.png")
                report.instances_written += 1
    return out
