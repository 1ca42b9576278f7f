"""Conversions between the three mask encodings: COCO polygons, COCO RLE and dense boolean arrays.

pycocotools does the rasterising and run-length coding, so masks drawn here are pixel-for-pixel
the masks the COCO metric sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

Segmentation = Any  # list of polygons [[x1, y1, x2, y2, ...], ...] or an RLE dict {"size", "counts"}


def is_rle(segmentation: Segmentation) -> bool:
    """Whether a COCO segmentation is an RLE (a dict), not a list of polygons."""
    return isinstance(segmentation, dict)


def to_rle(segmentation: Segmentation, height: int, width: int) -> dict:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) as one compressed RLE."""
    if is_rle(segmentation):
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, *segmentation["size"])
        else:
            rle = {"size": list(segmentation["size"]), "counts": counts}
    else:
        polygons = [_clip_far(list(map(float, p)), height, width) for p in segmentation if len(p) >= 6]
        polygons = [p for p in polygons if len(p) >= 6]
        if not polygons:
            return encode(np.zeros((height, width), bool))
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return _str_counts(rle)


def _clip_far(polygon: list[float], height: int, width: int) -> list[float]:
    """Clip a polygon reaching far outside the image to the image (plus a pixel) before rasterising.

    pycocotools walks every edge at 5x resolution, so a vertex at 1e9 would make it allocate
    gigabytes; polygons only slightly outside are left untouched so their pixels stay exact.
    """
    coords = np.asarray(polygon).reshape(-1, 2)
    margin = max(height, width)
    if coords.min() >= -margin and coords[:, 0].max() <= width + margin and coords[:, 1].max() <= height + margin:
        return polygon
    import shapely

    clipped = shapely.make_valid(shapely.Polygon(coords)).intersection(shapely.box(-1, -1, width + 1, height + 1))
    parts = [g for g in getattr(clipped, "geoms", [clipped]) if isinstance(g, shapely.Polygon) and not g.is_empty]
    # Several parts would need several polygons; the largest keeps the instance one polygon.
    if not parts:
        return []
    largest = max(parts, key=lambda g: g.area)
    return [float(v) for v in np.asarray(largest.exterior.coords)[:-1].reshape(-1)]


