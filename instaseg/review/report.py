"""The review's outputs: ``review.json``, ``review.csv``, one picture per suggestion and ``report.html``.

Each picture shows the labels around the suspect instance before (left) and after (right) the
suggested fix, cropped with context and enlarged so small objects stay visible. The HTML page is
self-contained (inline CSS and JS, no network) and links the pictures by relative path, so the
output folder can be zipped and opened anywhere.
"""

from __future__ import annotations

import csv
import html
import io as text_io
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from instaseg.core import events, io
from instaseg.core import masks as mask_ops
from instaseg.core.structures import Instances
from instaseg.data.dataset import Dataset
from instaseg.review.score import SuggestionType

PANEL_SIZE = 256  # long side of each half of a picture, in pixels
_HEADER = 22
_CSV_FIELDS = (
    "id",
    "type",
    "score",
    "image_id",
    "file_name",
    "annotation_id",
    "class_name",
    "suggested_class",
    "confidence",
    "other_annotation_id",
)
# Types whose fixed panel shows an instance of the fix's own: the model's mask, or the copy that stays.
_FOCUS_AFTER = (SuggestionType.MISSING_LABEL, SuggestionType.BAD_MASK, SuggestionType.DUPLICATE)


def picture_name(suggestion: dict) -> str:
    """Where a suggestion's picture goes in the report folder."""
    return f"pictures/{suggestion['id']:05d}-{suggestion['type']}.jpg"


def write_outputs(folder: Path, document: dict, dataset: Dataset, max_pictures: int = 200) -> None:
    """Write every output of a review into ``folder`` (an empty, existing directory)."""
    suggestions = document["suggestions"]
    drawn = suggestions[:max_pictures]
    if drawn:
        (folder / "pictures").mkdir()
    pictures: dict[int, str] = {}
    for suggestion in events.track(drawn, "pictures", unit="pic"):
        pixels = suggestion_picture(dataset, suggestion)
        if pixels is not None:
            io.write_image(folder / picture_name(suggestion), pixels)
            pictures[suggestion["id"]] = picture_name(suggestion)
    io.write_json(folder / "review.json", document, indent=True)
    io.write_text(folder / "review.csv", review_csv(suggestions, pictures))
    io.write_text(folder / "report.html", review_html(document, pictures))


def review_csv(suggestions: list[dict], pictures: dict[int, str]) -> str:
    """One row per suggestion, worst first (every evidence number in a column of its own)."""
    evidence = sorted({key for s in suggestions for key in s["evidence"]})
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*_CSV_FIELDS, *evidence, "picture"], lineterminator="\n")
    writer.writeheader()
    for s in suggestions:
        row = {key: s.get(key) for key in _CSV_FIELDS} | {key: s["evidence"].get(key) for key in evidence}
        row["picture"] = pictures.get(s["id"], "")
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


# -- pictures ------------------------------------------------------------------------------------------
def suggestion_picture(dataset: Dataset, suggestion: dict) -> np.ndarray | None:
    """Labels before | after the fix, around the suggestion's instance; None if its image is gone."""
    from instaseg.viz import draw_instances

    image = dataset.image_by_id.get(suggestion["image_id"])
    if image is None:
        return None
    pixels = dataset.read_image(image)
    labels = dataset.ground_truth(image)
    before, after = _before_after(labels, suggestion, dataset.class_names)
    # The instance in question is last in each panel where it appears (see _before_after).
    focus = np.zeros(labels.image_size, bool)
    if suggestion["annotation_id"] is not None and len(before):
        focus |= before.masks[-1]
    if suggestion["type"] in _FOCUS_AFTER and len(after):
        focus |= after.masks[-1]
    y0, y1, x0, x1 = _crop_box(focus)
    scale = min(8.0, PANEL_SIZE / max(y1 - y0, x1 - x0))
    crop = _resize(pixels[y0:y1, x0:x1], scale, cv2.INTER_LINEAR)
    panels = []
    for instances, title in ((before, "label"), (after, _fix_title(suggestion))):
        masks = (
            np.stack(
                [
                    _resize(np.ascontiguousarray(m[y0:y1, x0:x1], dtype=np.uint8), scale, cv2.INTER_NEAREST).astype(
                        bool
                    )
                    for m in instances.masks
                ]
            )
            if len(instances)
            else np.zeros((0, *crop.shape[:2]), bool)
        )
        visible = masks.reshape(len(masks), -1).any(1) if len(masks) else np.zeros(0, bool)
        shown = Instances.from_masks(masks[visible], instances.class_ids[visible], None, instances.class_names)
        drawn = draw_instances(crop, shown, show_scores=False)
        _mark(drawn, focus[y0:y1, x0:x1], scale)
        panels.append(_with_header(drawn, title))
    gap = np.full((panels[0].shape[0], 6, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1]], axis=1)


