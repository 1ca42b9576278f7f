"""Polygon geometry as pycocotools fills it: the even-odd rule, zero-width bridges, clipping.

COCO polygons are filled by the even-odd rule, and YOLO and VIA files (this tool's own included)
join holes and parts into one outline by zero-width bridges walked there and back. shapely reads
such rings otherwise: ``make_valid``'s "linework" method fills gaps that bridges close off, its
"structure" method fills the holes they join in. These helpers work on the area an even-odd fill
covers instead. shapely is imported inside each function: most polygons never need it, and
importing it slows every start of the command line.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def join_polygons(polygons: list[list[float]]) -> list[float]:
    """Several polygons as one, each part reached from the first by a bridge walked there and back.

    The bridge from the first part starts at the vertex nearest to the part it reaches, which keeps
    the bridges short.
    """
    if len(polygons) == 1:
        return polygons[0]
    first = np.asarray(polygons[0]).reshape(-1, 2)
    joined = [*polygons[0], *polygons[0][:2]]  # the first part, closed back to its start
    for polygon in polygons[1:]:
        part = np.asarray(polygon).reshape(-1, 2)
        distances = ((first[:, None, :] - part[None, :, :]) ** 2).sum(-1)
        a, b = np.unravel_index(int(distances.argmin()), distances.shape)
        anchor = first[a].tolist()
        loop = np.concatenate([part[b:], part[:b], part[b : b + 1]]).reshape(-1).tolist()
        # first part's start -> anchor -> the part, closed -> anchor -> back to the start
        joined += [*anchor, *loop, *anchor, *polygons[0][:2]]
    return joined


def even_odd_shape(points: np.ndarray) -> Any:
    """The area an even-odd fill of the ring ``points`` ((K, 2) vertices) covers, as a valid shapely geometry."""
    import shapely

    linework = shapely.union_all(shapely.linestrings(np.concatenate([points, points[:1]])))  # noded, each edge once
    faces = shapely.get_parts(shapely.polygonize(shapely.get_parts(linework)))
    inside = _inside_even_odd(shapely.get_coordinates(shapely.point_on_surface(faces)), points)
    return shapely.union_all(faces[inside])


def _inside_even_odd(queries: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Whether each (x, y) of ``queries`` is inside ``ring`` by the even-odd rule (edges crossed by a ray towards +x)."""
    starts, ends = ring, np.roll(ring, -1, axis=0)
    x, y = queries[:, :1], queries[:, 1:]
    straddles = (starts[:, 1] > y) != (ends[:, 1] > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = starts[:, 0] + (y - starts[:, 1]) * (ends[:, 0] - starts[:, 0]) / (ends[:, 1] - starts[:, 1])
    return (straddles & (x < x_cross)).sum(axis=1) % 2 == 1


def coco_polygons(shape: Any, decimals: int = 2) -> list[list[float]]:
    """A valid shapely shape as COCO polygons, one per part; a part's holes are joined to its outline
    by zero-width bridges, so the even-odd fill keeps them empty. Lines and points are left out."""
    import shapely

    polygons = []
    # A collection may hold multipolygons: get_parts twice reaches the polygons.
    for part in shapely.get_parts(shapely.get_parts(shape)):
        if isinstance(part, shapely.Polygon) and part.area > 0:
            rings = [
                np.asarray(ring.coords)[:-1].reshape(-1).round(decimals).tolist()
                for ring in (part.exterior, *part.interiors)
            ]
            polygons.append(join_polygons(rings))
    return polygons


def clip_to_image(points: np.ndarray, width: int, height: int, decimals: int = 3) -> list[list[float]]:
    """(K, 2) vertices as the COCO polygons of the even-odd area they enclose inside the image.

    A polygon inside the image is kept as it is. One reaching outside is intersected with the
    rectangle rather than having its outside vertices moved onto the edge, which would tilt the
    edges next to them and cut off pixels inside the image. The part inside may be several
    polygons, or none.

    Raises:
        ValueError: a coordinate is not a finite number.
    """
    points = np.asarray(points, np.float64).reshape(-1, 2)
    if not np.isfinite(points).all():
        raise ValueError("coordinates must be finite numbers")
    if points.min() >= 0 and points[:, 0].max() <= width and points[:, 1].max() <= height:
        return [points.reshape(-1).round(decimals).tolist()]
    import shapely

    return coco_polygons(even_odd_shape(points) & shapely.box(0, 0, width, height), decimals)
