"""Apply the accepted suggestions of a review to its dataset, touching nothing else.

Every annotation that no accepted suggestion concerns stays the very same dict (same keys, same
values, same position); added labels go at the end. A label removed by one suggestion cannot be
changed by another: that one is reported as skipped.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable

from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.data.dataset import Dataset
from instaseg.review.score import SuggestionType

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


class IdRanges:
    """A set of suggestion ids held as inclusive intervals, so that ``1-1000000000`` costs two numbers.

    ``id in ranges`` tests membership; ``ranges.outside(ids)`` says which of its ids are not in ``ids``.
    """

    def __init__(self, intervals: Iterable[tuple[int, int]] = ()) -> None:
        merged: list[tuple[int, int]] = []
        for first, last in sorted(intervals):
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        self.intervals = merged
        self._firsts = [first for first, _ in merged]

    @classmethod
    def of(cls, ids: IdRanges | Iterable[int]) -> IdRanges:
        """The ranges of some ids (themselves ranges, or any iterable of ints)."""
        return ids if isinstance(ids, IdRanges) else cls((int(i), int(i)) for i in ids)

    def __contains__(self, id_: object) -> bool:
        if not isinstance(id_, int):
            return False
        k = bisect.bisect_right(self._firsts, id_) - 1
        return k >= 0 and id_ <= self.intervals[k][1]

    def __bool__(self) -> bool:
        return bool(self.intervals)

    def outside(self, ids: Iterable[int]) -> IdRanges:
        """The ids of these ranges that are not among ``ids``."""
        known = sorted(set(ids))
        gaps = []
        for first, last in self.intervals:
            start = first
            for id_ in known[bisect.bisect_left(known, first) : bisect.bisect_right(known, last)]:
                if id_ > start:
                    gaps.append((start, id_ - 1))
                start = id_ + 1
            if start <= last:
                gaps.append((start, last))
        return IdRanges(gaps)

    def __str__(self) -> str:
        return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in self.intervals)


def parse_ids(text: str | None) -> IdRanges:
    """Suggestion ids from ``"3,7,10-12"`` (ranges inclusive); empty for None or ``""``."""
    intervals = []
    for part in (text or "").replace(" ", "").split(","):
        if not part:
            continue
        found = _RANGE.match(part)
        if not found:
            raise InstasegError(f"cannot read suggestion ids {text!r}: expected e.g. 3,7,10-12")
        first, last = int(found[1]), int(found[2] or found[1])
        if last < first:
            raise InstasegError(f"cannot read suggestion ids {text!r}: the range {part} runs backwards")
        intervals.append((first, last))
    return IdRanges(intervals)


def parse_accept(text: str) -> tuple[IdRanges, float | None]:
    """``--accept`` as (ids, min score): ``"3,7,10-12"``, ``"all"`` or ``"all-above 0.8"`` (also ``all-above=0.8``)."""
    value = text.strip()
    if value == "all":
        return IdRanges(), 0.0
    if value.startswith("all-above"):
        rest = value[len("all-above") :].strip().lstrip("=:").strip()
        try:
            return IdRanges(), float(rest)
        except ValueError:
            raise InstasegError(
                f"cannot read --accept {text!r}: expected all-above SCORE, e.g. 'all-above 0.8'"
            ) from None
    return parse_ids(value), None


def apply_review(
    review: dict,
    dataset: Dataset,
    *,
    accept: IdRanges | Iterable[int] = (),
    accept_above: float | None = None,
    reject: IdRanges | Iterable[int] = (),
) -> tuple[Dataset, list[dict]]:
    """Return the corrected dataset and the list of changes made (or skipped).

    Args:
        review: the ``review.json`` document.
        dataset: the dataset the review was made on (it is not modified).
        accept: ids of the suggestions to apply (an ``IdRanges`` or any iterable of ints).
        accept_above: also apply every suggestion scoring at least this.
        reject: ids never to apply, whatever ``accept`` and ``accept_above`` say (the same two kinds).

    Raises:
        InstasegError: if ``accept`` or ``reject`` names an id that no suggestion has.
    """
    suggestions = {s["id"]: s for s in review.get("suggestions", [])}
    accept, reject = IdRanges.of(accept), IdRanges.of(reject)
    unknown = IdRanges(accept.intervals + reject.intervals).outside(suggestions)
    if unknown:
        held = IdRanges.of(suggestions) or "none"
        raise InstasegError(
            f"the review has no suggestion with id {_shortened(str(unknown))} (its ids: {_shortened(str(held))})"
        )
    chosen = [
        (s, _type(s))
        for s in suggestions.values()
        if (s["id"] in accept or (accept_above is not None and s["score"] >= accept_above)) and s["id"] not in reject
    ]
    # Removals first, so that a removed label is not also edited; then in rank order.
    chosen.sort(key=lambda item: (not item[1].removes_label, item[0]["id"]))

    fixed = dataset.copy()
    by_id = {ann["id"]: ann for ann in fixed.annotations}
    category_by_name = {cat["name"]: cat["id"] for cat in fixed.categories}
    removed: dict[int, int] = {}  # annotation id -> suggestion id that removed it
    added: list[dict] = []
    next_id = max(by_id, default=0) + 1
    # Added labels take the style most of the dataset's labels have.
    polygon_dataset = 2 * sum(isinstance(ann["segmentation"], list) for ann in fixed.annotations) > len(
        fixed.annotations
    )
    changes: list[dict] = []
    for s, kind in chosen:
        change = {
            "suggestion": s["id"],
            "type": s["type"],
            "image_id": s["image_id"],
            "annotation_id": s["annotation_id"],
        }
        target = by_id.get(s["annotation_id"]) if s["annotation_id"] is not None else None
        if kind is not SuggestionType.MISSING_LABEL and target is None:
            raise InstasegError(
                f"annotation id {s['annotation_id']} is not in the dataset (was the dataset changed since the review?)",
                file=dataset.source,
                record=f"suggestion {s['id']}",
            )
        if s["annotation_id"] in removed:
            changes.append(
                {**change, "action": "skipped", "reason": f"label removed by suggestion {removed[s['annotation_id']]}"}
            )
            continue
        change["action"] = kind.applied_as
        if kind.removes_label:
            removed[s["annotation_id"]] = s["id"]
            changes.append(change)
        elif kind is SuggestionType.WRONG_CLASS:
            assert target is not None  # checked above: only a missing label has none
            new_category = _category(category_by_name, s)
            changes.append({**change, "from": target["category_id"], "to": new_category})
            target["category_id"] = new_category
        elif kind is SuggestionType.BAD_MASK:
            assert target is not None  # checked above: only a missing label has none
            image = fixed.image_by_id[target["image_id"]]
            _set_mask(target, s["suggested_segmentation"], image, polygons=isinstance(target["segmentation"], list))
            changes.append(change)
        else:  # a missing label
            image_of_new = fixed.image_by_id.get(s["image_id"])
            if image_of_new is None:
                raise InstasegError(
                    f"image id {s['image_id']} is not in the dataset",
                    file=dataset.source,
                    record=f"suggestion {s['id']}",
                )
            new = {
                "id": next_id,
                "image_id": s["image_id"],
                "category_id": _category(category_by_name, s),
                "iscrowd": 0,
            }
            _set_mask(new, s["suggested_segmentation"], image_of_new, polygons=polygon_dataset)
            added.append(new)
            changes.append({**change, "annotation_id": next_id})
            next_id += 1

    fixed.remove_annotations(removed)
    fixed.add_annotations(added)
    changes.sort(key=lambda c: c["suggestion"])
    return fixed, changes


def _type(suggestion: dict) -> SuggestionType:
    """The type of a suggestion read from a review.json, refused when this version does not know it."""
    try:
        # mypy reads the member fields of ``__new__`` as required, but a lookup by value takes the value alone.
        return SuggestionType(suggestion["type"])  # type: ignore[call-arg]
    except ValueError:
        raise InstasegError(
            f"unknown suggestion type {suggestion['type']!r}", record=f"suggestion {suggestion['id']}"
        ) from None


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


def _shortened(text: str, limit: int = 80) -> str:
    """``text`` cut at a comma near ``limit`` characters: an error line names ids, it does not list thousands."""
    cut = text.rfind(",", 0, limit)
    return text if len(text) <= limit or cut < 0 else text[:cut] + ",..."