def _str_counts(rle: dict) -> dict:
    counts = rle["counts"]
    return {
        "size": [int(s) for s in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def _bytes_counts(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


# pycocotools shifts each character of a compressed number within a 32-bit int, so longer numbers come
# out wrong; six characters (30 bits, signed) hold any run of a mask under 2^29 pixels, three times the
# largest image instaseg decodes.
_MAX_RLE_CHARS = 6


def invalid_rles(rles: Sequence[dict], sizes: Sequence[Sequence[int]]) -> dict[int, str]:
    """Why each RLE of ``rles`` that is not a COCO RLE of its (height, width) in ``sizes`` is not, by position.

    pycocotools trusts what it is given: run lengths that do not add up to the image, negative or
    fractional runs, or a compressed string that stops in the middle of a number make it read past its
    buffers (a different mask on every call) or overflow. Compressed strings are decoded here all at
    once with NumPy, following pycocotools' ``rleFrString``, so that a check of every mask stays cheap
    next to parsing the JSON that holds them.
    """
    problems: dict[int, str] = {}
    strings: list[str | bytes] = []
    string_owners: list[int] = []
    for position, (rle, (height, width)) in enumerate(zip(rles, sizes, strict=True)):
        problem = _rle_form_problem(rle, height, width)
        if problem is None and type(rle["counts"]) is not list:
            strings.append(rle["counts"])
            string_owners.append(position)
        elif problem is None:
            problem = _run_list_problem(rle["counts"], height, width)
        if problem is not None:
            problems[position] = problem
    for k, problem in _compressed_problems(strings, [sizes[p] for p in string_owners]).items():
        problems[string_owners[k]] = problem
    return dict(sorted(problems.items()))


def _rle_form_problem(rle: Any, height: int, width: int) -> str | None:
    if type(rle) is not dict or "size" not in rle or "counts" not in rle:
        return "RLE segmentation needs 'size' [height, width] and 'counts'"
    size = rle["size"]
    if not (type(size) in (list, tuple) and len(size) == 2 and type(size[0]) is int and type(size[1]) is int):
        return f"RLE 'size' must be [height, width] in whole pixels, got {size!r}"
    if size[0] != height or size[1] != width:
        return f"RLE size is {size[0]}x{size[1]} (h x w) but the image is {height}x{width}"
    if type(rle["counts"]) not in (list, str, bytes):
        return f"RLE 'counts' must be a string or a list of run lengths, got {type(rle['counts']).__name__}"
    return None


def _run_list_problem(counts: list, height: int, width: int) -> str | None:
    if not set(map(type, counts)) <= {int}:
        return "uncompressed RLE counts must be whole numbers"
    if counts and min(counts) < 0:
        return "uncompressed RLE counts hold a negative run length"
    return _total_problem(sum(counts), height, width)


def _total_problem(total: int, height: int, width: int) -> str | None:
    return None if total == height * width else _total_mismatch(total, height, width)


def _total_mismatch(total: int, height: int, width: int) -> str:
    how = "run past the end of" if total > height * width else "stop short of"
    return f"RLE counts {how} the image ({total} pixels, the {height}x{width} image has {height * width})"


def _compressed_problems(strings: list[str | bytes], sizes: Sequence[Sequence[int]]) -> dict[int, str]:
    """What is wrong with each bad compressed RLE string, by position, decoded in one pass.

    Each number is a run of characters ``48 + 5 bits``, bit 0x20 of all but the last marking that more
    follow and bit 0x10 of the last its sign; from the fourth number on, each is the difference to
    the run two places before.
    """
    count = len(strings)
    # NUL is outside the alphabet: a string that is not ASCII is reported as holding a bad character.
    encoded = [s if isinstance(s, bytes) else s.encode("ascii") if s.isascii() else b"\0" for s in strings]
    lengths = np.fromiter(map(len, encoded), np.int64, count)
    string_start = np.cumsum(lengths) - lengths
    chars = np.frombuffer(b"".join(encoded), np.uint8) - np.uint8(48)  # bytes below '0' wrap past 63
    more = ((chars >> 5) & 1).view(bool)
    last_char = (string_start + lengths - 1)[lengths > 0]
    unfinished = np.zeros(count, bool)
    unfinished[lengths > 0] = more[last_char]
    more[last_char] = False  # so that no number runs on into the next string
    ends = np.flatnonzero(~more)  # the last character of each number
    string_bounds: np.ndarray = np.r_[string_start, len(chars)]
    first = np.searchsorted(ends, string_bounds)  # each string's first number

    # Nearly every number is one character, read by table; the longer ones character by character.
    values = _ONE_CHARACTER_NUMBER[chars[ends]]
    number_length = np.diff(ends, prepend=-1)
    longer = np.flatnonzero(number_length > 1)
    values[longer] = _long_numbers(chars, ends[longer], number_length[longer])
    runs = _undo_differences(values, first)
    totals = np.diff(np.concatenate(([0], np.cumsum(runs)))[first])

    flagged = {
        "compressed RLE counts hold characters outside the COCO alphabet ('0' to 'o')": _strings_with(
            np.flatnonzero(chars > 63), string_start, count
        ),
        "compressed RLE counts end in the middle of a number": unfinished,
        "compressed RLE counts hold a number too large for any image": _strings_with(
            ends[number_length > _MAX_RLE_CHARS], string_start, count
        ),
        "compressed RLE counts decode to a negative run length": _strings_with(ends[runs < 0], string_start, count),
    }
    pixels = np.fromiter((height * width for height, width in sizes), np.int64, count)
    problems: dict[int, str] = {}
    for k in np.flatnonzero(np.logical_or.reduce([*flagged.values(), totals != pixels])):
        reason = next((message for message, where in flagged.items() if where[k]), None)
        problems[int(k)] = reason or _total_mismatch(int(totals[k]), *sizes[int(k)])  # flagged, or its total is off
    return problems


# A number of one character: its five bits, bit 0x10 the sign.
_ONE_CHARACTER_NUMBER = ((np.arange(256, dtype=np.int64) & 0x1F) ^ 0x10) - 0x10


def _long_numbers(chars: np.ndarray, ends: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The numbers of ``lengths`` characters ending at ``ends`` (the first five bits come first)."""
    lengths = np.minimum(lengths, _MAX_RLE_CHARS)  # longer ones are refused; this keeps the shifts in range
    starts = ends - lengths + 1
    values = np.zeros(len(ends), np.int64)
    for k in range(_MAX_RLE_CHARS):
        reaching = k < lengths
        values[reaching] += (chars[starts[reaching] + k] & 0x1F).astype(np.int64) << (5 * k)
    negative = (chars[ends] & 0x10).astype(bool)
    return values - np.where(negative, np.int64(1) << (5 * lengths), 0)


def _undo_differences(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Run lengths from the numbers of strings whose numbers start at ``first``.

    From a string's fourth number on, each is the difference to the run two places before, so
    the runs of a string at odd places, and those at even places after the first, are running sums.
    Numbers of one parity of position are one stretch per string in ``values[parity::2]``: one
    cumulative sum per parity does every string, once each stretch starts by taking off the sum of
    the stretch before it.
    """
    leading = first[:-1][first[1:] > first[:-1]]  # each non-empty string's first run
    deltas = values.copy()
    deltas[leading] = 0
    runs = np.empty_like(values)
    for parity in (0, 1):
        chain = deltas[parity::2]
        bounds = (first - parity + 1) // 2
        stretch_starts = bounds[:-1][bounds[1:] > bounds[:-1]]
        if len(stretch_starts):
            totals = np.add.reduceat(chain, stretch_starts)
            chain[stretch_starts[1:]] -= totals[:-1]
        runs[parity::2] = np.cumsum(chain)
    runs[leading] = values[leading]
    return runs


def _strings_with(char_positions: np.ndarray, string_start: np.ndarray, count: int) -> np.ndarray:
    """Which of ``count`` concatenated strings starting at ``string_start`` hold the given characters."""
    hit = np.zeros(count, bool)
    hit[np.searchsorted(string_start, char_positions, side="right") - 1] = True
    return hit


def encode(mask: np.ndarray) -> dict:
    """A boolean (H, W) mask as a compressed RLE dict with string counts (JSON-ready)."""
    return _str_counts(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def encode_many(masks: np.ndarray) -> list[dict]:
    """(N, H, W) boolean masks as a list of compressed RLE dicts."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [_str_counts(r) for r in rles]


def decode(segmentation: Segmentation, height: int, width: int) -> np.ndarray:
    """Any COCO segmentation as a boolean (H, W) mask."""
    return mask_utils.decode(_bytes_counts(to_rle(segmentation, height, width))).astype(bool)


def decode_many(rles: list[dict], height: int, width: int) -> np.ndarray:
    """RLE masks of one (height, width) image as an (N, H, W) boolean array."""
    if not rles:
        return np.zeros((0, height, width), bool)
    return mask_utils.decode([_bytes_counts(r) for r in rles]).transpose(2, 0, 1).astype(bool)


def area(rle: dict) -> int:
    """Number of pixels of an RLE mask."""
    return int(mask_utils.area(_bytes_counts(rle)))


def bbox(rle: dict) -> list[float]:
    """Tight COCO box [x, y, w, h] of an RLE mask (whole pixels, as floats)."""
    return [float(v) for v in mask_utils.toBbox(_bytes_counts(rle))]


def iou(rles_a: list[dict], rles_b: list[dict], iscrowd_b: list[bool] | None = None) -> np.ndarray:
    """(len(a), len(b)) mask IoU matrix, with COCO's crowd rule for ``b`` entries marked crowd."""
    if not rles_a or not rles_b:
        return np.zeros((len(rles_a), len(rles_b)))
    crowd = [int(c) for c in (iscrowd_b or [False] * len(rles_b))]
    return np.asarray(
        mask_utils.iou([_bytes_counts(r) for r in rles_a], [_bytes_counts(r) for r in rles_b], crowd)
    ).reshape(len(rles_a), len(rles_b))


def to_polygons(mask: np.ndarray, min_points: int = 3) -> list[list[float]]:
    """Outer contours of a boolean mask as COCO polygons.

    The contour runs through the centres of the boundary pixels; moving each vertex half a pixel
    outwards (by tracing a 2x-upsampled mask) makes pycocotools redraw nearly the same pixels.
    Holes cannot be expressed in COCO polygons and are filled.
    """
    mask = np.ascontiguousarray(mask.astype(np.uint8))
    if not mask.any():
        return []
    big = cv2.resize(mask, (mask.shape[1] * 2, mask.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        if len(contour) < min_points:
            continue
        points = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / 2.0
        polygons.append([round(float(v), 2) for v in points.reshape(-1)])
    return polygons


def resize(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W) boolean masks resized to (N, height, width) by nearest neighbour."""
    resized = np.zeros((len(masks), height, width), bool)
    for k, mask in enumerate(masks):
        # One mask at a time: cv2 takes at most 512 channels, and this keeps a single uint8 copy alive.
        resized[k] = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return resized


def paste(probabilities: np.ndarray, boxes: np.ndarray, height: int, width: int, threshold: float = 0.5) -> np.ndarray:
    """Paste (N, M, M) mask probabilities into their boxes in a (height, width) image; (N, H, W) bool.

    Each mask is sampled bilinearly where the mask head's training targets were taken, fading to 0
    half a mask cell beyond the box, like torchvision's ``paste_masks_in_image`` -- but at sub-pixel
    box positions, only within the box and straight to booleans, never as full-image float masks
    (a hundred of those on a large image take gigabytes).
    """
    pasted = np.zeros((len(probabilities), height, width), bool)
    size = probabilities.shape[-1]
    for k, (soft, (x0, y0, x1, y1)) in enumerate(zip(probabilities.astype(np.float32), boxes, strict=True)):
        scale_x, scale_y = max(x1 - x0, 1e-3) / size, max(y1 - y0, 1e-3) / size
        left, top = max(0, int(np.floor(x0)) - 1), max(0, int(np.floor(y0)) - 1)
        right, bottom = min(width, int(np.ceil(x1)) + 1), min(height, int(np.ceil(y1)) + 1)
        if right <= left or bottom <= top:
            continue
        # Output pixel j reads mask cell (left + j - x0) / scale_x - 0.5: torchvision's training targets
        # come from roi_align(aligned=False), which puts pixel k at coordinate k (not its centre k + 0.5),
        # so this inverts them (bench/bench_paste.py compares the round trip with torchvision's paste).
        image_to_mask = np.array(
            [[1 / scale_x, 0, (left - x0) / scale_x - 0.5], [0, 1 / scale_y, (top - y0) / scale_y - 0.5]]
        )
        crop = cv2.warpAffine(
            soft,
            image_to_mask,
            (right - left, bottom - top),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        pasted[k, top:bottom, left:right] = crop > threshold
    return pasted


def annotation_fields(mask: np.ndarray, polygons: bool) -> dict:
    """``segmentation``, ``area`` and ``bbox`` of a COCO annotation holding ``mask``.

    The segmentation is polygons when ``polygons`` (the style of the label it replaces, so a polygon
    dataset stays editable in polygon tools) unless the mask has no outline, else compressed RLE.
    """
    rle = encode(mask)
    outlines = to_polygons(mask) if polygons else None
    return {"segmentation": outlines or rle, "area": area(rle), "bbox": bbox(rle)}


def box_from_mask(mask: np.ndarray) -> list[float]:
    """Tight [x1, y1, x2, y2] box of a boolean mask (pixel edges), zeros for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def window(mask: np.ndarray, margin: int = 1) -> tuple[slice, slice] | None:
    """Rows and columns of ``mask``'s box grown by ``margin`` pixels (within the image); None if it is empty.

    Contour and band work on a whole image needs only this window: nothing within ``margin`` of the
    mask reaches past it.
    """
    x0, y0, x1, y1 = (int(v) for v in box_from_mask(mask))
    if x1 == x0:
        return None
    height, width = mask.shape
    return slice(max(0, y0 - margin), min(height, y1 + margin)), slice(max(0, x0 - margin), min(width, x1 + margin))
