"""Overlay pictures: instances drawn on their image, readable on dark and light photos alike.

Each instance gets a translucent fill, a solid outline and a label (class name, instance number
and, for predictions, the score) on a solid background of the instance's own colour, with black
or white text chosen for contrast. Colours come from a fixed palette, so instance ``k`` has the
same colour in every picture. OpenCV does the drawing: it is fast and already a dependency.
``save_overlays`` is ``instaseg show``: one picture per image of a dataset.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from instaseg.core import events, io
from instaseg.core.errors import InstasegError
from instaseg.core.structures import Instances
from instaseg.data.check import check_dataset
from instaseg.data.dataset import Dataset

# Labels stop once they cover this share of the picture: beyond it they hide what they name.
LABEL_AREA_BUDGET = 0.2
# Stepping the hue by the golden ratio keeps neighbouring instances far apart on the colour wheel.
_GOLDEN_RATIO = 0.618033988749895


def instance_color(index: int) -> tuple[int, int, int]:
    """The RGB colour of the ``index``-th instance in every picture (bright, saturated, stable)."""
    hue = (0.08 + index * _GOLDEN_RATIO) % 1.0
    # Alternate two brightness levels so hues that happen to land close still differ.
    value = 1.0 if index % 2 == 0 else 0.8
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``background`` (by perceived luminance)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    return io.as_rgb(image)


def _ascii(text: str) -> str:
    # OpenCV's Hershey fonts draw ASCII only; anything else would come out as '?' anyway.
    return text.encode("ascii", "replace").decode("ascii")


def _label_style(height: int, width: int) -> tuple[float, int, int]:
    """Font scale, text thickness and outline thickness that suit an image of this size."""
    side = min(height, width)
    scale = float(np.clip(side / 900.0, 0.35, 1.2))
    thickness = 1 if scale < 0.8 else 2
    outline = max(1, round(side / 400))
    return scale, thickness, outline


def draw_instances(
    image: np.ndarray,
    instances: Instances,
    *,
    show_scores: bool = True,
    alpha: float = 0.45,
) -> np.ndarray:
    """Draw instances on a copy of an image.

    Args:
        image: (H, W, 3) uint8 RGB pixels (grayscale (H, W) is accepted too).
        instances: the instances to draw; their masks must be (N, H, W) for this image.
        show_scores: append each instance's score to its label (use False for ground truth).
        alpha: opacity of the mask fill, 0 (outline only) to 1 (opaque).

    Returns:
        A new (H, W, 3) uint8 RGB array; ``image`` is left untouched.
    """
    canvas = _as_rgb(image).copy()
    height, width = canvas.shape[:2]
    if len(instances) and instances.masks.shape[1:] != (height, width):
        raise ValueError(f"masks are {instances.masks.shape[1:]} but the image is {(height, width)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    colors = [instance_color(k) for k in range(len(instances))]
    # Work inside each mask's own extent: crowded images (hundreds of nuclei) stay fast.
    extents = [_extent(mask) for mask in instances.masks]

    # Fills first, then outlines, then labels, so no fill ever covers an outline or a label.
    for mask, color, extent in zip(instances.masks, colors, extents, strict=True):
        if extent is None:
            continue
        top, bottom, left, right = extent
        region, inside = canvas[top:bottom, left:right], mask[top:bottom, left:right]
        blended = region[inside].astype(np.float32) * (1.0 - alpha) + np.asarray(color, np.float32) * alpha
        region[inside] = blended.round().astype(np.uint8)

    scale, text_thickness, outline = _label_style(height, width)
    for mask, color, extent in zip(instances.masks, colors, extents, strict=True):
        if extent is None:
            continue
        top, bottom, left, right = extent
        contours, _ = cv2.findContours(
            np.ascontiguousarray(mask[top:bottom, left:right], np.uint8),
            cv2.RETR_EXTERNAL,
            cv2.CHAIN_APPROX_SIMPLE,
            offset=(left, top),
        )
        cv2.drawContours(canvas, contours, -1, color, outline, cv2.LINE_AA)

    names = instances.class_names
    placed: list[tuple[int, int, int, int]] = []
    label_area = 0
    # Largest instances first: when labels run out of room, the small ones go without.
    areas = [
        0 if e is None else np.count_nonzero(m[e[0] : e[1], e[2] : e[3]])
        for m, e in zip(instances.masks, extents, strict=True)
    ]
    for k in np.argsort(-np.asarray(areas), kind="stable"):
        color, extent = colors[k], extents[k]
        if extent is None:
            continue  # nothing to point at
        if label_area > LABEL_AREA_BUDGET * height * width:
            break
        class_id = int(instances.class_ids[k])
        name = names[class_id] if class_id < len(names) else str(class_id)
        text = f"{name} #{k + 1}"
        if show_scores:
            text += f" {float(instances.scores[k]):.2f}"
        label = _draw_label(canvas, _ascii(text), extent, color, scale, text_thickness, placed)
        if label is not None:
            placed.append(label)
            label_area += (label[2] - label[0] + 1) * (label[3] - label[1] + 1)
    return canvas


def _extent(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) bounds of a mask, exclusive at the end; None when it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _draw_label(
    canvas: np.ndarray,
    text: str,
    extent: tuple[int, int, int, int],
    color: tuple[int, int, int],
    scale: float,
    thickness: int,
    taken: list[tuple[int, int, int, int]],
) -> tuple[int, int, int, int] | None:
    """A filled box of ``color`` holding ``text`` at the instance's top-left corner.

    The label goes just above the instance, else inside its top (stacked up to three deep),
    else just below it, whichever is free of the ``taken`` labels; when none is, it is left out
    (the outline and fill still show the instance) rather than hide another label. Returns the box drawn as
    (left, top, right, bottom), or None.
    """
    height, width = canvas.shape[:2]
    mask_top, mask_bottom, mask_left, _ = extent
    (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, int(round(3 * scale)))
    box_w, box_h = text_w + 2 * pad, text_h + baseline + 2 * pad
    left = int(np.clip(mask_left, 0, max(0, width - box_w)))
    for top in (mask_top - box_h, mask_top, mask_top + box_h, mask_top + 2 * box_h, mask_bottom):
        top = int(np.clip(top, 0, max(0, height - box_h)))
        right, bottom = left + box_w - 1, top + box_h - 1
        if not any(left <= t[2] and t[0] <= right and top <= t[3] and t[1] <= bottom for t in taken):
            break
    else:
        return None
    cv2.rectangle(canvas, (left, top), (right, bottom), color, cv2.FILLED)
    # A thin dark rim keeps a pale label visible on a pale background.
    cv2.rectangle(canvas, (left, top), (right, bottom), (0, 0, 0), 1)
    cv2.putText(
        canvas,
        text,
        (left + pad, top + pad + text_h),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        _text_color(color),
        thickness,
        cv2.LINE_AA,
    )
    return left, top, right, bottom


def enlarge(image: np.ndarray, instances: Instances, min_side: int = 384) -> tuple[np.ndarray, Instances]:
    """Blow a small image and its instances up by a whole factor (nearest neighbour, so pixels
    stay sharp squares) until the shorter side reaches ``min_side``; larger images are returned as is.

    Labels are drawn at a legible minimum size, so on a tiny image they would hide the objects.
    """
    height, width = image.shape[:2]
    factor = -(-min_side // max(1, min(height, width)))  # ceiling division
    if factor <= 1:
        return image, instances
    big_image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    big_masks = np.repeat(np.repeat(instances.masks, factor, axis=1), factor, axis=2)
    big = Instances(
        instances.boxes * factor,
        big_masks,
        instances.class_ids,
        instances.scores,
        instances.class_names,
        instances.data,
    )
    return big_image, big


def side_by_side(
    left: np.ndarray,
    right: np.ndarray,
    titles: Sequence[str] = ("", ""),
    *,
    gap: int = 8,
) -> np.ndarray:
    """Two pictures next to each other on a white sheet, each with an optional title above it.

    The pictures keep their own sizes (the shorter one is padded below), so pixels are never
    resampled. Used e.g. to compare a label with a model's suggestion.
    """
    left, right = _as_rgb(left), _as_rgb(right)
    scale, thickness, _ = _label_style(max(left.shape[0], right.shape[0]), left.shape[1] + right.shape[1])
    (_, text_h), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    title_h = text_h + baseline + 2 * gap if any(titles) else 0
    height = title_h + max(left.shape[0], right.shape[0])
    width = left.shape[1] + gap + right.shape[1]
    sheet = np.full((height, width, 3), 255, np.uint8)
    x = 0
    for picture, title in zip((left, right), titles, strict=False):
        sheet[title_h : title_h + picture.shape[0], x : x + picture.shape[1]] = picture
        if title:
            cv2.putText(
                sheet,
                _ascii(title),
                (x + 2, gap + text_h),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                (0, 0, 0),
                thickness,
                cv2.LINE_AA,
            )
        x += picture.shape[1] + gap
    return sheet


def save_overlays(
    dataset: Dataset,
    out: str | Path,
    *,
    limit: int | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write one PNG per image with its annotations drawn on it (``instaseg show``).

    Labels show scores when the annotations have them (a ``predictions.json``). Pictures keep the images' relative paths under ``out`` (``train/a.jpg`` becomes
    ``out/train/a.png``). The folder is written atomically: on any error nothing is left behind.

    Args:
        dataset: the annotated images to draw.
        out: the folder to create.
        limit: draw only the first ``limit`` images.
        overwrite: replace ``out`` if it exists (never the dataset file or its image folder).

    Returns:
        The paths of the pictures written.
    """
    out = Path(out)
    io.guard_outputs([out], [dataset.source], [dataset.image_root])
    io.check_output(out, overwrite)
    images = dataset.images[:limit] if limit is not None else dataset.images
    if not images:
        raise InstasegError("the dataset has no images to draw", file=dataset.source)
    # Annotations that cannot be drawn are named precisely by the checker, before any drawing starts.
    undrawable = [
        p for p in check_dataset(dataset.subset(img["id"] for img in images), check_files=False) if p.kind.stops_show
    ]
    if undrawable:
        more = f" (and {len(undrawable) - 1} more; run 'instaseg check')" if len(undrawable) > 1 else ""
        raise InstasegError(f"cannot draw: {str(undrawable[0]).removeprefix('error: ')}{more}")
    # A predictions file (``instaseg predict``) is a COCO file whose annotations carry scores.
    show_scores = any("score" in ann for ann in dataset.annotations)
    written: dict[Path, int] = {}  # picture -> image id
    with io.atomic_path(out, overwrite) as tmp:
        tmp.mkdir()
        for image in events.track(images, "drawing", unit="img"):
            record = f"image id {image['id']}"
            relative = Path(image["file_name"]).with_suffix(".png")
            if relative in written:
                raise InstasegError(
                    f"image id {written[relative]} is drawn to the same file {relative}",
                    file=dataset.source,
                    record=record,
                )
            # Pixels first: they prove the declared size real before masks of that size are allocated.
            pixels = dataset.read_image(image)
            picture = draw_instances(*enlarge(pixels, dataset.ground_truth(image)), show_scores=show_scores)
            target = io.safe_join(tmp, str(relative), record=record)
            target.parent.mkdir(parents=True, exist_ok=True)
            io.write_image(target, picture)
            written[relative] = image["id"]
    return [out / relative for relative in written]
