"""Consensus scoring: where labels and out-of-sample predictions disagree, and how likely each disagreement is a label error.

Per image, labels and predictions are matched one-to-one by mask IoU (Hungarian assignment on
IoU x confidence, class-agnostic so that a wrong class still matches). Each kind of disagreement
becomes a suggestion whose score estimates the probability that the label is really wrong, so
that scores of different types can be ranked in one list (docs/review.md explains each mapping):

- ``missing_label``: a confident prediction that no label overlaps: score = confidence x (1 - IoU
  with the nearest label), times the model's second look at the prediction's box when there is
  one (``data["box_score"]``, from ``sources.judge``: the predicted class's probability averaged
  over four views). With the images, an unlabelled region that looks like the image's labelled
  objects (``appearance.unlabelled_objects``) is a second witness: where it shows the same object
  the two combine as 1 - (1 - model's) (1 - image's), and alone it is a suggestion of its own.
- ``extra_label``: a label no prediction supports, in an image where the model backs most other
  labels, whose box the model calls background: score = (1 - support) x trust in the image x
  p(background)^0.25, with support = max over predictions of min(1, confidence / 0.5) x min(1, IoU / 0.5),
  trust = the highest confidence in the image x min(1, mean support of the other labels / 0.5) and
  p(background) the model's own verdict on the label's box (``label_probs``; 1 without them),
  weighted a quarter as much as the detections (``ReviewSettings.background_weight``). With the
  images, that score s and how background-like the label's pixels look, b, give s^(1 - w) b^w,
  w = ``appearance_weight`` x the look's reliability on this image.
- ``wrong_class``: a label matched by a detection of the same object (IoU >= 0.5) that the model
  sees as another class: score = p(that class) - p(the label's class), from ``label_probs`` (the
  box head's verdict on the label's own box) when given, else from the detection (its
  ``data["class_probs"]`` or, without them, the best score per class among the predictions of
  that object).
- ``bad_mask``: a matched label whose outline the model draws differently (mask IoU above
  ``missing_max_iou``: below it the prediction counts as another object): the boundary IoU is
  compared with the model's typical boundary IoU (median and MAD over confident matches, which
  are mostly correct labels), giving z_model robust standard deviations below it. When the images
  are at hand, the outline is also checked against the image's own edges (``edge_alignment``) and
  against its look (``appearance.outline_fit``), compared the same way: z_edge and z_look. The
  typical values are the image's own (its other labels') where it has enough confident matches,
  pooled with the dataset's: how well the model and the edges do varies from image to image
  (contrast, focus, stain). The z values combine as a weighted sum over the root of the summed
  squared weights (``bad_mask_scorer``), giving score = confidence x logistic(2 (z - 2)).
- ``duplicate``: two labels of one class covering the same pixels (no model needed): score = 0.5 +
  0.5 x (IoU - threshold) / (1 - threshold); the copy the model agrees with less is the one to remove.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from instaseg.core import events
from instaseg.core import masks as mask_ops
from instaseg.core.structures import Instances
from instaseg.data.dataset import Dataset
from instaseg.data.stats import object_size
from instaseg.review.appearance import (
    Appearance,
    appearance,
    object_likeness,
    outline_fit,
    unlabelled_objects,
)


class SuggestionType(StrEnum):
    """A kind of suspected label error (the value is its name in review.json), in the order reports list them.

    Attributes:
        description: the type in words, for a front end's legend.
        fix: the fix in words, as the picture's right panel is titled (``{suggested_class}`` filled in).
        applied_as: the ``action`` that ``review apply`` records for it.
    """

    description: str
    fix: str
    applied_as: str

    def __new__(cls, value: str, description: str, fix: str, applied_as: str):
        """A member from its definition line: the value, then the properties in the order above."""
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        member.fix = fix
        member.applied_as = applied_as
        return member

    @property
    def removes_label(self) -> bool:
        """Whether applying it removes the label concerned."""
        return self.applied_as == "removed"

    MISSING_LABEL = "missing_label", "an object that no label covers", "add {suggested_class}", "added"
    EXTRA_LABEL = "extra_label", "a label where there is no object", "remove", "removed"
    WRONG_CLASS = "wrong_class", "a label of the wrong class", "relabel {suggested_class}", "category"
    BAD_MASK = "bad_mask", "a label whose mask misses the object's outline", "redraw mask", "mask replaced"
    DUPLICATE = "duplicate", "a second label of the same object", "remove copy", "removed"


class Pair(NamedTuple):
    """What is known about a label matched by a detection (bad_mask); None where a witness is absent."""

    confidence: float  # the detection's
    mask_iou: float  # of label and detection
    boundary_iou: float  # of label and detection
    edge_alignment: float | None  # of the label's outline with the image's edges
    outline_look: float | None  # fit of the label's outline with the image's object-like pixels (appearance)
    look_weight: float  # of the appearance witness on this image (0 without it)


# Matches at this confidence or above set the typical outline agreement (bad_mask): mostly correct labels.
CONFIDENT_MATCH = 0.5
# Below this median mask IoU of the confident matches the model's outlines are too coarse to judge
# outlines by (the review warns): correct labels then often disagree with the model as much as
# badly drawn ones do.
SHARP_OUTLINE_IOU = 0.8


@dataclass
class ReviewSettings:
    """Thresholds of the consensus rules (the defaults suit most datasets).

    Attributes:
        match_min_iou: lowest mask IoU at which a prediction may be matched to a label.
        same_object_iou: IoU at which a prediction fully supports a label (and its class counts).
        missing_max_iou: a prediction overlapping a label by more than this shows the same object:
            it is no missing label, and it may suggest a redrawn mask (bad_mask) for that label.
        duplicate_min_iou: two labels of one class overlapping at least this much are duplicates.
        min_score: suggestions scoring below this are left out.
        boundary_width: width in pixels of the contour bands whose IoU measures outline agreement
            (bad_mask): correct outlines agree to within a pixel or two, and a wider band (such as
            Boundary IoU's 2% of the image diagonal) covers small objects whole, leaving only mask IoU.
        min_confidence: predictions below this confidence are ignored.
        full_support_confidence: a matching prediction this confident fully backs a label (extra_label).
        trusted_image_support: the mean support of an image's other labels at which the model's
            doubt about one label counts in full (extra_label); below it, in proportion.
        background_weight: exponent of the box head's p(background) for a label's box in the
            extra_label score. The verdict comes from the same model as the detections, and a weak
            box head calls many real objects background, so it counts a quarter as much.
        edge_radius: how far (pixels) from a label's outline ``edge_alignment`` looks for a stronger
            image edge (bad_mask): a little wider than the boundary band, so that an outline drawn a
            few pixels inside or outside the object still sees the object's edge.
        image_reference_matches: for bad_mask, the typical boundary IoU and edge alignment a label
            is compared with are its image's (median and spread over the image's other confident
            matches) pooled with the dataset's, the image's weighing n / (n + this) for n matches:
            as much as the dataset's at this many.
        min_image_matches: images with fewer other confident matches use the dataset's reference alone.
        appearance_weight: the most the image's own appearance witness (``instaseg.review.appearance``)
            counts against the model's evidence, reached on images whose labels share a look the
            background lacks (reliability 1); it counts in proportion below that.
    """

    match_min_iou: float = 0.1
    same_object_iou: float = 0.5
    missing_max_iou: float = 0.3
    duplicate_min_iou: float = 0.5
    min_score: float = 0.1
    boundary_width: int = 2
    min_confidence: float = 0.05
    full_support_confidence: float = 0.5
    trusted_image_support: float = 0.5
    background_weight: float = 0.25
    edge_radius: int = 3
    image_reference_matches: int = 10
    min_image_matches: int = 8
    appearance_weight: float = 0.5


@dataclass
class Suggestion:
    """One suspected label error and the fix the model proposes.

    ``annotation_id`` is the label concerned (None for a missing label); the fix is the model's
    instance (``suggested_segmentation`` as RLE and ``suggested_class``) for ``missing_label``
    and ``bad_mask``, the class for ``wrong_class``, and removal for ``extra_label`` and
    ``duplicate`` (the other copy, ``other_annotation_id``, stays).
    """

    id: int
    type: SuggestionType
    score: float
    image_id: int
    file_name: str
    annotation_id: int | None
    class_name: str | None
    suggested_class: str | None
    suggested_segmentation: dict | None = None
    confidence: float | None = None
    other_annotation_id: int | None = None
    evidence: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Accept the type's name too (as review.json holds it)."""
        # mypy reads the member fields of ``__new__`` as required, but a lookup by value takes the value alone.
        self.type = SuggestionType(self.type)  # type: ignore[call-arg]

    def to_dict(self) -> dict[str, Any]:
        """The suggestion as review.json holds it."""
        return asdict(self)


