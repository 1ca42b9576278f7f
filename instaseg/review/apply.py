"""Apply the accepted suggestions of a review to its dataset, touching nothing else.

Every annotation that no accepted suggestion concerns stays the very same dict (same keys, same
values, same position); added labels go at the end. A label removed by one suggestion cannot be
changed by another: that one is reported as skipped.
"""

from __future__ import annotations

import re
from typing import Iterable

from instaseg import masks as mask_ops
from instaseg.data.dataset import Dataset
from instaseg.errors import InstasegError

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_ids(text: str | None) -> set[int]:
    """Suggestion ids from ``"3,7,10-12"`` (ranges inclusive); empty for None or ``""``."""
    ids: set[int] = set()
    for part in (text or "").replace(" ", "").split(","):
        if not part:
            continue
        found = _RANGE.match(part)
        if not found:
            raise InstasegError(f"cannot read suggestion ids {text!r}: expected e.g. 3,7,10-12")
        first, last = int(found[1]), int(found[2] or found[1])
        ids.update(range(first, last + 1))
    return ids


def parse_accept(text: str) -> tuple[set[int], float | None]:
    """``--accept`` as (ids, min score): ``"3,7,10-12"``, ``"all"`` or ``"all-above 0.8"`` (also ``all-above=0.8``)."""
    value = text.strip()
    if value == "all":
        return set(), 0.0
    if value.startswith("all-above"):
        rest = value[len("all-above"):].strip().lstrip("=:").strip()
        try:
            return set(), float(rest)
        except ValueError:
            raise InstasegError(f"cannot read --accept {text!r}: expected all-above SCORE, e.g. 'all-above 0.8'") from None
    return parse_ids(value), None


def apply_review(
    review: dict,
    dataset: Dataset,
    *,
    accept: Iterable[int] = (),
    accept_above: float | None = None,
    reject: Iterable[int] = (),
) -> tuple[Dataset, list[dict]]:
    """Return the corrected dataset and the list of changes made (or skipped).

    Args:
        review: the ``review.json`` document.
        dataset: the dataset the review was made on (it is not modified).
        accept: ids of the suggestions to apply.
        accept_above: also apply every suggestion scoring at least this.
        reject: ids never to apply, whatever ``accept`` and ``accept_above`` say.
    """
    suggestions = {s["id"]: s for s in review.get("suggestions", [])}
    accept, reject = set(accept), set(reject)
    unknown = sorted((accept | reject) - suggestions.keys())
    if unknown:
        raise InstasegError(f"the review has no suggestion with id {', '.join(map(str, unknown[:10]))}")
    chosen = [s for s in suggestions.values()
              if (s["id"] in accept or (accept_above is not None and s["score"] >= accept_above)) and s["id"] not in reject]
    # Removals first, so that a removed label is not also edited; then in rank order.
    chosen.sort(key=lambda s: (s["type"] not in ("extra_label", "duplicate"), s["id"]))

    fixed = dataset.copy()
    by_id = {ann["id"]: ann for ann in fixed.annotations}
    category_by_name = {cat["name"]: cat["id"] for cat in fixed.categories}
    removed: dict[int, int] = {}  # annotation id -> suggestion id that removed it
    added: list[dict] = []
    next_id = max(by_id, default=0) + 1
    # Added labels take the style most of the dataset's labels have.
    polygon_dataset = 2 * sum(isinstance(ann["segmentation"], list) for ann in fixed.annotations) > len(fixed.annotations)
    changes: list[dict] = []
    for s in chosen:
        change = {"suggestion": s["id"], "type": s["type"], "image_id": s["image_id"], "annotation_id": s["annotation_id"]}
        target = by_id.get(s["annotation_id"]) if s["annotation_id"] is not None else None
        if s["type"] != "missing_label" and target is None:
            raise InstasegError(f"annotation id {s['annotation_id']} is not in the dataset (was the dataset changed "
                                "since the review?)", file=dataset.source, record=f"suggestion {s['id']}")
        if s["annotation_id"] in removed:
            changes.append({**change, "action": "skipped", "reason": f"label removed by suggestion {removed[s['annotation_id']]}"})
            continue
        if s["type"] in ("extra_label", "duplicate"):
            removed[s["annotation_id"]] = s["id"]
            changes.append({**change, "action": "removed"})
        elif s["type"] == "wrong_class":
            new_category = _category(category_by_name, s)
            changes.append({**change, "action": "category", "from": target["category_id"], "to": new_category})
            target["category_id"] = new_category
        elif s["type"] == "bad_mask":
            image = fixed.image_by_id[target["image_id"]]
            _set_mask(target, s["suggested_segmentation"], image, polygons=isinstance(target["segmentation"], list))
            changes.append({**change, "action": "mask replaced"})
        elif s["type"] == "missing_label":
            image = fixed.image_by_id.get(s["image_id"])
            if image is None:
                raise InstasegError(f"image id {s['image_id']} is not in the dataset", file=dataset.source, record=f"suggestion {s['id']}")
            new = {"id": next_id, "image_id": s["image_id"], "category_id": _category(category_by_name, s), "iscrowd": 0}
            _set_mask(new, s["suggested_segmentation"], image, polygons=polygon_dataset)
            added.append(new)
            changes.append({**change, "action": "added", "annotation_id": next_id})
            next_id += 1
        else:
            raise InstasegError(f"unknown suggestion type {s['type']!r}", record=f"suggestion {s['id']}")

    fixed.coco["annotations"] = [ann for ann in fixed.annotations if ann["id"] not in removed] + added
    fixed.reindex()
    changes.sort(key=lambda c: c["suggestion"])
    return fixed, changes


def _category(category_by_name: dict[str, int], suggestion: dict) -> int:
    name = suggestion.get("suggested_class")
    if name not in category_by_name:
        raise InstasegError(f"class {name!r} is not a dataset class", record=f"suggestion {suggestion['id']}")
    return category_by_name[name]


def _set_mask(ann: dict, segmentation: dict | None, image: dict, polygons: bool) -> None:
    if not segmentation:
        raise InstasegError("has no suggested mask", record=f"annotation id {ann['id']}")
    mask = mask_ops.decode(segmentation, image["height"], image["width"])
    ann.update(mask_ops.annotation_fields(mask, polygons))
