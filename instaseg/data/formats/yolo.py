"""YOLO segmentation: ``images/<split>/*.jpg`` + ``labels/<split>/*.txt``, names in ``data.yaml``.

Each label line is ``<class> x1 y1 ... xn yn`` with coordinates normalised by the image size. As in
Ultralytics, an image's label file is found by replacing the last ``images`` folder of its path by
``labels`` and the suffix by ``.txt`` (so both ``images/train/`` and ``train/images/`` layouts work).
A line of exactly four numbers is a box (``cx cy w h``) and is read as a rectangle.

YOLO has one polygon per line, so a multi-part instance is written as one polygon whose parts are
joined by zero-width bridges (each bridge is walked there and back, so it adds no pixels): the
instance count stays exact. Hole outlines are joined in too; the even-odd fill (pycocotools,
OpenCV) leaves them empty, so masks come back exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml

from instaseg.core import events, io
from instaseg.core.errors import InstasegError
from instaseg.core.geometry import clip_to_image
from instaseg.data.dataset import Dataset
from instaseg.data.formats._common import (
    DatasetBuilder,
    Report,
    copy_image,
    names_from_mapping,
    output_names,
    read_class_file,
    read_text,
    single_outline,
)


def label_path(image: Path) -> Path | None:
    """The label file an image's labels live in, or None when no ``images`` folder is in its path."""
    parts = list(image.parts)
    if "images" not in parts[:-1]:
        return None
    index = len(parts) - 2 - parts[:-1][::-1].index("images")
    parts[index] = "labels"
    return Path(*parts).with_suffix(".txt")


def read(src: Path, *, report: Report, classes: Path | None = None, **_) -> Dataset:
    """Read a YOLO segmentation dataset: SRC is its root, its data.yaml, or one images folder (``images/val``)."""
    if src.is_file() and src.suffix.lower() not in (".yaml", ".yml"):
        raise InstasegError("YOLO input must be the dataset folder, an images folder or the data.yaml", file=src)
    root = src.parent if src.is_file() else src
    # the dataset root holds images/ and labels/; SRC may be images/ itself or one split inside it
    base = root.parent if root.name == "images" else root.parent.parent if root.parent.name == "images" else root
    yaml_file = (
        src if src.is_file() else next((p for p in (base / "data.yaml", base / "dataset.yaml") if p.is_file()), None)
    )
    names = _names(classes, yaml_file)
    image_files = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in io.IMAGE_SUFFIXES and label_path(p.relative_to(base))
    )
    if not image_files:
        raise InstasegError("no images found under an 'images' folder", file=root)
    labelled = set()
    parsed = []
    for image_file in events.track(image_files, "reading YOLO labels", unit="image"):
        relative = label_path(image_file.relative_to(base))
        assert relative is not None  # image_files holds only images under an images folder
        label_file = base / relative
        if label_file.is_file():
            labelled.add(label_file)
            lines = _parse(label_file, names)
            _warn_unnormalised(lines, label_file, report)
            parsed.append((image_file, label_file, lines))
        else:
            report.warn("no label file, kept as a background image", file=image_file)
            parsed.append((image_file, label_file, []))
    split_labels = label_path((root / "-").relative_to(base)) if root != base else None
    labels_root = base / split_labels.parent if split_labels is not None else base
    for label_file in sorted(labels_root.rglob("*.txt")):
        if "labels" in label_file.relative_to(base).parts[:-1] and label_file not in labelled:
            report.skip("label file without an image, skipped", file=label_file)
    if names is None:
        top = max((cls for *_, lines in parsed for cls, _, _ in lines), default=-1)
        names = [f"class_{k}" for k in range(top + 1)]
    builder = DatasetBuilder(report, names)
    for image_file, label_file, lines in parsed:
        image = builder.add_image(image_file)
        for class_id, coords, number in lines:
            _add_line(builder, image, names[class_id], coords, label_file, f"line {number}")
    return builder.build(root)