def boundary_band(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` pixels of its contour (as in Boundary IoU, Cheng et al. 2021).

    The image border counts as contour: the mask is padded with background before erosion.
    """
    padded = cv2.copyMakeBorder(np.ascontiguousarray(mask, dtype=np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=max(1, int(width)))[1:-1, 1:-1]
    return mask & ~eroded.astype(bool)


def boundary_iou(a: np.ndarray, b: np.ndarray, width: int) -> float:
    """IoU of the boundary bands of two boolean masks; 1.0 when both are empty."""
    window = mask_ops.window(a | b)
    if window is None:
        return 1.0
    band_a = boundary_band(a[window], width)
    band_b = boundary_band(b[window], width)
    union = np.logical_or(band_a, band_b).sum()
    return float(np.logical_and(band_a, band_b).sum() / union) if union else 1.0


def image_edges(pixels: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Edge strength of an RGB image (gradient magnitude of its lightly smoothed grey levels) and,
    per pixel, the strongest edge within ``radius`` pixels (a square window)."""
    grey = cv2.GaussianBlur(
        cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.0
    )
    strength = cv2.magnitude(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    return strength, cv2.dilate(strength, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8))


def edge_alignment(mask: np.ndarray, strength: np.ndarray, strongest_nearby: np.ndarray) -> float | None:
    """How closely a mask's outline follows the image's edges, in [0, 1].

    The mean, over the outline's pixels, of the edge strength there divided by the strongest edge
    within the radius of ``image_edges``: 1 when the outline runs along the strongest edge around
    it, low when it runs a few pixels beside an edge (a mask drawn too large, too small, shifted or
    with cut corners). Pixels on the image border are left out (the object goes on beyond it), and
    so are pixels with no edge at all nearby (a flat region says nothing). None when no pixel is left.
    """
    window = mask_ops.window(mask)
    if window is None:
        return None
    crop = np.ascontiguousarray(mask[window], dtype=np.uint8)
    # Replicated borders: the image border is not part of the outline.
    inner = cv2.erode(crop, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    outline = crop.astype(bool) & ~inner.astype(bool)
    nearby = strongest_nearby[window][outline]
    on_outline = strength[window][outline]
    has_edge = nearby > 1e-3
    if not has_edge.any():
        return None
    return float(np.mean(on_outline[has_edge] / nearby[has_edge]))


def align_classes(pred: Instances, class_names: list[str]) -> tuple[Instances, set[str]]:
    """Re-index predictions to the dataset's classes by name; drop (and return) names the dataset lacks."""
    if not pred.class_names or list(pred.class_names) == list(class_names):
        return Instances(
            pred.boxes, pred.masks, pred.class_ids, pred.scores, tuple(class_names), dict(pred.data)
        ), set()
    position = {name: k for k, name in enumerate(class_names)}
    known = np.array([name in position for name in pred.class_labels], bool)
    unknown = {name for name in pred.class_labels if name not in position}
    kept = pred[known]
    class_ids = np.array([position[name] for name in kept.class_labels], np.int64)
    data = dict(kept.data)
    if "class_probs" in data:
        probs = np.zeros((len(kept), len(class_names)), np.float32)
        for k, name in enumerate(pred.class_names):
            if name in position:
                probs[:, position[name]] = data["class_probs"][:, k]
        data["class_probs"] = probs
    return Instances(kept.boxes, kept.masks, class_ids, kept.scores, tuple(class_names), data), unknown


def score_image(
    image: dict,
    gt: Instances,
    pred: Instances | None,
    settings: ReviewSettings,
    label_probs: dict[int, np.ndarray] | None = None,
    edges: tuple[np.ndarray, np.ndarray] | None = None,
    look: Appearance | None = None,
) -> tuple[list[dict], list[Pair]]:
    """Raw suggestions for one image, and the ``Pair`` of every matched label.

    ``pred`` must use the dataset's classes (see ``align_classes``); None means no model, so only
    duplicates are looked for. ``label_probs`` maps annotation ids to the model's (1 + K) class
    probabilities for the label's box (background first). ``edges`` is ``image_edges`` of the
    image (None: outlines are not checked against the image), and ``look`` the image's
    ``appearance`` from its non-crowd labels in order (None: not used). Suggestions come back as dicts
    without ``id``; ``bad_mask`` candidates carry their evidence, a score of None, set by
    ``review`` once the dataset-wide reference agreement is known, and ``pair``, the index of
    their own entry in the second list.
    """
    crowd = gt.data.get("iscrowd", np.zeros(len(gt), bool)).astype(bool)
    labels = gt[~crowd]
    ann_ids = [int(v) for v in labels.data["annotation_id"]]
    label_rles = labels.rles()
    base = {"image_id": int(image["id"]), "file_name": image["file_name"]}
    # The appearance witness counts in proportion to how far it tells this image's objects from its background.
    look_weight = settings.appearance_weight * look.reliability if look is not None else 0.0
    labelled: np.ndarray = np.any(labels.masks, axis=0)
    suggestions: list[dict] = []

    agreement = np.zeros(len(labels))  # how much the model backs each label (for choosing duplicates)
    pairs: list[Pair] = []
    if pred is not None:
        pred = pred[pred.scores >= settings.min_confidence]
        pred_rles = pred.rles()
        ious = mask_ops.iou(label_rles, pred_rles)
        scores = pred.scores.astype(float)
        probs = pred.data.get("class_probs")
        confident_in_image = float(scores.max()) if len(pred) else 0.0

        weight = np.where(ious >= settings.match_min_iou, ious * scores[None, :], 0.0)
        rows, cols = linear_sum_assignment(weight, maximize=True) if weight.size else ([], [])
        match = {int(r): int(c) for r, c in zip(rows, cols, strict=True) if weight[r, c] > 0}
        pred_ious = mask_ops.iou(pred_rles, pred_rles) if len(pred) else np.zeros((0, 0))

        # A detection at full_support_confidence or above, at same_object_iou or above, fully backs a label.
        backing = np.minimum(1.0, scores / settings.full_support_confidence)[None, :] * np.minimum(
            1.0, ious / settings.same_object_iou
        )
        support = backing.max(1) if ious.size else np.zeros(len(labels))
        if ious.size:
            agreement = (ious * scores[None, :]).max(1)
        for g in range(len(labels)):
            label = {**base, "annotation_id": ann_ids[g], "class_name": labels.class_names[labels.class_ids[g]]}
            box_p = label_probs.get(ann_ids[g]) if label_probs is not None else None
            m = match.get(g)
            # How far the model is right about the image's other labels (its top confidence standing
            # in for this one's): a model that backs none of them is failing on this image (say, an
            # unfamiliar kind of picture), and its doubt is no evidence against a label.
            others = (support.sum() - support[g] + confident_in_image) / len(labels)
            trust = confident_in_image * min(1.0, others / settings.trusted_image_support)
            extra_evidence = {"support": round(float(support[g]), 4), "image_trust": round(float(trust), 4)}
            if box_p is not None:
                extra_evidence["p_background"] = round(float(box_p[0]), 4)
            verdict = float(box_p[0]) ** settings.background_weight if box_p is not None else 1.0
            extra_score = (1.0 - support[g]) * trust * verdict
            if look is not None:
                unlike = 1.0 - object_likeness(look, labels.masks[g])
                extra_evidence |= {"background_look": round(unlike, 4), "look_reliability": round(look.reliability, 4)}
                extra_score = extra_score ** (1.0 - look_weight) * unlike**look_weight
            if extra_score >= settings.min_score:
                suggestions.append(
                    {
                        **label,
                        "type": SuggestionType.EXTRA_LABEL,
                        "score": extra_score,
                        "suggested_class": None,
                        "evidence": extra_evidence,
                    }
                )
            if m is None:
                continue
            mask_iou = float(ious[g, m])
            fix = {"suggested_segmentation": pred_rles[m], "confidence": round(float(scores[m]), 4)}
            if mask_iou >= settings.same_object_iou and len(labels.class_names) > 1:
                own = int(labels.class_ids[g])
                detected_p = _class_evidence(m, pred, pred_ious, probs, settings.same_object_iou)
                # The verdict on the label's own box, when there is one, answers the question asked.
                class_p = np.asarray(box_p[1:], float) if box_p is not None else detected_p
                margin = class_p - class_p[own]
                margin[own] = -np.inf
                best = int(margin.argmax())
                if margin[best] >= settings.min_score:
                    evidence = {
                        "p_label_class": round(float(detected_p[own]), 4),
                        "p_suggested_class": round(float(detected_p[best]), 4),
                        "mask_iou": round(mask_iou, 4),
                    }
                    if box_p is not None:
                        evidence |= {
                            "box_p_label_class": round(float(class_p[own]), 4),
                            "box_p_suggested_class": round(float(class_p[best]), 4),
                        }
                    suggestions.append(
                        {
                            **label,
                            **fix,
                            "type": SuggestionType.WRONG_CLASS,
                            "score": float(margin[best]),
                            "suggested_class": labels.class_names[best],
                            "evidence": evidence,
                        }
                    )
            quality = boundary_iou(labels.masks[g], pred.masks[m], settings.boundary_width)
            alignment = edge_alignment(labels.masks[g], *edges) if edges is not None else None
            fit = outline_fit(look, labels.masks[g], labelled) if look is not None else None
            pairs.append(Pair(float(scores[m]), mask_iou, quality, alignment, fit, look_weight))
            if mask_iou <= settings.missing_max_iou:
                continue
            evidence = {"mask_iou": round(mask_iou, 4), "boundary_iou": round(quality, 4)}
            if alignment is not None:
                evidence["edge_alignment"] = round(alignment, 4)
            if fit is not None:
                evidence["outline_look"] = round(fit, 4)
            suggestions.append(
                {
                    **label,
                    **fix,
                    "type": SuggestionType.BAD_MASK,
                    "score": None,
                    "pair": len(pairs) - 1,
                    "suggested_class": labels.class_names[labels.class_ids[g]],
                    "evidence": evidence,
                }
            )

        regions, region_class = [], None
        if look is not None:
            regions = unlabelled_objects(look, labels.masks)
            region_class = labels.class_names[int(np.bincount(labels.class_ids).argmax())]
        suggestions += _missing(
            base, pred, pred_rles, ious, set(match.values()), gt[crowd], settings, regions, region_class
        )

    suggestions += _duplicates(base, labels, label_rles, ann_ids, agreement, settings)
    return suggestions, pairs


def _class_evidence(
    m: int, pred: Instances, pred_ious: np.ndarray, probs: np.ndarray | None, same_object_iou: float
) -> np.ndarray:
    """Probability of each class for the object of prediction ``m``.

    With ``class_probs`` these are the model's own. Without, a detector that keeps one box per
    class still says how much it believes each class: the best score of each class among the
    predictions of the same object.
    """
    if probs is not None:
        return np.asarray(probs[m], float)
    same = pred_ious[m] >= same_object_iou
    same[m] = True
    evidence = np.zeros(len(pred.class_names))
    np.maximum.at(evidence, pred.class_ids[same], pred.scores[same].astype(float))
    return evidence


def _missing(
    base: dict,
    pred: Instances,
    pred_rles: list[dict],
    ious: np.ndarray,
    matched: set[int],
    crowd: Instances,
    settings: ReviewSettings,
    regions: Sequence[tuple[np.ndarray, float]] = (),
    region_class: str | None = None,
) -> list[dict]:
    """Objects no label covers: unmatched confident predictions that no label overlaps, one per object
    (greedy by confidence), and the image's own unlabelled object-like ``regions`` (with their scores).

    A prediction and a region showing the same object (mask IoU >= ``same_object_iou``) are two
    independent witnesses: score = 1 - (1 - prediction's) (1 - region's), the model's mask as the
    fix. A region no prediction shows is suggested with ``region_class`` (the class most of the
    image's labels have).
    """
    nearest = ious.max(0) if ious.size else np.zeros(len(pred))
    crowd_rles = crowd.rles()
    in_crowd = _inside_crowd(pred_rles, crowd_rles)
    second_look = pred.data.get("box_score", np.ones(len(pred)))
    found: list[int] = []
    out = []
    for j in np.argsort(-pred.scores, kind="stable"):
        j = int(j)
        if j in matched or in_crowd[j] or nearest[j] > settings.missing_max_iou:
            continue
        if found and mask_ops.iou([pred_rles[j]], [pred_rles[k] for k in found]).max() >= settings.same_object_iou:
            continue
        found.append(j)
        score = float(pred.scores[j]) * (1.0 - float(nearest[j])) * float(second_look[j])
        evidence = {"iou_with_labels": round(float(nearest[j]), 4)}
        if "box_score" in pred.data:
            evidence["box_score"] = round(float(second_look[j]), 4)
        out.append(
            {
                **base,
                "type": SuggestionType.MISSING_LABEL,
                "score": score,
                "annotation_id": None,
                "class_name": None,
                "suggested_class": pred.class_names[pred.class_ids[j]],
                "suggested_segmentation": pred_rles[j],
                "confidence": round(float(pred.scores[j]), 4),
                "evidence": evidence,
            }
        )
    region_rles = [mask_ops.encode(mask) for mask, _ in regions]
    outside = ~_inside_crowd(region_rles, crowd_rles)
    region_rles = [rle for rle, keep in zip(region_rles, outside, strict=True) if keep]
    region_scores = [score for (_, score), keep in zip(regions, outside, strict=True) if keep]
    overlap = (
        mask_ops.iou(region_rles, [item["suggested_segmentation"] for item in out]) if region_rles and out else None
    )
    for r, (rle, region_score) in enumerate(zip(region_rles, region_scores, strict=True)):
        if overlap is not None and overlap[r].max() >= settings.same_object_iou:
            item = out[int(overlap[r].argmax())]
            item["score"] = 1.0 - (1.0 - item["score"]) * (1.0 - region_score)
            item["evidence"]["image_look"] = max(item["evidence"].get("image_look", 0.0), round(region_score, 4))
            continue
        out.append(
            {
                **base,
                "type": SuggestionType.MISSING_LABEL,
                "score": region_score,
                "annotation_id": None,
                "class_name": None,
                "suggested_class": region_class,
                "suggested_segmentation": rle,
                "confidence": None,
                "evidence": {"image_look": round(region_score, 4)},
            }
        )
    return [item for item in out if item["score"] >= settings.min_score]


def _inside_crowd(rles: list[dict], crowd_rles: list[dict]) -> np.ndarray:
    """Which masks lie in a crowd region, by COCO's rule: IoU with a crowd region is the intersection
    over the mask's own area, and 0.5 or more counts as inside."""
    if not rles or not crowd_rles:
        return np.zeros(len(rles), bool)
    return mask_ops.iou(rles, crowd_rles, [True] * len(crowd_rles)).max(1) >= 0.5


def _duplicates(
    base: dict, labels: Instances, rles: list[dict], ann_ids: list[int], agreement: np.ndarray, settings: ReviewSettings
) -> list[dict]:
    """Pairs of same-class labels covering the same pixels; the copy the model backs less is to go."""
    if len(labels) < 2:
        return []
    ious = mask_ops.iou(rles, rles)
    out = []
    t = settings.duplicate_min_iou
    for a, b in zip(*np.nonzero(np.triu(ious, 1) >= t), strict=True):
        a, b = int(a), int(b)
        if labels.class_ids[a] != labels.class_ids[b]:
            continue
        # Remove the less supported copy; on a tie, the later one (higher annotation id).
        keep, drop = (a, b) if (agreement[a], -ann_ids[a]) >= (agreement[b], -ann_ids[b]) else (b, a)
        overlap = float(ious[a, b])
        out.append(
            {
                **base,
                "type": SuggestionType.DUPLICATE,
                "score": 0.5 + 0.5 * (overlap - t) / (1.0 - t),
                "annotation_id": ann_ids[drop],
                "other_annotation_id": ann_ids[keep],
                "class_name": labels.class_names[labels.class_ids[drop]],
                "suggested_class": None,
                "evidence": {"mask_iou": round(overlap, 4)},
            }
        )
    return out


def _robust_reference(values: list[float]) -> tuple[float, float]:
    """Median and robust standard deviation (1.4826 MAD, at least 0.02) of ``values``."""
    median = float(np.median(values))
    return median, max(0.02, 1.4826 * float(np.median(np.abs(np.asarray(values) - median))))


def bad_mask_scorer(
    pairs_by_image: dict[int, list[Pair]], settings: ReviewSettings
) -> tuple[Callable[[int, int], tuple[float, dict[str, float]]], dict[str, float | None]]:
    """The mapping from a matched label to the probability that its mask is wrong.

    The references are the labels the model is confident about (mostly correct ones): median and
    robust spread of their boundary IoU with the model, of their edge alignment, and of their
    outline's fit with the image's look (``appearance.outline_fit``). Each label is compared with
    its image's other confident matches, pooled with the whole dataset's (see
    ``ReviewSettings.image_reference_matches``): on an image of low contrast or an unusual stain,
    correct outlines agree less with the model and follow weaker edges, and only the image's own
    labels know by how much. A label z_i robust spreads below witness i's reference has
    z = sum(w_i z_i) / sqrt(sum(w_i^2)), independent pieces of evidence: the model and the edges
    weigh 1 - w each and the look w, its weight on the image (``appearance_weight`` x reliability).
    It scores confidence x logistic(2 (z - 2)): about 0.5 at z = 2, 0.9 at z = 3.

    Returns ``(score, reference)``: ``score(image_id, index)`` for the ``index``-th pair of that
    image gives the score and the references used (evidence for the report); ``reference`` holds
    the dataset's.
    """
    witnesses = ("boundary_iou", "edge_alignment", "outline_look")

    def confident(pairs: list[Pair]) -> list[Pair]:
        return [p for p in pairs if p.confidence >= CONFIDENT_MATCH]

    everything = [p for pairs in pairs_by_image.values() for p in pairs]
    typical = confident(everything) or everything
    dataset_reference: dict[str, tuple[float, float]] = {}
    for name in witnesses:
        values = [getattr(p, name) for p in typical if getattr(p, name) is not None]
        if values or name == "boundary_iou":
            dataset_reference[name] = _robust_reference(values or [1.0])

    def pooled(values: list[float], dataset: tuple[float, float]) -> tuple[float, float]:
        if len(values) < settings.min_image_matches:
            return dataset
        weight = len(values) / (len(values) + settings.image_reference_matches)
        own_median, own_spread = _robust_reference(values)
        median, spread = dataset
        return weight * own_median + (1 - weight) * median, weight * own_spread + (1 - weight) * spread

    def score(image_id: int, index: int) -> tuple[float, dict[str, float]]:
        pairs = pairs_by_image[image_id]
        pair = pairs[index]
        others = confident(pairs[:index] + pairs[index + 1 :])
        weights = {
            "boundary_iou": 1.0 - pair.look_weight,
            "edge_alignment": 1.0 - pair.look_weight,
            "outline_look": pair.look_weight,
        }
        total, norm, used = 0.0, 0.0, {}
        for name in witnesses:
            value = getattr(pair, name)
            if value is None or name not in dataset_reference or weights[name] == 0.0:
                continue
            median, spread = pooled(
                [getattr(p, name) for p in others if getattr(p, name) is not None], dataset_reference[name]
            )
            total += weights[name] * (median - value) / spread
            norm += weights[name] ** 2
            used[f"reference_{name}"] = round(median, 4)
        z = total / math.sqrt(norm) if norm else 0.0
        return float(pair.confidence / (1.0 + math.exp(-2.0 * (z - 2.0)))), used

    reference: dict[str, float | None] = {
        "median_mask_iou": round(float(np.median([p.mask_iou for p in typical])), 4) if typical else None
    }
    for name, (median, spread) in dataset_reference.items():
        reference |= {f"median_{name}": round(median, 4), f"{name}_spread": round(spread, 4)}
    return score, reference


def review(
    dataset: Dataset,
    predictions: dict[int, Instances] | None,
    settings: ReviewSettings | None = None,
    label_probs: dict[int, np.ndarray] | None = None,
    read_image: Callable[[dict], np.ndarray] | None = None,
) -> tuple[list[Suggestion], dict]:
    """Rank suspected label errors in ``dataset`` from out-of-sample ``predictions``.

    Args:
        dataset: the labels to review.
        predictions: image id -> predicted ``Instances`` from a model that never saw these
            images' labels (an image missing from the dict counts as "the model found nothing").
            None reviews without a model: only duplicates are found.
        settings: rule thresholds; the defaults suit most datasets.
        label_probs: annotation id -> the same model's (1 + K) class probabilities for the label's
            box, background first and then the dataset's classes (``sources.judge``); they sharpen
            the extra-label and wrong-class scores. A label missing from the dict is judged without.
        read_image: image record -> its (H, W, 3) RGB pixels (e.g. ``dataset.read_image``); with it,
            each matched label's outline is also checked against the image's edges (bad_mask).
            Images are read only when they hold both labels and a model's predictions.

    Returns:
        ``(suggestions, info)``: suggestions sorted worst first with ``id`` 1, 2, ...; ``info``
        holds ``warnings`` (prediction classes the dataset lacks; masks too coarse to judge outlines by,
        see ``SHARP_OUTLINE_IOU``) and the ``bad_mask_reference``.
    """
    settings = settings or ReviewSettings()
    raw: list[dict] = []
    pairs: dict[int, list[Pair]] = {}
    unknown: set[str] = set()
    for image in events.track(dataset.images, "review", unit="img"):
        gt = dataset.ground_truth(image)
        pred = edges = look = None
        if predictions is not None:
            pred = predictions.get(image["id"]) or Instances.empty(image["height"], image["width"], dataset.class_names)
            pred, dropped = align_classes(pred, dataset.class_names)
            unknown |= dropped
            labels = gt.masks[~gt.data.get("iscrowd", np.zeros(len(gt), bool)).astype(bool)]
            if read_image is not None and len(labels):  # outlines and looks to check only where labels exist
                pixels = read_image(image)
                if len(pred):
                    edges = image_edges(pixels, settings.edge_radius)
                side = object_size(dataset, image)
                if settings.appearance_weight > 0 and side:
                    look = appearance(pixels, labels, side)
        found, pairs[image["id"]] = score_image(image, gt, pred, settings, label_probs, edges, look)
        raw += found

    scorer, reference = bad_mask_scorer(pairs, settings)
    for item in raw:
        if item["type"] is SuggestionType.BAD_MASK:
            item["score"], used = scorer(item["image_id"], item.pop("pair"))
            item["evidence"] |= used
    kept = [item for item in raw if item["score"] >= settings.min_score]
    kept.sort(key=lambda item: (-item["score"], item["image_id"], item["annotation_id"] or 0, item["type"]))
    suggestions = [
        Suggestion(id=k + 1, **{**item, "score": round(float(item["score"]), 4)}) for k, item in enumerate(kept)
    ]
    warnings = []
    if unknown:
        warnings.append(f"ignored predictions of classes the dataset does not have: {', '.join(sorted(unknown))}")
    outline_agreement = reference["median_mask_iou"]
    if outline_agreement is not None and outline_agreement < SHARP_OUTLINE_IOU:
        warnings.append(
            f"the model's masks agree with the labels it is surest of at median mask IoU {outline_agreement:.2f}, "
            "so a label drawn about that far off looks like the model's own error: bad-mask scores rest "
            "mostly on the image's edges and look (a model with sharper masks, e.g. trained longer, finds more)"
        )
    return suggestions, {"warnings": warnings, "bad_mask_reference": reference}