def _before_after(labels: Instances, s: dict, class_names: list[str]) -> tuple[Instances, Instances]:
    """The labels without and with the fix; the instance in question is put last in both."""
    ids = [int(v) for v in labels.data["annotation_id"]]
    subject = [ids.index(s["annotation_id"])] if s["annotation_id"] in ids else []
    others = [k for k in range(len(labels)) if k not in subject]
    if s["type"] == SuggestionType.DUPLICATE and s.get("other_annotation_id") in ids:
        keep = ids.index(s["other_annotation_id"])
        others = [k for k in others if k != keep] + [keep]
    before = labels[others + subject]
    rest = labels[others]
    # mypy reads the member fields of ``__new__`` as required, but a lookup by value takes the value alone.
    if SuggestionType(s["type"]).removes_label:  # type: ignore[call-arg]
        return before, rest
    if s["type"] == SuggestionType.MISSING_LABEL:
        new = Instances.from_masks(
            _suggested_mask(s, labels.image_size), [class_names.index(s["suggested_class"])], None, class_names
        )
        return before, _concat(rest, new)
    old = labels[subject]
    mask = _suggested_mask(s, labels.image_size) if s["type"] == SuggestionType.BAD_MASK else old.masks
    class_id = (
        class_names.index(s["suggested_class"]) if s.get("suggested_class") in class_names else int(old.class_ids[0])
    )
    return before, _concat(rest, Instances.from_masks(mask, [class_id], None, class_names))


def _suggested_mask(s: dict, image_size: tuple[int, int]) -> np.ndarray:
    """The mask a suggestion proposes, as a stack of one (missing labels and bad masks always carry one)."""
    return mask_ops.decode(s["suggested_segmentation"], *image_size)[None]


def _concat(a: Instances, b: Instances) -> Instances:
    return Instances.from_masks(
        np.concatenate([a.masks, b.masks]),
        np.concatenate([a.class_ids, b.class_ids]),
        None,
        a.class_names or b.class_names,
    )


def _crop_box(focus: np.ndarray) -> tuple[int, int, int, int]:
    """Rows and columns around ``focus`` with context on every side (the whole image if it is empty)."""
    height, width = focus.shape
    ys, xs = np.nonzero(focus)
    if len(xs) == 0:
        return 0, height, 0, width
    margin = max(16, int(0.75 * max(ys.max() - ys.min(), xs.max() - xs.min())))
    return (
        max(0, ys.min() - margin),
        min(height, ys.max() + 1 + margin),
        max(0, xs.min() - margin),
        min(width, xs.max() + 1 + margin),
    )


def _mark(panel: np.ndarray, focus: np.ndarray, scale: float) -> None:
    """Frame the instance in question (yellow box), so the eye finds it among its neighbours."""
    ys, xs = np.nonzero(focus)
    if len(xs):
        pad = 3
        top_left = (max(0, int(xs.min() * scale) - pad), max(0, int(ys.min() * scale) - pad))
        bottom_right = (
            min(panel.shape[1] - 1, int((xs.max() + 1) * scale) + pad),
            min(panel.shape[0] - 1, int((ys.max() + 1) * scale) + pad),
        )
        cv2.rectangle(panel, top_left, bottom_right, (255, 221, 0), 1, cv2.LINE_AA)


def _resize(array: np.ndarray, scale: float, interpolation: int) -> np.ndarray:
    size = (max(1, round(array.shape[1] * scale)), max(1, round(array.shape[0] * scale)))
    return cv2.resize(array, size, interpolation=interpolation)


def _fix_title(s: dict) -> str:
    kind = SuggestionType(s["type"])  # type: ignore[call-arg]  # a lookup by value, as above
    fix = kind.fix.format(suggested_class=s["suggested_class"])
    return f"{fix} ({s['score']:.2f})"


def _with_header(panel: np.ndarray, title: str) -> np.ndarray:
    header = np.full((_HEADER, panel.shape[1], 3), 255, np.uint8)
    text = title.encode("ascii", "replace").decode("ascii")
    cv2.putText(header, text, (4, _HEADER - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, panel], axis=0)


# -- HTML ----------------------------------------------------------------------------------------------
def review_html(document: dict, pictures: dict[int, str]) -> str:
    """A self-contained page: warnings, counts, and the suggestions worst first, filterable by type, class and score."""
    suggestions = document["suggestions"]
    counts = Counter(s["type"] for s in suggestions)
    classes = sorted({name for s in suggestions for name in (s["class_name"], s["suggested_class"]) if name})
    esc = html.escape
    type_options = "".join(f'<option value="{t}">{t} ({counts.get(t, 0)})</option>' for t in SuggestionType)
    class_options = "".join(f'<option value="{esc(c)}">{esc(c)}</option>' for c in classes)
    warnings = "".join(f'<p class="warn">&#9888; {esc(w)}</p>' for w in document.get("warnings", []))
    cards = "\n".join(_card(s, pictures.get(s["id"])) for s in suggestions)
    source = document.get("source", {})
    return _PAGE.format(
        title=esc(f"Label review: {Path(document.get('dataset') or 'dataset').name}"),
        dataset=esc(str(document.get("dataset"))),
        source=esc(f"{source.get('kind', '?')}: {source.get('path') or source.get('folds', '')}"),
        total=len(suggestions),
        summary=esc(", ".join(f"{counts[t]} {t}" for t in SuggestionType if counts.get(t))) or "none",
        warnings=warnings,
        type_options=type_options,
        class_options=class_options,
        cards=cards or '<p id="none">No suggestions: the model agrees with the labels.</p>',
        script=_SCRIPT,
    )


