"""Run a trained model over image files and write a predictions folder.

The folder (``instaseg predict MODEL IMAGES --out DIR``) holds:

- ``predictions.json``: a COCO dict (``images``, ``categories`` with ids ``k + 1``, ``annotations``
  with RLE ``segmentation``, ``bbox``, ``area`` and ``score``), loadable as a ``Dataset``;
- ``results.json``: the plain COCO results list for the same image ids (what pycocotools' ``loadRes`` reads);
- ``counts.csv`` and ``counts.json``: instances per class, per image and in total;
- ``overlays/*.png``: each image with its instances drawn on it (unless ``overlays=False``).

The whole folder is built in a temporary sibling and renamed into place at the end, so an
interrupted run never leaves a half-written folder where a finished one is expected.

An unreadable image among many does not stop the run: it is skipped, reported in the returned
summary, ``counts.json`` and as a warning by the CLI, because one corrupt file should not cost the
predictions for the thousands of good ones. If no image at all can be read, the run fails.
"""

from __future__ import annotations

import csv
import io as text_io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from instaseg.core import events, io
from instaseg.core.errors import InstasegError
from instaseg.core.structures import Instances


class Predictor(Protocol):
    """What ``predict_images`` needs from a model (``instaseg.load(path)`` returns one)."""

    @property
    def class_names(self) -> Sequence[str]:
        """The names the model's class ids index."""

    @property
    def max_detections(self) -> int:
        """The model's own cap on the instances per image."""

    def predict(
        self,
        image: np.ndarray,
        score_threshold: float = 0.5,
        classes: Sequence[str] | None = None,
        max_detections: int | None = None,
    ) -> Instances: ...


def check_classes(classes: Sequence[str] | None, known: Sequence[str]) -> list[str] | None:
    """Return ``classes`` as a list, refusing names the model does not know (listing the ones it does)."""
    if classes is None:
        return None
    if not classes:
        raise InstasegError(f"no class names given; the model knows: {', '.join(known)}")
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise InstasegError(
            f"unknown class{'es' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"the model knows: {', '.join(known)}"
        )
    return list(classes)


def predict_images(
    predictor: Predictor,
    images: Sequence[str | Path],
    *,
    score_threshold: float = 0.5,
    classes: Sequence[str] | None = None,
    max_detections: int | None = None,
    out: str | Path,
    overlays: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Predict every image and write the predictions folder ``out``.

    Args:
        predictor: a loaded model (``instaseg.load(path)``).
        images: image files, folders (searched recursively) or glob patterns.
        score_threshold: instances scoring below this are dropped.
        classes: keep only these class names (all classes when None); unknown names are refused.
        max_detections: most instances per image (the model's own cap, usually 100, when None).
        out: the predictions folder to create.
        overlays: also draw each image's instances into ``out/overlays``.
        overwrite: replace ``out`` if it exists (otherwise an existing ``out`` is an error); an
            ``out`` that is, contains or lies inside one of ``images`` is refused all the same.

    Returns:
        A summary: ``out``, ``images`` (number predicted), ``skipped`` (list of
        ``{"file", "reason"}`` for unreadable images), ``capped`` (the images whose instance count
        reached the cap, so that may hold more), ``max_detections`` (the cap), ``classes`` (the classes counted),
        ``counts`` (instances per class over all images) and ``total``.
    """
    io.guard_outputs([out], images)
    class_names = list(predictor.class_names)
    classes = check_classes(classes, class_names)
    counted = classes if classes is not None else class_names
    paths = io.list_images(list(images))
    io.check_output(out, overwrite)
    names = _relative_names(paths)
    overlay_names = _unique_stems(names)
    category_ids = [k + 1 for k in range(len(class_names))]
    cap = max_detections if max_detections is not None else predictor.max_detections

    coco_images: list[dict] = []
    annotations: list[dict] = []
    per_image: list[dict] = []
    skipped: list[dict] = []
    capped: list[str] = []
    with io.atomic_path(out, overwrite) as folder:
        folder.mkdir()
        if overlays:
            (folder / "overlays").mkdir()
        for path, name, overlay_name in events.track(
            list(zip(paths, names, overlay_names, strict=True)), "predict", unit="img"
        ):
            try:
                pixels = io.read_image(path)
            except InstasegError as exc:
                skipped.append({"file": str(path), "reason": str(exc)})
                continue
            instances = predictor.predict(pixels, score_threshold=score_threshold, classes=classes, max_detections=cap)
            if len(instances) >= cap:
                capped.append(name)
            image_id = len(coco_images) + 1
            height, width = pixels.shape[:2]
            coco_images.append({"id": image_id, "file_name": name, "width": width, "height": height})
            for record in instances.to_coco(image_id, category_ids):
                annotations.append({"id": len(annotations) + 1, **record, "iscrowd": 0})
            counts = instances.counts()
            per_image.append({"file_name": name, "counts": {c: counts[c] for c in counted}})
            if overlays:
                from instaseg.viz import draw_instances, enlarge  # matplotlib is only needed when drawing

                # Small images are enlarged first so that the labels do not hide the objects.
                io.write_image(folder / "overlays" / overlay_name, draw_instances(*enlarge(pixels, instances)))
        if not coco_images:
            raise InstasegError(f"none of the {len(paths)} images could be read; first: {skipped[0]['reason']}")

        totals = {c: sum(row["counts"][c] for row in per_image) for c in counted}
        categories = [{"id": category_ids[k], "name": n} for k, n in enumerate(class_names)]
        io.write_json(
            folder / "predictions.json", {"images": coco_images, "categories": categories, "annotations": annotations}
        )
        results = [{k: v for k, v in ann.items() if k not in ("id", "iscrowd")} for ann in annotations]
        io.write_json(folder / "results.json", results)
        io.write_text(folder / "counts.csv", _counts_csv(per_image, totals, counted))
        counts_doc = {
            "score_threshold": score_threshold,
            "max_detections": cap,
            "classes": counted,
            "images": [{**row, "total": sum(row["counts"].values())} for row in per_image],
            "total": {"counts": totals, "total": sum(totals.values())},
            "skipped": skipped,
            "capped": capped,
        }
        io.write_json(folder / "counts.json", counts_doc, indent=True)

    return {
        "out": Path(out),
        "images": len(coco_images),
        "skipped": skipped,
        "capped": capped,
        "max_detections": cap,
        "classes": counted,
        "counts": totals,
        "total": sum(totals.values()),
    }


def _counts_csv(per_image: list[dict], totals: dict[str, int], classes: list[str]) -> str:
    buffer = text_io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", *classes, "total"])
    for row in per_image:
        values = [row["counts"][c] for c in classes]
        writer.writerow([row["file_name"], *values, sum(values)])
    writer.writerow(["TOTAL", *(totals[c] for c in classes), sum(totals.values())])
    return buffer.getvalue()


def _relative_names(paths: list[Path]) -> list[str]:
    """Each image's path relative to the deepest folder holding them all (its basename for one folder).

    Consumers match predictions to ground truth by these paths (``evaluate.match_images``), so
    images with the same name in different sub-folders stay apart.
    """
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    return [p.relative_to(root).as_posix() for p in resolved]


def _unique_stems(names: list[str]) -> list[str]:
    """PNG file names for the overlays: the image's stem, with a counter added where names repeat."""
    used: set[str] = set()
    result = []
    for name in names:
        stem, candidate, n = Path(name).stem, f"{Path(name).stem}.png", 1
        while candidate in used:
            n += 1
            candidate = f"{stem}-{n}.png"
        used.add(candidate)
        result.append(candidate)
    return result
