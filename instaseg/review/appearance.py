"""The image as a witness of its own labels: how much each pixel looks like the image's labelled objects.

A model trained on a few dozen images misses objects and draws uneven outlines, and those misses
look like label errors. The image itself holds a second, independent opinion: within one picture,
objects of a kind look alike (a stain, a brightness, a texture), and so does the background. A
logistic regression on local colour and texture features (``pixel_features``), fit on the image's
own labels (labelled pixels against the unlabelled ones), says how object-like each pixel looks.
It is cross-fitted: the labels are split in two halves and each half is judged by the regression
fit on the other one, so that a label never vouches for itself (a label drawn on empty background
is judged by what the *other* labels look like). Being linear and trained on thousands of pixels,
the regression cannot learn one unlabelled object as background; it calls it object-like when it
looks like the labelled ones.

Where objects do not share a look (shapes of many textures, objects that differ from the background
only by their outline), the held-out half comes out no more object-like than the background. The
``reliability`` measures exactly that, and the review weighs this witness by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from instaseg.core import masks as mask_ops

# Gaussian scales of the features, in object sides (at least MIN_SIGMA pixels): the pixel itself, its
# close surroundings, and the object as a whole.
FEATURE_SCALES = (0.0, 0.1, 0.25, 0.5)
MIN_SIGMA = 0.7
# Blurs wider than this many pixels are done on a shrunk copy (``_scale_features``).
MAX_DIRECT_SIGMA = 16.0
# Pixels drawn from each class to fit a regression: plenty for a few dozen weights, and quick.
SAMPLES_PER_CLASS = 10_000
# Labels whose outline is within this many pixels are neither object nor background for fitting:
# an outline drawn a pixel or two off must not teach the regression that object edges are background.
MARGIN = 2
# Fewer pixels than this on either side and there is nothing to learn from.
MIN_PIXELS = 20
# Larger images are judged at a reduced size (their features would take gigabytes), then scaled back.
MAX_PIXELS = 2_000_000
# An unlabelled region smaller than this (in median label areas) is no object; it counts fully from REGION_FULL_AREA.
REGION_MIN_AREA = 0.15
REGION_FULL_AREA = 0.5
# Width in pixels of the bands inside and outside a label's outline that ``outline_fit`` compares.
OUTLINE_BAND = 2


@dataclass
class Appearance:
    """What the image says about its labels (see the module docstring).

    Attributes:
        probability: (H, W) float32 in [0, 1], how object-like each pixel looks. Labelled pixels get the
            verdict of the half of the labels they are not in; unlabelled ones the mean of both halves'.
        reliability: in [0, 1], how well the cross-fitted probability ranks labelled pixels above the
            background (2 AUC - 1, clipped at 0): near 1 where objects share a look that the
            background lacks, near 0 where the look says nothing.
        object_side: the typical object side (pixels) the features were scaled to.
    """

    probability: np.ndarray
    reliability: float
    object_side: float


def pixel_features(pixels: np.ndarray, object_side: float) -> np.ndarray:
    """(H * W, F) float32 features of an (H, W, 3) RGB image: per channel and scale, the smoothed
    value, its gradient magnitude and its scale-normalised Laplacian (a blob detector).

    The channels are the grey level for a grey image, else CIE Lab (lightness and two colour
    axes, so a stain's hue counts apart from its darkness). The scales follow ``FEATURE_SCALES`` of
    ``object_side``, so small and large objects are described alike.
    """
    image = np.ascontiguousarray(pixels, dtype=np.float32) / 255.0
    if np.abs(image - image.mean(2, keepdims=True)).max() < 0.02:
        channels = [image.mean(2)]
    else:
        lab = cv2.cvtColor(image, cv2.COLOR_RGB2Lab)
        channels = [lab[..., 0] / 100.0, lab[..., 1] / 128.0, lab[..., 2] / 128.0]
    sigmas = sorted({max(MIN_SIGMA, object_side * scale) for scale in FEATURE_SCALES})
    features = [feature for channel in channels for sigma in sigmas for feature in _scale_features(channel, sigma)]
    return np.stack(features, -1).reshape(-1, len(features))


def _scale_features(channel: np.ndarray, sigma: float) -> tuple[np.ndarray, ...]:
    """The smoothed ``channel`` at ``sigma``, its gradient magnitude and its scale-normalised Laplacian.

    A blur costs in proportion to its sigma, so a wide one (over ``MAX_DIRECT_SIGMA``) is done on a
    copy shrunk to that sigma, which loses nothing the blur keeps, and the three are scaled back.
    """
    height, width = channel.shape
    shrink = sigma / MAX_DIRECT_SIGMA
    if shrink <= 1.0 or min(height, width) / shrink < 2:
        return _direct_scale_features(channel, sigma)
    small_width = math.floor(width / shrink)  # rounded down, so the shrunk sigma stays within the limit
    factor = width / small_width
    small = cv2.resize(channel, (small_width, math.floor(height / shrink)), interpolation=cv2.INTER_AREA)
    # The scale-normalised Laplacian is the same at any size; a gradient per shrunk pixel spans ``factor`` pixels.
    smooth, gradient, laplacian = _direct_scale_features(small, sigma / factor)
    return tuple(
        cv2.resize(feature, (width, height), interpolation=cv2.INTER_LINEAR)
        for feature in (smooth, gradient / factor, laplacian)
    )


def _direct_scale_features(channel: np.ndarray, sigma: float) -> tuple[np.ndarray, ...]:
    smooth = cv2.GaussianBlur(channel, (0, 0), sigma)
    gradient = cv2.magnitude(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1))
    return smooth, gradient, cv2.Laplacian(smooth, cv2.CV_32F) * sigma * sigma


def _fit_and_predict(
    features: np.ndarray, objects: np.ndarray, background: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Probability that each pixel is an object, from a balanced sample of ``objects`` and ``background`` (flat indices)."""
    objects = rng.choice(objects, min(SAMPLES_PER_CLASS, len(objects)), replace=False)
    background = rng.choice(background, min(SAMPLES_PER_CLASS, len(background)), replace=False)
    regression = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    regression.fit(features[np.r_[objects, background]], np.r_[np.ones(len(objects)), np.zeros(len(background))])
    return regression.predict_proba(features)[:, 1].astype(np.float32)


def appearance(pixels: np.ndarray, label_masks: np.ndarray, object_side: float, seed: int = 0) -> Appearance | None:
    """How object-like each pixel of an image looks, cross-fitted on two halves of its labels.

    Args:
        pixels: (H, W, 3) RGB image.
        label_masks: (N, H, W) boolean masks of the image's labels (crowd regions left out).
        object_side: typical side of the labelled objects in pixels (``instaseg.data.stats.object_size``).
        seed: fixes the pixel sample.

    Returns:
        The ``Appearance``, or None when the image has fewer than two labels or too few labelled or
        background pixels to learn from.
    """
    height, width = pixels.shape[:2]
    masks = np.asarray(label_masks, bool)
    if len(masks) < 2:
        return None
    size = reduced_size(height, width)
    if size == (width, height):
        return _appearance(pixels, masks, object_side, seed)
    small = _appearance(
        cv2.resize(np.ascontiguousarray(pixels), size, interpolation=cv2.INTER_AREA),
        mask_ops.resize(masks, size[1], size[0]),
        object_side * size[0] / width,
        seed,
    )
    if small is None:
        return None
    return Appearance(
        cv2.resize(small.probability, (width, height), interpolation=cv2.INTER_LINEAR), small.reliability, object_side
    )


def reduced_size(height: int, width: int) -> tuple[int, int]:
    """(width, height) at which an image is judged: its own, or the largest of its shape within ``MAX_PIXELS``.

    Sides are rounded down, so the product never exceeds the limit; a side that would fall under one
    pixel stays one pixel, and the other is then capped at ``MAX_PIXELS``.
    """
    if height * width <= MAX_PIXELS:
        return width, height
    factor = min((MAX_PIXELS / (height * width)) ** 0.5, MAX_PIXELS / max(height, width))
    return max(1, math.floor(width * factor)), max(1, math.floor(height * factor))


def _appearance(pixels: np.ndarray, masks: np.ndarray, object_side: float, seed: int) -> Appearance | None:
    """``appearance`` of an image small enough to judge at its own size."""
    height, width = pixels.shape[:2]
    labelled = np.any(masks, axis=0)
    kernel = np.ones((3, 3), np.uint8)
    near_labels = cv2.dilate(labelled.astype(np.uint8), kernel, iterations=MARGIN).astype(bool)
    background = np.flatnonzero(~near_labels)
    if len(background) < MIN_PIXELS:
        return None
    halves = np.arange(len(masks)) % 2
    unions = [masks[halves == half].any(0) for half in (0, 1)]
    fitted = []
    for own in unions:
        inside = np.flatnonzero(cv2.erode(own.astype(np.uint8), kernel).astype(bool))
        if len(inside) < MIN_PIXELS:
            inside = np.flatnonzero(own)
        if len(inside) < MIN_PIXELS:
            return None
        fitted.append(inside)
    features = pixel_features(pixels, object_side)
    rng = np.random.default_rng(seed)
    probability = np.zeros(height * width, np.float32)
    unlabelled = ~labelled.ravel()
    for half, inside in enumerate(fitted):
        predicted = _fit_and_predict(features, inside, background, rng)
        judged = unions[1 - half].ravel()
        probability[judged] = predicted[judged]
        probability[unlabelled] += predicted[unlabelled] / 2
    # Each labelled pixel was judged by the half it is not in: how well that ranks it above the background.
    judged = rng.choice(np.flatnonzero(labelled), min(SAMPLES_PER_CLASS, int(labelled.sum())), replace=False)
    versus = rng.choice(background, min(SAMPLES_PER_CLASS, len(background)), replace=False)
    auc = roc_auc_score(np.r_[np.ones(len(judged)), np.zeros(len(versus))], probability[np.r_[judged, versus]])
    return Appearance(probability.reshape(height, width), float(np.clip(2.0 * auc - 1.0, 0.0, 1.0)), object_side)


def object_likeness(found: Appearance, mask: np.ndarray) -> float:
    """Mean probability over a label's pixels: low for a label drawn where nothing object-like is."""
    return float(found.probability[mask].mean()) if mask.any() else 0.0


def outline_fit(found: Appearance, mask: np.ndarray, labelled: np.ndarray) -> float | None:
    """How well a label's outline separates object-like from background-like pixels, in [-1, 1].

    The mean probability in the band of ``OUTLINE_BAND`` pixels just inside the outline, minus the
    mean in the band just outside it (pixels of ``labelled``, the union of the image's labels, left
    out: those belong to other labels): high for an outline on the object's border, lower for a mask drawn too large (background
    inside), too small (object outside), shifted or with corners cut. None when either band is empty.
    """
    window = mask_ops.window(mask, OUTLINE_BAND + 1)
    if window is None:
        return None
    crop = np.ascontiguousarray(mask[window], dtype=np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    inner = crop.astype(bool) & ~cv2.erode(crop, kernel, iterations=OUTLINE_BAND).astype(bool)
    outer = cv2.dilate(crop, kernel, iterations=OUTLINE_BAND).astype(bool) & ~labelled[window]
    if not inner.any() or not outer.any():
        return None
    probability = found.probability[window]
    return float(probability[inner].mean() - probability[outer].mean())


def unlabelled_objects(found: Appearance, label_masks: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Object-like regions no label covers, as (mask, score) pairs, most object-like first.

    Pixels looking more object-like than not, away from every label, opened by a disk of 0.15
    object sides (so that slivers along labels' outlines go), in 4-connected regions of at least
    0.15 of the labels' median area. Each region gets back the pixels next to labels that the
    opening took. Score = mean probability x min(1, area / half the median area) x reliability:
    a region the size of a typical object, in an image whose labels share a look, scores highest.
    """
    masks = np.asarray(label_masks, bool)
    labelled = np.any(masks, axis=0) if len(masks) else np.zeros(found.probability.shape, bool)
    kernel = np.ones((3, 3), np.uint8)
    free = (found.probability > 0.5) & ~cv2.dilate(labelled.astype(np.uint8), kernel).astype(bool)
    radius = max(1, round(0.15 * found.object_side))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    opened = cv2.morphologyEx(free.astype(np.uint8), cv2.MORPH_OPEN, disk)
    typical_area = float(np.median(masks.reshape(len(masks), -1).sum(1))) if len(masks) else found.object_side**2
    count, regions, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=4)
    found_regions = []
    for region in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[region])
        if area < REGION_MIN_AREA * typical_area:
            continue
        # Within the region's box grown by the dilation's reach: a large image holds many regions.
        rows, cols = slice(max(0, y - 1), y + h + 1), slice(max(0, x - 1), x + w + 1)
        mask = np.zeros(labelled.shape, bool)
        mask[rows, cols] = (
            cv2.dilate((regions[rows, cols] == region).astype(np.uint8), kernel).astype(bool) & ~labelled[rows, cols]
        )
        score = (
            object_likeness(found, mask) * min(1.0, mask.sum() / (REGION_FULL_AREA * typical_area)) * found.reliability
        )
        found_regions.append((mask, float(score)))
    return sorted(found_regions, key=lambda item: -item[1])
