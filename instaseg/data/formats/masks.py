"""Instance-id label PNGs: one per image, 0 = background, 1..N = instances.

Grey (8- or 16-bit) and palette PNGs give ids directly; in a colour PNG each colour is one
instance, with id R + 256 G + 256^2 B (black is background). In an 8-bit PNG that also holds
other ids, 255 is PASCAL VOC's void (object borders, unlabelled pixels), not an instance; see
``--ignore-value``.

Layout: ``SRC/masks/`` (or the one subfolder whose name says mask, e.g. ``PedMasks/``, or SRC itself)
with images in ``SRC/images/`` (or the one subfolder whose name says image, e.g. ``PNGImages/``, or
``--images DIR``). A mask pairs with the image of the same stem, or of its stem less a mask suffix
(``_mask``, ``_masks``, ``-mask``, ``_label``, ``_instance(s)``, ``_gt`` in any case, or ``--mask-suffix``).
Classes come from ``--classes FILE`` (or ``SRC/classes.json``): a JSON/CSV mapping of instance id -> class,
image stem -> class, or image stem -> {instance id -> class}; otherwise every instance gets
``--class NAME`` (default ``object``).

The writer paints the largest instance first, so a smaller overlapping instance stays on top; an
instance hidden entirely is reported. It writes 8-bit PNGs up to 254 instances, 16-bit above.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from instaseg.core import events, io
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
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

# What often follows the image's stem in a mask's (PNGImages/FudanPed00001.png, PedMasks/FudanPed00001_mask.png).
MASK_SUFFIXES = ("_mask", "_masks", "-mask", "_label", "_instance", "_instances", "_gt")
# PASCAL VOC's 8-bit instance PNGs mark object borders and unlabelled pixels with this value.
VOC_VOID = 255


def mask_folder(src: Path) -> Path:
    """``SRC/masks``, else the one subfolder whose name says mask (``PedMasks``), else SRC itself."""
    return _named_folder(src, "masks", lambda name: "mask" in name) or src


def image_folder(src: Path) -> Path | None:
    """``SRC/images``, else the one subfolder whose name says image (``PNGImages``), else None."""
    return _named_folder(src, "images", lambda name: ("image" in name or "img" in name) and "mask" not in name)


def _named_folder(src: Path, name: str, says: Callable[[str], bool]) -> Path | None:
    if (src / name).is_dir():
        return src / name
    found = [p for p in src.iterdir() if p.is_dir() and says(p.name.lower())] if src.is_dir() else []
    return found[0] if len(found) == 1 else None


def read(
    src: Path,
    *,
    report: Report,
    images: Path | None = None,
    class_name: str | None = None,
    classes: Path | None = None,
    mask_suffix: str | None = None,
    ignore_value: int | str | None = "auto",
    **_,
) -> Dataset:
    """Read instance-id PNGs and their images into a dataset.

    ``mask_suffix`` replaces ``MASK_SUFFIXES`` (identical stems always pair). ``ignore_value`` is the
    void value, as ``ReadOptions`` parses it: a number, None (no void) or ``"auto"`` (255 in 8-bit
    PNGs that also hold other ids).
    """
    if not src.is_dir():
        raise InstasegError("instance-id masks input must be a folder", file=src)
    void = ignore_value
    mask_dir = mask_folder(src)
    image_dir = images if images is not None else image_folder(src)
    if image_dir is None or not image_dir.is_dir():
        raise InstasegError("image folder not found (pass --images DIR)", file=image_dir or src / "images")
    if classes is None and (src / "classes.json").is_file():
        classes = src / "classes.json"
    mapping = read_class_file(classes) if classes is not None else {}
    if isinstance(mapping, list):
        raise InstasegError("expected a mapping (instance id or image -> class), not a names list", file=classes)
    if mask_dir.resolve() == image_dir.resolve():
        raise InstasegError("the masks and the images must be in different folders", file=image_dir)
    mask_files = sorted(mask_dir.glob("*.png"))
    if not mask_files:
        raise InstasegError("no instance-id PNGs found", file=mask_dir)
    image_files = _images_by_stem(image_dir)
    pairs = _pair(mask_files, image_files, MASK_SUFFIXES if mask_suffix is None else (mask_suffix,), report)
    builder = DatasetBuilder(report)
    voided: list[Path] = []
    for stem, image_file in events.track(sorted(image_files.items()), "reading masks", unit="image"):
        image = builder.add_image(image_file)
        if stem not in pairs:
            report.warn("no instance-id PNG, kept as a background image", file=image_file)
            continue
        class_of = partial(_class_of, mapping, stem, class_name or DEFAULT_CLASS)
        if _add_instances(builder, image, pairs[stem], class_of, void) and void == "auto":
            voided.append(pairs[stem])
    if voided:
        report.warn(
            f"{VOC_VOID} read as void (PASCAL VOC), not as an instance, in {len(voided)} 8-bit masks; "
            "pass --ignore-value none if it is an instance",
            file=voided[0],
        )
    return builder.build(image_dir)


def _images_by_stem(image_dir: Path) -> dict[str, Path]:
    image_files: dict[str, Path] = {}
    for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in io.IMAGE_SUFFIXES):
        if path.stem in image_files:
            raise InstasegError(f"two images share the stem {path.stem!r}; masks are matched by stem", file=path)
        image_files[path.stem] = path
    return image_files


def _add_instances(
    builder: DatasetBuilder, image: dict, mask_file: Path, class_of: Callable[[int], str], void: int | str | None
) -> bool:
    """Add every instance of one mask PNG to ``image``; True when a void value was left out."""
    labels = read_mask_png(mask_file)
    ids = np.unique(labels[labels > 0])
    void = _voc_void(labels, ids) if void == "auto" else void
    voided = void is not None and void in ids
    ids = ids[ids != void] if voided else ids
    if labels.shape != (image["height"], image["width"]):
        builder.report.skip(
            f"mask is {labels.shape[1]}x{labels.shape[0]}, image {image['width']}x{image['height']}; all skipped",
            file=mask_file,
            count=len(ids),
        )
        return voided
    for instance_id in ids:
        builder.add_instance(
            image,
            mask_ops.encode(labels == instance_id),
            class_of(int(instance_id)),
            file=mask_file,
            record=f"instance {instance_id}",
        )
    return voided


def _voc_void(labels: np.ndarray, ids: np.ndarray) -> int | None:
    """255 when an 8-bit mask holds it beside other ids, unless all of 1..254 are there too (255 instances)."""
    if labels.dtype == np.uint8 and len(ids) > 1 and ids[-1] == VOC_VOID and len(ids) < VOC_VOID:
        return VOC_VOID
    return None


def _pair(
    mask_files: list[Path], image_files: dict[str, Path], suffixes: tuple[str, ...], report: Report
) -> dict[str, Path]:
    """Image stem -> its mask; a mask matching no image is reported, two masks for one image are refused."""
    pairs: dict[str, Path] = {}
    for mask_file in mask_files:
        stem = _image_stem(mask_file.stem, image_files, suffixes)
        if stem is None:
            report.skip(_unpaired_message(suffixes), file=mask_file)
        elif stem in pairs:
            raise InstasegError(
                f"a second mask for image {image_files[stem].name} (after {pairs[stem].name})", file=mask_file
            )
        else:
            pairs[stem] = mask_file
    return pairs


def _image_stem(mask_stem: str, image_stems: dict[str, Path], suffixes: tuple[str, ...]) -> str | None:
    """The stem of the image a mask belongs to: its own, or its own less one of ``suffixes`` (any case)."""
    if mask_stem in image_stems:
        return mask_stem
    for suffix in suffixes:
        stem = mask_stem[: -len(suffix)]
        if suffix and mask_stem.lower().endswith(suffix.lower()) and stem in image_stems:
            return stem
    return None


def _unpaired_message(suffixes: tuple[str, ...]) -> str:
    if suffixes == MASK_SUFFIXES:
        return "no image with this stem, or this stem less a mask suffix (_mask, _gt, ...; see --mask-suffix), skipped"
    return f"no image with this stem, or this stem less {suffixes[0]!r} (--mask-suffix), skipped"


def _class_of(mapping: dict[str, Any], stem: str, default: str, instance_id: int) -> str:
    per_image = mapping.get(stem)
    if isinstance(per_image, dict):
        return per_image.get(str(instance_id)) or default
    if isinstance(per_image, str):
        return per_image
    value = mapping.get(str(instance_id))
    return value if isinstance(value, str) else default


def write(dataset: Dataset, out: Path, *, report: Report, overwrite: bool = False, **_) -> Path:
    """Write ``OUT/images/``, ``OUT/masks/<stem>.png`` and ``OUT/classes.json`` (stem -> {id: class})."""
    names = output_names(dataset)
    classes: dict[str, dict[str, str]] = {}
    with io.atomic_path(out, overwrite) as tmp:
        (tmp / "masks").mkdir(parents=True)
        for image in events.track(dataset.images, "writing masks", unit="image"):
            name = names[image["id"]]
            copy_image(dataset, image, tmp / "images" / name)
            labels, visible = paint(dataset, image, report)
            stem = Path(name).stem
            classes[stem] = {}
            for ann, instance_id in visible:
                classes[stem][str(instance_id)] = dataset.class_names[dataset.category_index[ann["category_id"]]]
            report.instances_written += len(visible)
            # 255 would read back as void in an 8-bit PNG
            dtype = np.uint8 if labels.max(initial=0) < VOC_VOID else np.uint16
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
