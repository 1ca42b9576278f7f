"""An instance's shape as a client sends it, checked and turned into the stored compressed RLE.

A client sends either ``polygon``, a list of rings ``[x1, y1, x2, y2, ...]`` filled by the even-odd
rule (a ring inside another is a hole, rings apart are parts of one instance), or ``mask``, a COCO
RLE of the image's size. The RLE is what is stored and served; the rings are kept beside it so a
polygon stays editable as the polygon it was drawn as.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from instaseg.app.errors import bad_request
from instaseg.core import masks as mask_ops

MIN_RING_NUMBERS = 6


@dataclass(frozen=True)
class Shape:
    rle: dict[str, Any]
    polygon: list[list[float]] | None
    bbox: list[float]
    area: int


def shape_from_input(
    polygon: list[list[float]] | None, mask: dict[str, Any] | None, width: int, height: int, field: str
) -> Shape:
    """The stored shape of a sent ``polygon`` or ``mask`` (exactly one), refused with 422 naming
    ``field.polygon...`` or ``field.mask`` when it is not a valid, non-empty shape inside the image."""
    if (polygon is None) == (mask is None):
        raise bad_request(field, "send exactly one of polygon and mask")
    if polygon is not None:
        rings = [_checked_ring(ring, width, height, f"{field}.polygon.{k}") for k, ring in enumerate(polygon)]
        if not rings:
            raise bad_request(f"{field}.polygon", "a polygon needs at least one ring")
        pixels = np.logical_xor.reduce([mask_ops.decode([ring], height, width) for ring in rings])
        rle = mask_ops.encode(pixels)
    else:
        assert mask is not None
        problem = mask_ops.invalid_rles([mask], [(height, width)]).get(0)
        if problem is not None:
            raise bad_request(f"{field}.mask", problem)
        rle = mask_ops.to_rle(mask, height, width)
    area = mask_ops.area(rle)
    if area == 0:
        raise bad_request(f"{field}.polygon" if polygon is not None else f"{field}.mask", "the shape covers no pixel")
    return Shape(rle=rle, polygon=rings if polygon is not None else None, bbox=mask_ops.bbox(rle), area=area)


def _checked_ring(ring: Any, width: int, height: int, field: str) -> list[float]:
    import shapely

    if not isinstance(ring, list) or len(ring) < MIN_RING_NUMBERS or len(ring) % 2:
        raise bad_request(field, "a ring is a list of at least 3 points as x1, y1, x2, y2, ...")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in ring):
        raise bad_request(field, "coordinates must be finite numbers")
    points = np.asarray(ring, np.float64).reshape(-1, 2)
    if points.min() < 0 or points[:, 0].max() > width or points[:, 1].max() > height:
        raise bad_request(field, f"a point lies outside the {width}x{height} image")
    if not shapely.LinearRing(points).is_simple:
        raise bad_request(field, "the ring crosses itself; draw parts and holes as rings of their own")
    return [float(v) for v in ring]
