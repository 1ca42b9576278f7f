"""``instaseg check``: every kind of problem is found and located, ``--fix`` repairs what it can."""

from __future__ import annotations

import copy
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from instaseg.core import io
from instaseg.core import masks as mask_ops
from instaseg.data import Dataset
from instaseg.data.check import check_dataset, count_problems, fix_dataset

W, H = 40, 30
SQUARE = [5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]  # 10x10 px: bbox [5, 5, 10, 10], area 100
TRIANGLE = [20.0, 10.0, 35.0, 10.0, 27.0, 25.0]


def _coco():
    """Two 40x30 images, two classes, one polygon square, one polygon triangle and one RLE disc."""
    yy, xx = np.mgrid[:H, :W]
    disc = (yy - 15) ** 2 + (xx - 20) ** 2 <= 36
    disc_rle = mask_utils.encode(np.asfortranarray(disc.astype(np.uint8)))
    disc_rle["counts"] = disc_rle["counts"].decode()

    def ann(id_, image_id, cat, segmentation):
        if isinstance(segmentation, dict):
            rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
        else:
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, H, W))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        return {
            "id": id_,
            "image_id": image_id,
            "category_id": cat,
            "segmentation": segmentation,
            "bbox": bbox,
            "area": int(mask_utils.area(rle)),
            "iscrowd": 0,
        }

    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H},
            {"id": 2, "file_name": "b.jpg", "width": W, "height": H},
        ],
        "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "ball"}],
        "annotations": [
            ann(10, 1, 1, [SQUARE]),
            ann(11, 1, 1, [TRIANGLE]),
            ann(12, 2, 2, disc_rle),
        ],
    }


