"""Check problem kinds and review suggestion types as enums, and the progress and warnings that
check, show and review report as events."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from instaseg.core import events, io
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.core.structures import Instances
from instaseg.data import Dataset
from instaseg.data.check import (
    Problem,
    ProblemKind,
    Repair,
    Severity,
    check_dataset,
    fix_dataset,
)
from instaseg.review import apply_review, review, run_review
from instaseg.review.report import review_html, suggestion_picture, write_outputs
from instaseg.review.score import Suggestion, SuggestionType
from instaseg.viz import save_overlays

H = W = 48


def disc(cy, cx, r):
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def dataset_on_disk(tmp_path, masks_per_image, category_ids=None):
    """A COCO dataset of grey PNGs, one list of masks per image (all of category 1 unless told)."""
    images, annotations = [], []
    for image_id, masks in enumerate(masks_per_image, start=1):
        name = f"img{image_id}.png"
        Image.new("RGB", (W, H), (90, 90, 90)).save(tmp_path / name)
        images.append({"id": image_id, "file_name": name, "width": W, "height": H})
        for mask in masks:
            rle = mask_ops.encode(mask)
            category = category_ids.pop(0) if category_ids else 1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": rle,
                    "area": mask_ops.area(rle),
                    "bbox": mask_ops.bbox(rle),
                    "iscrowd": 0,
                }
            )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "ball"}, {"id": 2, "name": "box"}],
    }
    io.write_json(tmp_path / "data.json", coco)
    return Dataset.load(tmp_path / "data.json")


def collected():
    """A listener that keeps every event."""
    seen = []
    return seen, seen.append


def progress_of(seen, task):
    return [(e.done, e.total, e.finished) for e in seen if isinstance(e, events.Progress) and e.task == task]


# -- problem kinds -----------------------------------------------------------------------------------
def test_a_problem_takes_its_severity_from_its_kind_and_reads_kinds_given_as_names():
    problem = Problem("self-intersection", "polygon 0 crosses itself", section="annotations", index=0, annotation_id=4)
    assert problem.kind is ProblemKind.SELF_INTERSECTION and problem.severity is Severity.WARNING
    assert str(problem) == "warning: annotation id 4 (image id None): polygon 0 crosses itself"
    assert Problem(ProblemKind.BAD_RLE, "x").severity == "error"
    with pytest.raises(ValueError):
        Problem("no-such-kind", "x")


def test_problems_serialise_as_before_severity_first():
    problem = Problem(
        ProblemKind.UNKNOWN_CATEGORY,
        "category id 7 is not in the dataset",
        file="d.json",
        section="annotations",
        index=2,
        image_id=1,
        annotation_id=3,
    )
    assert io.dumps_json(problem.to_dict()) == (
        b'{"severity":"error","kind":"unknown-category","message":"category id 7 is not in the dataset",'
        b'"file":"d.json","section":"annotations","index":2,"image_id":1,"annotation_id":3}'
    )
    assert json.dumps(problem.to_dict()).startswith('{"severity": "error", "kind": "unknown-category"')


def test_every_kind_knows_whether_fix_repairs_it():
    not_fixable = {kind for kind in ProblemKind if not kind.fixable}
    assert not_fixable == {
        ProblemKind.NO_CATEGORIES,
        ProblemKind.NO_IMAGES,
        ProblemKind.DUPLICATE_FILE,
        ProblemKind.NO_INSTANCES,
        ProblemKind.SIZE_MISMATCH,
    }
    assert (
        ProblemKind.MISSING_IMAGE.repair is Repair.DROP_IMAGE
        and ProblemKind.AREA_MISMATCH.repair is Repair.RECOMPUTE_AREA
    )
    assert all(kind.description and kind.description != kind.value for kind in ProblemKind)
    assert len({kind.description for kind in ProblemKind}) == len(ProblemKind)


def test_fix_follows_the_kinds_repair(tmp_path):
    ds = dataset_on_disk(tmp_path, [[disc(20, 20, 6), disc(30, 34, 5)]], category_ids=[1, 9])
    ds.coco["annotations"][0]["iscrowd"] = 3
    ds.coco["annotations"][0]["area"] = 9999
    problems = check_dataset(ds, check_files=False)
    assert {(p.kind, p.kind.repair) for p in problems} == {
        ("bad-iscrowd", Repair.SET_ISCROWD),
        ("area-mismatch", Repair.RECOMPUTE_AREA),
        ("unknown-category", Repair.DROP_ANNOTATION),
    }
    fixed, changes = fix_dataset(ds, problems)
    assert [ann["id"] for ann in fixed.annotations] == [1]
    assert fixed.annotations[0]["iscrowd"] == 1 and fixed.annotations[0]["area"] == int(disc(20, 20, 6).sum())
    assert len(changes) == 3


def test_show_refuses_the_kinds_that_stop_it_and_draws_the_others(tmp_path):
    ds = dataset_on_disk(tmp_path, [[disc(20, 20, 6)], []])  # image 2 has no instances: only a warning
    assert [p.kind for p in check_dataset(ds)] == [ProblemKind.NO_INSTANCES]
    seen, listener = collected()
    with events.listen(listener):
        written = save_overlays(ds, tmp_path / "show")
    assert len(written) == 2
    assert progress_of(seen, "drawing") == [(0, 2, False), (1, 2, False), (2, 2, False), (2, 2, True)]

    ds.coco["annotations"][0]["category_id"] = 5
    assert ProblemKind.UNKNOWN_CATEGORY.stops_show
    with pytest.raises(InstasegError, match="cannot draw: .*category id 5 is not in the dataset"):
        save_overlays(ds, tmp_path / "show2")


def test_check_reports_progress_only_while_it_opens_the_files(tmp_path):
    ds = dataset_on_disk(tmp_path, [[disc(20, 20, 6)], [disc(10, 10, 4)], [disc(30, 30, 5)]])
    seen, listener = collected()
    with events.listen(listener):
        assert check_dataset(ds) == []
        assert check_dataset(ds, check_files=False) == []
    assert progress_of(seen, "checking images") == [
        (0, 3, False),
        (1, 3, False),
        (2, 3, False),
        (3, 3, False),
        (3, 3, True),
    ]


# -- suggestion types --------------------------------------------------------------------------------
def test_suggestion_types_keep_their_names_and_order():
    assert [str(t) for t in SuggestionType] == ["missing_label", "extra_label", "wrong_class", "bad_mask", "duplicate"]
    assert [t for t in SuggestionType if t.removes_label] == [SuggestionType.EXTRA_LABEL, SuggestionType.DUPLICATE]
    suggestion = Suggestion(
        id=1,
        type="bad_mask",
        score=0.5,
        image_id=1,
        file_name="a.png",
        annotation_id=2,
        class_name="ball",
        suggested_class="ball",
    )
    assert suggestion.type is SuggestionType.BAD_MASK
    assert io.dumps_json(suggestion.to_dict()).startswith(b'{"id":1,"type":"bad_mask","score":0.5,')


def _review_case(tmp_path):
    """Image 1: a labelled ball the model backs and an unlabelled one it finds; image 2: a label twice."""
    ball, other = disc(14, 14, 7), disc(34, 34, 8)
    ds = dataset_on_disk(tmp_path, [[ball], [other, other]])
    found = Instances.from_masks(np.stack([ball, other]), [0, 0], [0.95, 0.9], ("ball", "box"))
    backed = Instances.from_masks(other[None], [0], [0.95], ("ball", "box"))
    return ds, {1: found, 2: backed}


def test_review_reports_progress_and_the_report_lists_the_types_in_order(tmp_path):
    ds, predictions = _review_case(tmp_path)
    seen, listener = collected()
    with events.listen(listener):
        suggestions, _ = review(ds, predictions)
    assert progress_of(seen, "review") == [(0, 2, False), (1, 2, False), (2, 2, False), (2, 2, True)]
    assert [(s.type, s.image_id) for s in suggestions] == [("duplicate", 2), ("missing_label", 1)]
    document = {"suggestions": [s.to_dict() for s in suggestions], "warnings": []}
    html = review_html(document, {})
    assert (
        '<option value="missing_label">missing_label (1)</option><option value="extra_label">extra_label (0)</option>'
        in html
    )
    assert "1 missing_label, 1 duplicate" in html
    assert [t.fix.format(suggested_class="ball") for t in SuggestionType] == [
        "add ball",
        "remove",
        "relabel ball",
        "redraw mask",
        "remove copy",
    ]

    (tmp_path / "out").mkdir()
    with events.listen(listener):
        write_outputs(tmp_path / "out", document, ds)
    assert progress_of(seen, "pictures")[-1] == (2, 2, True)
    assert sorted(p.name for p in (tmp_path / "out" / "pictures").iterdir()) == [
        "00001-duplicate.jpg",
        "00002-missing_label.jpg",
    ]
    picture = suggestion_picture(ds, document["suggestions"][1])
    assert picture.ndim == 3 and picture.shape[1] > picture.shape[0]  # label | fix, side by side


def test_apply_follows_each_type_and_refuses_an_unknown_one(tmp_path):
    ds, predictions = _review_case(tmp_path)
    suggestions, _ = review(ds, predictions)
    document = {
        "suggestions": json.loads(io.dumps_json([s.to_dict() for s in suggestions]))
    }  # as read from review.json
    fixed, changes = apply_review(document, ds, accept=[1, 2])
    assert [(c["type"], c["action"]) for c in changes] == [("duplicate", "removed"), ("missing_label", "added")]
    assert [SuggestionType(c["type"]).applied_as for c in changes] == [c["action"] for c in changes]
    assert len(fixed.annotations) == len(ds.annotations)  # one added, one removed

    document["suggestions"][1]["type"] = "missing"
    with pytest.raises(InstasegError, match="unknown suggestion type 'missing'"):
        apply_review(document, ds, accept=[2])


def test_run_review_hands_its_warnings_to_the_listeners_or_to_python_warnings(tmp_path):
    ds, _ = _review_case(tmp_path)
    results = [{"image_id": 1, "category_id": 1, "score": 0.95, "segmentation": mask_ops.encode(disc(14, 14, 7))}]
    io.write_json(tmp_path / "results.json", results)
    seen, listener = collected()
    with events.listen(listener):
        document = run_review(ds, pred=tmp_path / "results.json", out=tmp_path / "review")
    messages = [e for e in seen if isinstance(e, events.Message)]
    assert document["warnings"] and [(m.level, m.text) for m in messages] == [
        ("warning", w) for w in document["warnings"]
    ]
    assert progress_of(seen, "review")[-1] == (2, 2, True)
    with pytest.warns(UserWarning, match="not trained on these images"):
        run_review(ds, pred=tmp_path / "results.json", out=tmp_path / "review2")
