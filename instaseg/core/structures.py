"""``Instances``: the one result type that flows from the model to evaluation, review, pictures and export."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from instaseg.core import masks as mask_ops


@dataclass
class Instances:
    """The instances found in (or annotated on) one image.

    Attributes:
        boxes: (N, 4) float32 boxes as [x1, y1, x2, y2] in pixels.
        masks: (N, H, W) boolean masks at the image's full resolution.
        class_ids: (N,) int64 indices into ``class_names``.
        scores: (N,) float32 confidences in [0, 1]; 1.0 for ground truth.
        class_names: the names that ``class_ids`` index.
        data: optional per-instance extras, each an array of length N
            (e.g. ``"annotation_id"`` for ground truth, ``"class_probs"`` (N, K) from a model).
    """

    boxes: np.ndarray
    masks: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    class_names: tuple[str, ...] = ()
    data: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Bring the fields to their dtypes and shapes, refusing counts or values that disagree."""
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.masks = np.asarray(self.masks, bool)
        self.class_ids = np.asarray(self.class_ids, np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        self.class_names = tuple(self.class_names)
        n = len(self.boxes)
        if self.masks.ndim != 3 or len(self.masks) != n:
            raise ValueError(f"masks must be (N, H, W) with N={n}, got {self.masks.shape}")
        per_instance: tuple[tuple[str, np.ndarray], ...] = (
            ("class_ids", self.class_ids),
            ("scores", self.scores),
            *self.data.items(),
        )
        for name, value in per_instance:
            if len(value) != n:
                raise ValueError(f"{name} has {len(value)} entries, expected {n}")
        if n and self.class_names and (self.class_ids.min() < 0 or self.class_ids.max() >= len(self.class_names)):
            raise ValueError(f"class_ids must lie in [0, {len(self.class_names)})")
        if n and not np.all(np.isfinite(self.scores)):
            raise ValueError("scores must be finite")

    @classmethod
    def empty(cls, height: int, width: int, class_names: Sequence[str] = ()) -> Instances:
        """No instances, on an image of ``height`` x ``width``."""
        return cls(np.zeros((0, 4)), np.zeros((0, height, width), bool), np.zeros(0), np.zeros(0), tuple(class_names))

    @classmethod
    def from_masks(
        cls,
        masks: np.ndarray,
        class_ids: ArrayLike,
        scores: ArrayLike | None = None,
        class_names: Sequence[str] = (),
        **data: np.ndarray,
    ) -> Instances:
        """Build from masks alone; boxes are the masks' tight boxes and scores default to 1."""
        masks = np.asarray(masks, bool)
        boxes = [mask_ops.box_from_mask(m) for m in masks]
        confidences = np.ones(len(masks)) if scores is None else np.asarray(scores)
        return cls(
            np.asarray(boxes).reshape(-1, 4), masks, np.asarray(class_ids), confidences, tuple(class_names), dict(data)
        )

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the image these instances belong to."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    @property
    def class_labels(self) -> list[str]:
        """The class name of each instance."""
        return [self.class_names[i] for i in self.class_ids]

    @property
    def areas(self) -> np.ndarray:
        """(N,) pixel count of each mask."""
        return self.masks.reshape(len(self), -1).sum(1)

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: Any) -> Instances:
        """A subset, selected by a boolean mask, an index array, a slice or an int."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Instances(
            self.boxes[index],
            self.masks[index],
            self.class_ids[index],
            self.scores[index],
            self.class_names,
            {k: v[index] for k, v in self.data.items()},
        )

    def filter(self, min_score: float = 0.0, classes: Sequence[str] | None = None) -> Instances:
        """Keep instances scoring at least ``min_score`` and, if given, of the named classes only."""
        keep = self.scores >= min_score
        if classes is not None:
            wanted = [self.class_names.index(c) for c in classes]
            keep &= np.isin(self.class_ids, wanted)
        return self[keep]

    def counts(self) -> dict[str, int]:
        """Number of instances per class name, every class listed (zero included)."""
        found = np.bincount(self.class_ids, minlength=len(self.class_names))
        return {name: int(found[i]) for i, name in enumerate(self.class_names)}

    def rles(self) -> list[dict]:
        """Each mask as a compressed COCO RLE (counts as str)."""
        return mask_ops.encode_many(self.masks)

    def to_coco(self, image_id: int, category_ids: Sequence[int], with_scores: bool = True) -> list[dict]:
        """COCO annotation (or results, when ``with_scores``) dicts with RLE masks.

        ``category_ids[k]`` is the COCO category id of ``class_names[k]``.
        """
        records = []
        for k, rle in enumerate(self.rles()):
            x1, y1, x2, y2 = (float(v) for v in self.boxes[k])
            record = {
                "image_id": int(image_id),
                "category_id": int(category_ids[self.class_ids[k]]),
                "segmentation": rle,
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "area": int(self.masks[k].sum()),
            }
            if with_scores:
                record["score"] = round(float(self.scores[k]), 5)
            records.append(record)
        return records
