"""A synthetic instance segmentation dataset of coloured shapes, made in seconds, for demos and tests.

Each image has a textured background (a colour gradient, blotches and a few thin lines) and a
handful of shapes of four classes: circle, square, triangle and star. Sizes, rotations, colours and
textures vary; shapes drawn later occlude earlier ones and every annotation stores the *visible*
mask only, so the labels are exactly what a model can see. Output is deterministic for a seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from instaseg.core import events, io
from instaseg.core import masks as mask_ops

CLASS_NAMES = ("circle", "square", "triangle", "star")
# Fragments smaller than this (after occlusion) are dropped rather than labelled: too few pixels to tell the shape.
MIN_VISIBLE_FRACTION = 0.35
MIN_VISIBLE_PIXELS = 30


def make_synthetic(
    out: str | Path,
    *,
    num_train: int = 200,
    num_val: int = 50,
    size: int = 128,
    seed: int = 0,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write a train and a val split of synthetic shape images with COCO annotations.

    Layout: ``OUT/train.json``, ``OUT/val.json`` and the images ``OUT/train/train_000001.png``, ...
    and ``OUT/val/val_000001.png``, ... (``file_name`` is relative to the JSON's folder). Masks are
    stored as compressed RLE.
    The folder is written atomically: it appears complete or not at all.

    Args:
        out: the folder to create.
        num_train: number of training images.
        num_val: number of validation images.
        size: width and height of every image in pixels.
        seed: the same seed always gives the same images and labels.
        overwrite: replace ``out`` if it exists.

    Returns:
        The paths of ``train.json`` and ``val.json``.
    """
    out = Path(out)
    with io.atomic_path(out, overwrite) as tmp:
        tmp.mkdir()
        for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
            # A separate stream per split keeps val identical whatever num_train is.
            rng = np.random.default_rng([seed, split_index])
            coco = _make_split(tmp, split, count, size, rng)
            io.write_json(tmp / f"{split}.json", coco)
    return out / "train.json", out / "val.json"


def _make_split(root: Path, split: str, count: int, size: int, rng: np.random.Generator) -> dict:
    (root / split).mkdir()
    images: list[dict] = []
    annotations: list[dict] = []
    for index in events.track(range(count), f"drawing {split} images", unit="image"):
        image_id = index + 1
        pixels, visible, class_ids = draw_image(size, rng)
        # the split in the name too: predictions are matched to images by name, so a train image
        # must never pass for the val image with the same number
        file_name = f"{split}/{split}_{image_id:06d}.png"
        Image.fromarray(pixels).save(root / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for mask, class_id in zip(visible, class_ids, strict=True):
            rle = mask_ops.encode(mask)
            x, y, w, h = mask_ops.bbox(rle)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": class_id + 1,
                    "segmentation": rle,
                    "area": int(mask.sum()),
                    "bbox": [x, y, w, h],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CLASS_NAMES)]
    info = {"description": f"instaseg synthetic shapes ({split})", "version": "1"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def draw_image(size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """One image: (size, size, 3) uint8 pixels, the visible boolean masks and their class indices."""
    canvas = _background(size, rng)
    full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    class_ids: list[int] = []
    for _ in range(int(rng.integers(2, 7))):
        # Retry placements that would hide too much of a shape already drawn, so that every painted
        # shape stays recognisable and labelled (no unlabelled fragments to confuse training).
        for _attempt in range(10):
            class_id = int(rng.integers(len(CLASS_NAMES)))
            mask = _shape_mask(class_id, size, rng)
            still_seen = [seen & ~mask for seen in visible]
            if mask.sum() >= MIN_VISIBLE_PIXELS and all(
                s.sum() >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * f.sum())
                for s, f in zip(still_seen, full, strict=True)
            ):
                break
        else:
            continue
        canvas[mask] = _texture(size, rng)[mask]
        visible = [*still_seen, mask]
        full.append(mask)
        class_ids.append(class_id)
    noise = rng.normal(0, rng.uniform(2, 10), canvas.shape)
    pixels = np.clip(canvas + noise, 0, 255).astype(np.uint8)
    return pixels, visible, class_ids


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A float (size, size, 3) background: a two-colour gradient, soft blotches and thin lines."""
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[:size, :size] / size
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    canvas = a * (1 - t[..., None]) + b * t[..., None]
    blotches = cv2.resize(rng.normal(0, 25, (4, 4, 3)), (size, size), interpolation=cv2.INTER_CUBIC)
    canvas = canvas + blotches
    for _ in range(int(rng.integers(0, 4))):
        p1, p2 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.line(canvas, tuple(int(v) for v in p1), tuple(int(v) for v in p2), color, int(rng.integers(1, 3)))
    return canvas


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """A float (size, size, 3) fill: flat, striped, checked or speckled in random colours."""
    base = rng.uniform(0, 255, 3)
    kind = rng.integers(4)
    if kind == 0:
        return np.broadcast_to(base, (size, size, 3)).copy()
    other = np.clip(base + rng.uniform(-90, 90, 3), 0, 255)
    yy, xx = np.mgrid[:size, :size]
    period = rng.uniform(4, 12)
    if kind == 1:
        angle = rng.uniform(0, math.pi)
        pattern = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * math.pi / period) > 0
    elif kind == 2:
        pattern = ((xx // period).astype(int) + (yy // period).astype(int)) % 2 == 0
    else:
        pattern = rng.random((size, size)) < 0.3
    return np.where(pattern[..., None], other, base)


def _shape_mask(class_id: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of one shape of class ``class_id`` at a random place, size and rotation."""
    radius = rng.uniform(0.08, 0.24) * size
    cx, cy = rng.uniform(0.1, 0.9, 2) * size
    rotation = rng.uniform(0, 2 * math.pi)
    mask = np.zeros((size, size), np.uint8)
    name = CLASS_NAMES[class_id]
    if name == "circle":
        cv2.circle(mask, (round(cx), round(cy)), round(radius), 1, -1)
    else:
        if name == "square":
            angles, radii = np.arange(4) * math.pi / 2, np.full(4, radius)
        elif name == "triangle":
            angles, radii = np.arange(3) * 2 * math.pi / 3, np.full(3, radius * 1.15)
        else:  # five-pointed star: alternate outer and inner radii
            angles = np.arange(10) * math.pi / 5
            radii = np.where(np.arange(10) % 2 == 0, radius * 1.1, radius * 0.45)
        points = np.stack([cx + radii * np.cos(angles + rotation), cy + radii * np.sin(angles + rotation)], 1)
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)