def png_header(width: int, height: int) -> bytes:
    """A PNG file that declares a size but holds no pixels (enough for header readers)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def tiny(tmp_path):
    """A clean dataset on disk: (path of the JSON, COCO dict)."""
    Image.new("RGB", (W, H), (30, 60, 90)).save(tmp_path / "a.png")
    Image.new("RGB", (W, H), (200, 200, 200)).save(tmp_path / "b.jpg")
    coco = _coco()
    io.write_json(tmp_path / "data.json", coco)
    return tmp_path / "data.json", coco


def _problems(coco, root="."):
    return check_dataset(Dataset(copy.deepcopy(coco), root, "data.json"), check_files=False)


def test_clean_dataset_has_no_problems(tiny):
    path, _ = tiny
    assert check_dataset(Dataset.load(path)) == []


def _set(path, value):
    def apply(coco):
        target = coco
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


def _delete(path):
    def apply(coco):
        target = coco
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return apply


CASES = [
    # (mutation, severity, kind, section, index)
    (_set(("annotations", 0, "category_id"), 9), "error", "unknown-category", "annotations", 0),
    (_set(("annotations", 0, "image_id"), 9), "error", "unknown-image", "annotations", 0),
    (_set(("annotations", 1, "id"), 10), "error", "duplicate-id", "annotations", 1),
    (_set(("images", 1, "id"), 1), "error", "duplicate-id", "images", 1),
    (_set(("categories", 1, "id"), 1), "error", "duplicate-id", "categories", 1),
    (_set(("categories", 1, "name"), "box"), "error", "duplicate-name", "categories", 1),
    (_set(("annotations", 0, "segmentation"), [[5, 5, 15, 5]]), "error", "too-few-points", "annotations", 0),
    (
        _set(("annotations", 0, "segmentation"), [[5, 5, 15, 5, 15, 15, 5]]),
        "error",
        "odd-coordinates",
        "annotations",
        0,
    ),
    (_set(("annotations", 0, "segmentation"), [[5, 5, 15, 5, "x", 15]]), "error", "bad-polygon", "annotations", 0),
    (_set(("annotations", 0, "segmentation"), SQUARE), "error", "bad-polygon", "annotations", 0),
    (
        _set(("annotations", 0, "segmentation"), [[5, 5, 15, 15, 5, 15, 15, 5]]),
        "warning",
        "self-intersection",
        "annotations",
        0,
    ),
    (_set(("annotations", 0, "segmentation"), [[5, 5, 6, 5, 5.5, 5.2]]), "error", "zero-area", "annotations", 0),
    (_set(("annotations", 0, "segmentation"), []), "error", "no-segmentation", "annotations", 0),
    (_set(("annotations", 0, "segmentation"), "square"), "error", "bad-segmentation", "annotations", 0),
    (
        _set(("annotations", 0, "segmentation"), [[30, 5, 45, 5, 45, 15, 30, 15]]),
        "warning",
        "points-outside",
        "annotations",
        0,
    ),
    (
        _set(("annotations", 0, "segmentation"), [[5, 5, 3e9, 5, 5, 15]]),
        "error",
        "points-far-outside",
        "annotations",
        0,
    ),
    (_set(("annotations", 2, "segmentation", "size"), [H, W + 1]), "error", "rle-size-mismatch", "annotations", 2),
    (_set(("annotations", 2, "segmentation", "counts"), 7), "error", "bad-rle", "annotations", 2),
    (
        _set(("annotations", 2, "segmentation", "counts"), "0`h9"),
        "error",
        "bad-rle",
        "annotations",
        2,
    ),  # 100x100 px of runs
    (
        _set(("annotations", 2, "segmentation"), mask_ops.encode(np.zeros((H, W), bool))),
        "error",
        "zero-area",
        "annotations",
        2,
    ),
    (_set(("annotations", 0, "bbox"), [5, 5, 20, 10]), "error", "bbox-mismatch", "annotations", 0),
    (_set(("annotations", 2, "bbox"), [0, 0, 5, 5]), "error", "bbox-mismatch", "annotations", 2),
    (_set(("annotations", 0, "bbox"), [30, 5, 20, 10]), "error", "bbox-outside", "annotations", 0),
    (_set(("annotations", 0, "bbox"), [5, 5, "10", 10]), "error", "bad-bbox", "annotations", 0),
    (_set(("annotations", 0, "bbox"), [5, 5, 0, 10]), "error", "bad-bbox", "annotations", 0),
    (_delete(("annotations", 0, "bbox")), "warning", "missing-bbox", "annotations", 0),
    (_delete(("annotations", 0, "area")), "warning", "missing-area", "annotations", 0),
    (_set(("annotations", 0, "area"), -3), "error", "bad-area", "annotations", 0),
    (_set(("annotations", 0, "area"), 400), "warning", "area-mismatch", "annotations", 0),
    (_set(("annotations", 0, "iscrowd"), 2), "error", "bad-iscrowd", "annotations", 0),
    (_set(("images", 0, "width"), 0), "error", "bad-image-size", "images", 0),
    (_set(("images", 1, "file_name"), "a.png"), "warning", "duplicate-file", "images", 1),
    (_set(("images", 0, "file_name"), "../a.png"), "error", "path-escapes", "images", 0),
    (_set(("images", 0, "file_name"), "/etc/passwd"), "error", "path-escapes", "images", 0),
    (_set(("categories", 0, "name"), " "), "error", "empty-name", "categories", 0),
]


@pytest.mark.parametrize(
    "mutate, severity, kind, section, index", CASES, ids=[c[2] + f"-{i}" for i, c in enumerate(CASES)]
)
def test_each_problem_is_found_and_located(mutate, severity, kind, section, index):
    coco = _coco()
    mutate(coco)
    found = [p for p in _problems(coco) if p.kind == kind]
    assert found, f"{kind} not reported"
    problem = found[0]
    assert (problem.severity, problem.section, problem.index) == (severity, section, index)
    record = coco[section][index]
    text = str(problem)
    assert text.startswith(f"{severity}: data.json: ")
    if section == "annotations":
        assert f"annotation id {record['id']} (image id {record['image_id']})" in text
    elif section == "images":
        assert f"image id {record['id']}" in text
    else:
        assert f"category id {record['id']}" in text


def test_a_bbox_of_the_drawn_pixels_is_accepted_for_a_spiky_polygon():
    # A needle-thin spike reaches far right, but pycocotools draws no pixel of it: a bbox that
    # describes the drawn pixels (as converters write it) and one of the polygon are both right.
    coco = _coco()
    spiky = [5.0, 5.0, 15.0, 5.0, 15.0, 9.9, 38.0, 10.0, 15.0, 10.1, 15.0, 15.0, 5.0, 15.0]
    rle = mask_utils.merge(mask_utils.frPyObjects([spiky], H, W))
    coco["annotations"][0].update(segmentation=[spiky], bbox=[float(v) for v in mask_utils.toBbox(rle)])
    assert coco["annotations"][0]["bbox"][2] < 20
    assert _problems(coco) == []
    coco["annotations"][0]["bbox"] = [5.0, 5.0, 33.0, 10.1]
    assert _problems(coco) == []


def test_images_without_annotations_and_empty_datasets():
    coco = _coco()
    coco["annotations"] = coco["annotations"][:2]
    (problem,) = _problems(coco)
    assert (problem.severity, problem.kind, problem.image_id) == ("warning", "no-instances", 2)
    kinds = {p.kind for p in _problems({"images": [], "annotations": [], "categories": []})}
    assert kinds == {"no-images", "no-categories"}


def test_image_files_are_checked_from_their_headers(tiny, tmp_path):
    path, coco = tiny
    coco = copy.deepcopy(coco)
    coco["images"] += [
        {"id": 3, "file_name": "missing.png", "width": W, "height": H},
        {"id": 4, "file_name": "fake.png", "width": W, "height": H},
        {"id": 5, "file_name": "cut.jpg", "width": W, "height": H},
        {"id": 6, "file_name": "small.png", "width": W, "height": H},
        {"id": 7, "file_name": "rotated.jpg", "width": W, "height": H},
        {"id": 8, "file_name": "huge.png", "width": 100_000, "height": 100_000},
    ]
    (tmp_path / "fake.png").write_text("not an image")
    jpeg = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(jpeg)
    (tmp_path / "cut.jpg").write_bytes(jpeg.read_bytes()[:-300])
    Image.new("RGB", (W - 1, H)).save(tmp_path / "small.png")
    rotated = Image.new("RGB", (W, H))
    exif = rotated.getexif()
    exif[0x0112] = 6  # displayed turned by 90 degrees: H x W
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    (tmp_path / "huge.png").write_bytes(png_header(100_000, 100_000))
    found = {
        p.image_id: p
        for p in check_dataset(Dataset(coco, tmp_path, path))
        if p.section == "images" and p.severity == "error"
    }
    assert found[3].kind == "missing-image" and found[3].file.endswith("missing.png")
    assert found[4].kind == "unreadable-image" and "not an image" in found[4].message
    assert found[5].kind == "truncated-image" and found[5].file.endswith("cut.jpg")
    assert found[6].kind == "size-mismatch" and "39x30" in found[6].message
    assert found[7].kind == "size-mismatch" and "EXIF" in found[7].message
    assert found[8].kind == "unreadable-image" and "too large" in found[8].message
    assert set(found) == {3, 4, 5, 6, 7, 8}


def test_fix_repairs_and_lists_every_change():
    coco = _coco()
    coco["categories"].append({"id": 3, "name": "box"})  # same name as id 1: merged
    coco["images"].append({"id": 1, "file_name": "b.jpg", "width": W, "height": H})  # duplicate id
    bowtie = [5.0, 5.0, 15.0, 15.0, 5.0, 15.0, 15.0, 5.0]
    coco["annotations"] += [
        {"id": 10, "image_id": 2, "category_id": 3, "segmentation": [TRIANGLE], "bbox": [0, 0, 1, 1], "area": 1},
        {"id": 20, "image_id": 1, "category_id": 1, "segmentation": [bowtie], "bbox": [5, 5, 10, 10], "area": 100},
        {
            "id": 21,
            "image_id": 1,
            "category_id": 1,
            "segmentation": [[30, 5, 50, 5, 50, 15, 30, 15]],
            "bbox": [30, 5, 20, 10],
            "area": 200,
        },
        {"id": 22, "image_id": 1, "category_id": 7, "segmentation": [SQUARE], "bbox": [5, 5, 10, 10], "area": 100},
        {"id": 23, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 2, 2, 3]], "bbox": [1, 1, 2, 1], "area": 1},
    ]
    dataset = Dataset(coco, ".", "data.json")
    problems = check_dataset(dataset, check_files=False)
    fixed, changes = fix_dataset(dataset, problems)

    assert dataset.coco == coco, "the input dataset must be left as it was"
    # Only warnings are left: the renumbered image shares its file and has no annotations of its own.
    assert {(p.kind, p.image_id) for p in check_dataset(fixed, check_files=False)} == {
        ("duplicate-file", 3),
        ("no-instances", 3),
    }
    assert [c["id"] for c in fixed.categories] == [1, 2]
    assert sorted(img["id"] for img in fixed.images) == [1, 2, 3]
    by_id = {a["id"]: a for a in fixed.annotations}
    assert sorted(by_id) == [10, 11, 12, 20, 21, 24]  # the duplicate 10 became 24; 22 and 23 dropped
    assert by_id[24]["category_id"] == 1 and by_id[24]["image_id"] == 2
    for ann in (by_id[24], by_id[20], by_id[21]):  # bbox and area now match pycocotools' mask
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], H, W))
        assert ann["bbox"] == pytest.approx([float(v) for v in mask_utils.toBbox(rle)])
        assert ann["area"] == int(mask_utils.area(rle))
    assert max(max(p[0::2]) for p in by_id[21]["segmentation"]) <= W  # clipped
    text = "\n".join(changes)
    for expected in (
        "category id 3 ('box'): merged into category id 1",
        "image id 1 (b.jpg): duplicate id renumbered to 3",
        "annotation id 10 (image id 2): duplicate id renumbered to 24",
        "annotation id 20 (image id 1): polygon 0 made simple",
        "annotation id 21 (image id 1): polygon 0 clipped to the image",
        "annotation id 22 (image id 1): dropped (category id 7 is not in the dataset)",
        "annotation id 23 (image id 1): dropped",
    ):
        assert expected in text


def test_cli_exit_status_json_and_fix(tiny, tmp_path, cli):
    path, coco = tiny
    r = cli("check", path)
    assert r.code == 0, r.stderr
    assert "0 error(s), 0 warning(s) in 2 images, 3 annotations" in r.stdout

    coco = copy.deepcopy(coco)
    coco["annotations"][0]["bbox"] = [0, 0, 3, 3]
    bad = tmp_path / "bad.json"
    io.write_json(bad, coco)
    r = cli("check", bad, "--json")
    assert r.code == 1
    report = json.loads(r.stdout)
    assert report["errors"] == 1
    assert report["problems"][0]["kind"] == "bbox-mismatch" and report["problems"][0]["annotation_id"] == 10

    out = tmp_path / "elsewhere" / "fixed.json"
    r = cli("check", bad, "--fix", out)
    assert r.code == 0, r.stdout + r.stderr
    assert (
        "fixed: annotation id 10 (image id 1): bbox [0, 0, 3, 3] recomputed from the mask as [5.0, 5.0, 10.0, 10.0]"
        in r.stdout
    )
    repaired = Dataset.load(out)  # finds the images through info.image_root
    assert repaired.image_root.resolve() == tmp_path.resolve()
    assert check_dataset(repaired) == []

    r = cli("check", bad, "--fix", out)
    assert r.code == 2 and "--overwrite" in r.stderr
    assert cli("check", bad, "--fix", out, "--overwrite").code == 0


def test_counts():
    coco = _coco()
    coco["annotations"][0]["category_id"] = 9
    del coco["annotations"][1]["area"]
    assert count_problems(_problems(coco)) == (1, 1)


def test_uncompressed_rle_is_measured_like_pycocotools():
    coco = _coco()
    mask = np.zeros((H, W), np.uint8)
    mask[3:9, 10:30] = 1
    counts, current, run = [], 0, 0  # COCO runs: column-major, starting with a run of zeros
    for value in mask.T.reshape(-1):
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    coco["annotations"][2].update(segmentation={"size": [H, W], "counts": counts}, bbox=[10, 3, 20, 6], area=120)
    assert _problems(coco) == []
    coco["annotations"][2]["bbox"] = [10, 3, 20, 16]
    (problem,) = _problems(coco)
    assert problem.kind == "bbox-mismatch" and "mask box [10.0, 3.0, 20.0, 6.0]" in problem.message
    coco["annotations"][2]["segmentation"]["counts"] = counts[:-1]
    (problem,) = _problems(coco)
    assert problem.kind == "bad-rle"