def _add_line(
    builder: DatasetBuilder, image: dict, name: str, coords: list[float], label_file: Path, record: str
) -> None:
    if len(coords) == 4:
        cx, cy, w, h = coords
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        coords = [x1, y1, x2, y1, x2, y2, x1, y2]
    width, height = image["width"], image["height"]
    polygons = clip_to_image(np.asarray(coords).reshape(-1, 2) * (width, height), width, height)
    if polygons:
        builder.add_instance(image, polygons, name, file=label_file, record=record)
    else:
        builder.report.skip(
            "polygon entirely outside the image, skipped; YOLO coordinates are fractions of the image size: "
            "were these written in pixels?",
            file=label_file,
            record=record,
        )


def _names(classes: Path | None, yaml_file: Path | None) -> list[str] | None:
    """Class names from ``--classes``, else the dataset's YAML, else None (then names are class_<k>)."""
    source = classes if classes is not None else yaml_file
    return names_from_mapping(read_class_file(source), source) if source is not None else None


def _parse(label_file: Path, names: list[str] | None) -> list[tuple[int, list[float], int]]:
    lines = []
    for number, line in enumerate(read_text(label_file).splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        record = f"line {number}"
        try:
            class_value = float(tokens[0])
            coords = [float(t) for t in tokens[1:]]
        except ValueError:
            raise InstasegError("expected numbers: <class> x1 y1 x2 y2 ...", file=label_file, record=record) from None
        if not all(math.isfinite(v) for v in (class_value, *coords)):
            raise InstasegError("values must be finite numbers (found nan or inf)", file=label_file, record=record)
        if class_value != int(class_value) or class_value < 0:
            raise InstasegError(f"class id {tokens[0]} is not a non-negative integer", file=label_file, record=record)
        class_id = int(class_value)
        if names is not None and class_id >= len(names):
            raise InstasegError(
                f"class id {class_id} but only {len(names)} class names are known", file=label_file, record=record
            )
        if len(coords) % 2:
            raise InstasegError(f"odd number of coordinates ({len(coords)})", file=label_file, record=record)
        if len(coords) < 6 and len(coords) != 4:
            raise InstasegError("a polygon needs at least 3 points", file=label_file, record=record)
        lines.append((class_id, coords, number))
    return lines


def _warn_unnormalised(lines: list[tuple[int, list[float], int]], label_file: Path, report: Report) -> None:
    """One warning per file with coordinates outside [0, 1], which are clipped to the image when read."""
    outside = next(((number, v) for _, coords, number in lines for v in coords if not 0 <= v <= 1), None)
    if outside is not None:
        report.warn(
            f"coordinates outside [0, 1] (first: {outside[1]:g} on line {outside[0]}), clipped to the image; "
            "YOLO coordinates are fractions of the image width and height: were these written in pixels?",
            file=label_file,
        )


def write(dataset: Dataset, out: Path, *, report: Report, overwrite: bool = False, split: str = "train", **_) -> Path:
    """Write ``OUT/images/<split>/``, ``OUT/labels/<split>/`` and ``OUT/data.yaml``, copying the images."""
    names = output_names(dataset)
    class_index = dataset.category_index
    with io.atomic_path(out, overwrite) as tmp:
        for image in events.track(dataset.images, "writing YOLO", unit="image"):
            name = names[image["id"]]
            copy_image(dataset, image, tmp / "images" / split / name)
            lines = []
            for ann in dataset.annotations_by_image.get(image["id"], []):
                points = single_outline(dataset, image, ann, report)
                if points is None:
                    continue
                points = points / (image["width"], image["height"])
                coords = " ".join(f"{v:.6f}" for v in points.clip(0, 1).reshape(-1))
                lines.append(f"{class_index[ann['category_id']]} {coords}\n")
                report.instances_written += 1
            label_file = tmp / "labels" / split / Path(name).with_suffix(".txt")
            label_file.parent.mkdir(parents=True, exist_ok=True)
            label_file.write_text("".join(lines), encoding="utf-8")
        crowd = sum(1 for ann in dataset.annotations if ann.get("iscrowd"))
        if crowd:
            report.warn(f"{crowd} crowd regions written as ordinary instances (YOLO has no crowd flag)", file=out)
        data = {"path": ".", split: f"images/{split}", "names": dict(enumerate(dataset.class_names))}
        (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out