def _card(s: dict, picture: str | None) -> str:
    esc = html.escape
    classes = json.dumps([c for c in (s["class_name"], s["suggested_class"]) if c])
    what = esc(s["class_name"] or "")
    if s["suggested_class"] and s["suggested_class"] != s["class_name"]:
        what += f" &rarr; {esc(s['suggested_class'])}" if what else esc(s["suggested_class"])
    label = f"annotation {s['annotation_id']}" if s["annotation_id"] is not None else "new instance"
    if s.get("other_annotation_id") is not None:
        label += f" (copy of {s['other_annotation_id']})"
    evidence = ", ".join(f"{k} {v}" for k, v in s["evidence"].items())
    if s.get("confidence") is not None:
        evidence = f"model confidence {s['confidence']}" + (f", {evidence}" if evidence else "")
    image = (
        f'<img loading="lazy" src="{esc(picture)}" alt="suggestion {s["id"]}">'
        if picture
        else '<div class="nopic">no picture (over --max-pictures)</div>'
    )
    return (
        f'<div class="card" data-type="{s["type"]}" data-score="{s["score"]}" data-classes="{esc(classes)}">'
        f'{image}<div class="meta"><span class="rank">#{s["id"]}</span> '
        f'<span class="type t-{s["type"]}">{s["type"]}</span> '
        f'<span class="score">{s["score"]:.2f}</span><div class="bar"><div style="width:{100 * s["score"]:.0f}%"></div></div>'
        f'<div>{what}</div><div class="file">{esc(s["file_name"])} &middot; image {s["image_id"]} &middot; {label}</div>'
        f'<div class="ev">{esc(evidence)}</div></div></div>'
    )


_SCRIPT = """
const cards = Array.from(document.querySelectorAll('.card'));
function update() {
  const type = document.getElementById('type').value;
  const cls = document.getElementById('cls').value;
  const min = parseFloat(document.getElementById('min').value);
  document.getElementById('minv').textContent = min.toFixed(2);
  let shown = 0;
  for (const card of cards) {
    const ok = (!type || card.dataset.type === type)
      && (!cls || JSON.parse(card.dataset.classes).includes(cls))
      && parseFloat(card.dataset.score) >= min;
    card.style.display = ok ? '' : 'none';
    if (ok) shown++;
  }
  document.getElementById('shown').textContent = shown;
}
// A link such as report.html#type=bad_mask&min=0.5 opens with those filters set.
for (const [key, value] of new URLSearchParams(location.hash.slice(1))) {
  const input = document.getElementById(key);
  if (input) input.value = value;
}
for (const id of ['type', 'cls', 'min']) document.getElementById(id).addEventListener('input', update);
update();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f4f4f6; color: #222; }}
header {{ background: #fff; padding: 12px 20px; border-bottom: 1px solid #ddd; position: sticky; top: 0; z-index: 1; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }}
.sub {{ color: #666; }}
.warn {{ background: #fff4d6; border: 1px solid #e9c46a; padding: 6px 10px; margin: 6px 0; border-radius: 4px; }}
.filters {{ margin-top: 8px; display: flex; gap: 16px; align-items: center; flex-wrap: wrap; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 12px; padding: 16px 20px; }}
.card {{ background: #fff; border: 1px solid #ddd; border-radius: 6px; overflow: hidden; }}
.card img {{ display: block; max-width: 100%; height: auto; }}
.nopic {{ padding: 20px; color: #888; text-align: center; background: #fafafa; }}
.meta {{ padding: 8px 10px; }}
.rank {{ font-weight: 600; }}
.type {{ padding: 1px 6px; border-radius: 3px; color: #fff; font-size: 12px; }}
.t-missing_label {{ background: #2a9d8f; }} .t-extra_label {{ background: #e76f51; }}
.t-wrong_class {{ background: #8d5fd3; }} .t-bad_mask {{ background: #e9a23b; }} .t-duplicate {{ background: #457b9d; }}
.score {{ float: right; font-weight: 600; }}
.bar {{ height: 4px; background: #eee; margin: 4px 0; }} .bar div {{ height: 4px; background: #d62828; }}
.file, .ev {{ color: #666; font-size: 12px; word-break: break-all; }}
</style></head><body>
<header><h1>{title}</h1>
<div class="sub">dataset {dataset} &middot; predictions from {source} &middot; {total} suggestions: {summary}</div>
{warnings}
<div class="filters">
<label>type <select id="type"><option value="">all</option>{type_options}</select></label>
<label>class <select id="cls"><option value="">all</option>{class_options}</select></label>
<label>score &ge; <input id="min" type="range" min="0" max="1" step="0.01" value="0"> <span id="minv">0.00</span></label>
<span><span id="shown">{total}</span> shown</span>
</div></header>
<main>
{cards}
</main>
<script>{script}</script>
</body></html>
"""
