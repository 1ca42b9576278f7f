"""``check`` and ``check --fix`` on polygons that are not simple (issue #17, defect 9).

YOLO and VIA hold one polygon per instance, so holes and parts are joined into it by zero-width
bridges walked there and back (this tool's writers do it, and so does Ultralytics' coco128-seg).
Such a polygon draws exactly: ``check`` must not report it and ``--fix`` must not change its pixels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from PIL import Image

from instaseg.core import masks as mask_ops
from instaseg.core.geometry import join_polygons
from instaseg.data import Dataset
from instaseg.data.check import check_dataset, count_problems, fix_dataset
from tests.conftest import shared_dataset

W, H = 40, 30
OUTER = [5.0, 5.0, 25.0, 5.0, 25.0, 25.0, 5.0, 25.0]
HOLE = [10.0, 10.0, 20.0, 10.0, 20.0, 20.0, 10.0, 20.0]
RING = join_polygons([OUTER, HOLE])  # a square with a square hole, as the YOLO and VIA writers join them
TWO_PARTS = join_polygons([[2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0], [20.0, 3.0, 30.0, 3.0, 30.0, 12.0, 20.0, 12.0]])
BOWTIE = [5.0, 5.0, 15.0, 15.0, 5.0, 15.0, 15.0, 5.0]
# Its vertex (5, 2.25) lies on its first edge, (0, 0) to (20, 9): split into simple parts there, that
# edge is drawn as two and pycocotools draws one pixel differently.
TOUCHING = [0.0, 0.0, 20.0, 9.0, 18.0, 28.0, 5.5, 10.25, 5.0, 2.25, 2.0, 11.25, 0.0, 28.0]
MALFORMED = [1.0, 1.0, 2.0]  # gets the annotation's polygons through --fix's polygon repair


def _dataset(*segmentations: list) -> Dataset:
    annotations = []
    for k, segmentation in enumerate(segmentations, 1):
        rle = mask_ops.to_rle(segmentation, H, W)
        annotations.append(
            {
                "id": k,
                "image_id": 1,
                "category_id": 1,
                "segmentation": segmentation,
                "bbox": mask_ops.bbox(rle),
                "area": mask_ops.area(rle),
                "iscrowd": 0,
            }
        )
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": annotations,
    }
    return Dataset(coco, ".", "data.json")


def _pixels(segmentation: list) -> np.ndarray:
    return mask_ops.decode(segmentation, H, W)


def _check_and_fix(*segmentations: list):
    dataset = _dataset(*segmentations)
    problems = check_dataset(dataset, check_files=False)
    fixed, changes = fix_dataset(dataset, problems)
    return problems, fixed, changes


@pytest.mark.parametrize("bridged", [RING, TWO_PARTS], ids=["ring", "two-parts"])
def test_bridge_polygon_is_no_problem_and_fix_keeps_its_pixels(bridged):
    problems, fixed, changes = _check_and_fix([bridged], [bridged, MALFORMED])
    assert [p for p in problems if p.annotation_id == 1] == []
    assert [p.kind for p in problems if p.annotation_id == 2] == ["odd-coordinates"]
    assert changes == ["annotation id 2 (image id 1): polygon 1 removed (malformed)"]
    for ann in fixed.annotations:
        assert np.array_equal(_pixels(ann["segmentation"]), _pixels([bridged]))
    assert check_dataset(fixed, check_files=False) == []


def test_ring_keeps_its_hole_when_clipped_to_the_image():
    reaching_out = join_polygons([[5.0, 5.0, 45.0, 5.0, 45.0, 25.0, 5.0, 25.0], HOLE])
    problems, fixed, changes = _check_and_fix([reaching_out])
    assert [p.kind for p in problems] == ["points-outside"]
    assert changes == ["annotation id 1 (image id 1): polygon 0 clipped to the image"]
    segmentation = fixed.annotations[0]["segmentation"]
    assert np.array_equal(_pixels(segmentation), _pixels([reaching_out]))
    assert not _pixels(segmentation)[15, 15], "the hole must stay empty"
    assert max(max(p[0::2]) for p in segmentation) <= W


def test_bowtie_is_reported_and_split_without_changing_pixels():
    problems, fixed, changes = _check_and_fix([BOWTIE])
    assert [(p.severity, p.kind) for p in problems] == [("warning", "self-intersection")]
    assert "crosses itself at (10, 10)" in problems[0].message
    assert changes == ["annotation id 1 (image id 1): polygon 0 made simple (2 pieces)"]
    segmentation = fixed.annotations[0]["segmentation"]
    assert len(segmentation) == 2
    assert np.array_equal(_pixels(segmentation), _pixels([BOWTIE]))
    assert check_dataset(fixed, check_files=False) == []


def test_repair_that_would_change_pixels_is_reported_and_not_made():
    problems, fixed, changes = _check_and_fix([TOUCHING])
    assert [(p.kind, p.annotation_id) for p in problems] == [("self-intersection", 1)]
    assert "would draw 1 pixel(s) differently" in problems[0].message
    assert changes == [
        "annotation id 1 (image id 1): polygon 0 left unchanged: once made simple it would draw 1 pixel(s) differently"
    ]
    assert fixed.annotations[0]["segmentation"] == [TOUCHING]


def test_fix_drops_a_polygon_that_draws_no_pixel_and_keeps_the_rest():
    sliver = [30.0, 20.0, 30.4, 20.0, 30.2, 20.3]
    problems, fixed, changes = _check_and_fix([OUTER, sliver])
    assert [p.kind for p in problems] == ["zero-area"]
    assert changes == ["annotation id 1 (image id 1): polygon 1 removed (encloses no pixel)"]
    assert fixed.annotations[0]["segmentation"] == [OUTER]
    assert check_dataset(fixed, check_files=False) == []


def test_own_yolo_and_via_output_passes_check_and_fix_keeps_pixels(tmp_path, cli):
    """Masks with a hole and with two parts, written by ``convert`` to YOLO and VIA and read back."""
    Image.new("RGB", (W, H)).save(tmp_path / "a.png")
    yy, xx = np.mgrid[:H, :W]
    ring = ((yy - 15) ** 2 + (xx - 15) ** 2 <= 100) & ((yy - 15) ** 2 + (xx - 15) ** 2 > 16)
    parts = ((xx >= 28) & (xx < 32) & (yy < 8)) | ((xx >= 30) & (xx < 38) & (yy >= 20))
    dataset = _dataset(mask_ops.encode(ring), mask_ops.encode(parts))
    dataset.save(tmp_path / "data.json")
    for fmt in ("yolo", "via"):
        assert cli("convert", tmp_path / "data.json", tmp_path / fmt, "--to", fmt).code == 0
        back = tmp_path / f"{fmt}.json"
        assert cli("convert", tmp_path / fmt, back).code == 0
        result = cli("check", back, "--fix", tmp_path / f"{fmt}.fixed.json")
        assert result.code == 0, result.stdout
        assert "0 error(s), 0 warning(s)" in result.stdout and "0 change(s)" in result.stdout
        before, after = Dataset.load(back), Dataset.load(tmp_path / f"{fmt}.fixed.json")
        for old, new in zip(before.annotations, after.annotations, strict=True):
            assert isinstance(old["segmentation"], list)
            assert np.array_equal(_pixels(new["segmentation"]), _pixels(old["segmentation"]))
        assert not _pixels(before.annotations[0]["segmentation"])[15, 15], "the hole survives the round trip"


def test_coco128_fix_changes_no_pixels_and_adds_no_error(tmp_path, cli):
    root = shared_dataset("coco128-seg")
    converted, fixed_path = tmp_path / "coco128.json", tmp_path / "fixed.json"
    assert cli("convert", root, converted).code == 0
    result = cli("check", converted, "--fix", fixed_path, "--no-files", "--json")
    report = json.loads(result.stdout)
    before, fixed = Dataset.load(converted), Dataset.load(fixed_path)
    assert report["errors"] == 0 and report["fix"]["errors_left"] == 0
    assert count_problems(check_dataset(fixed, check_files=False))[0] == 0

    sizes = {image["id"]: (image["height"], image["width"]) for image in before.images}
    changed = [
        old["id"]
        for old, new in zip(before.annotations, fixed.annotations, strict=True)
        if mask_ops.to_rle(old["segmentation"], *sizes[old["image_id"]])
        != mask_ops.to_rle(new["segmentation"], *sizes[old["image_id"]])
    ]
    assert changed == []
    # The stated repairs: splitting polygons that cross themselves, each keeping every pixel.
    repaired = [c for c in report["fix"]["changes"] if "left unchanged" not in c]
    assert repaired and all(c.endswith("made simple") or "made simple (" in c for c in repaired)
    # Most polygons of coco128-seg that shapely calls invalid are bridges joining an object's parts: not reported.
    invalid = sum(
        not shapely.Polygon(np.reshape(p, (-1, 2))).is_valid for ann in before.annotations for p in ann["segmentation"]
    )
    reported = [p for p in report["problems"] if p["kind"] == "self-intersection"]
    assert 0 < len(reported) < invalid / 2


@pytest.mark.parametrize("height", [0, -5])
def test_a_bridge_polygon_on_an_image_of_unusable_size_is_reported_not_a_crash(tmp_path, cli, height):
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": height}],
        "categories": [{"id": 1, "name": "ring"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": [RING],
                "bbox": [2, 2, 20, 20],
                "area": 300,
                "iscrowd": 0,
            }
        ],
    }
    (tmp_path / "data.json").write_text(json.dumps(coco))
    result = cli("check", tmp_path / "data.json", "--no-files")
    assert result.code == 1, result.stdout + result.stderr
    assert "image id 1" in result.stdout and "Traceback" not in result.stderr + result.stdout
