"""Issue #17, defects 1 and 5: instance-id masks paired by the usual suffixes, VOC's void value 255 not an
instance, and in every reader, reading labels but keeping none (or under half) of them is an error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from instaseg.core import io
from instaseg.data.convert import convert, open_dataset, write_dataset
from instaseg.data.dataset import Dataset
from instaseg.data.formats._common import Report
from tests.conftest import assert_one_line_error

W, H = 40, 30


def _image(path, size=(W, H)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)


def _ids(*boxes, dtype=np.uint8, border=None):
    """An (H, W) id map: box k (x0, y0, x1, y1) gets id k + 1; ``border`` paints a 1-pixel frame around each box."""
    labels = np.zeros((H, W), dtype)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        if border is not None:
            labels[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = border
        labels[y0:y1, x0:x1] = k + 1
    return labels


TWO = ((3, 3, 12, 10), (20, 12, 33, 25))


def _penn_fudan(root, mask_name="{stem}_mask.png", count=2):
    """PNGImages/FudanPedNNNNN.png + PedMasks/<mask_name>, two pedestrians (ids 1, 2) per image."""
    for k in range(1, count + 1):
        stem = f"FudanPed{k:05d}"
        _image(root / "PNGImages" / f"{stem}.png")
        (root / "PedMasks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_ids(*TWO)).save(root / "PedMasks" / mask_name.format(stem=stem))
    return root


def _areas(dataset):
    return sorted(a["area"] for a in dataset.annotations)


def _refused(result, out, *culprits):
    """Exit 2 with one ``error:`` line naming every culprit, and no output written."""
    assert_one_line_error(result, *culprits)
    assert not out.exists()


# -- defect 1: pairing masks with images ---------------------------------------------------------
def test_penn_fudan_layout_finds_every_instance(tmp_path, cli):
    root = _penn_fudan(tmp_path / "PennFudanPed")
    want = sorted([(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in TWO] * 2)
    explicit = cli("convert", root / "PedMasks", tmp_path / "a.json", "--from", "masks", "--images", root / "PNGImages")
    assert explicit.code == 0, explicit.stderr
    assert "2 images, 4 instances" in explicit.stdout and "0 warnings" in explicit.stdout
    assert _areas(Dataset.load(tmp_path / "a.json")) == want
    found = cli("convert", root, tmp_path / "b.json")  # PedMasks/ and PNGImages/ found by their names
    assert found.code == 0, found.stderr
    assert "detected format: masks" in found.stdout
    assert _areas(Dataset.load(tmp_path / "b.json")) == want


@pytest.mark.parametrize(
    "suffix", ["_mask", "_MASK", "_Masks", "-mask", "_label", "_instance", "_Instances", "_gt", "_GT"]
)
def test_usual_mask_suffixes_pair_in_any_case(tmp_path, suffix):
    root = _penn_fudan(tmp_path / "pf", mask_name="{stem}" + suffix + ".png", count=1)
    dataset = open_dataset(root, "masks")
    assert len(dataset.images) == 1 and len(dataset.annotations) == 2


def test_mask_suffix_option_pairs_an_unusual_suffix(tmp_path, cli):
    root = _penn_fudan(tmp_path / "pf", mask_name="{stem}.seg.png")
    out = tmp_path / "out.json"
    _refused(cli("convert", root, out, "--from", "masks"), out, root, "FudanPed00001.seg.png", "--mask-suffix")
    r = cli("convert", root, out, "--from", "masks", "--mask-suffix", ".SEG")
    assert r.code == 0, r.stderr
    assert len(Dataset.load(out).annotations) == 4


def test_two_masks_for_one_image_are_refused(tmp_path, cli):
    root = _penn_fudan(tmp_path / "pf", count=1)
    Image.fromarray(_ids(*TWO)).save(root / "PedMasks" / "FudanPed00001_gt.png")
    out = tmp_path / "out.json"
    _refused(cli("convert", root, out, "--from", "masks"), out, "FudanPed00001_gt.png", "FudanPed00001_mask.png")


# -- the converter-wide rule: labels read but none (or under half) kept ----------------------------
def _coco_without_masks(root):
    io.write_json(
        root / "data.json",
        {
            "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
            "categories": [{"id": 1, "name": "cell"}],
            "annotations": [{"id": k, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]} for k in (1, 2)],
        },
    )
    _image(root / "a.png")
    return root / "data.json", "no segmentation"


def _via_points(root):
    point = {"shape_attributes": {"name": "point", "cx": 5, "cy": 5}, "region_attributes": {}}
    io.write_json(
        root / "via_region_data.json", {"a.png1": {"filename": "a.png", "size": 1, "regions": [point, point]}}
    )
    _image(root / "a.png")
    return root, "encloses no area"


def _labelme_points(root):
    shape = {"label": "cell", "points": [[5, 5]], "shape_type": "point", "group_id": None, "flags": {}}
    io.write_json(root / "a.json", {"shapes": [shape, shape], "imagePath": "a.png", "imageHeight": H, "imageWidth": W})
    _image(root / "a.png")
    return root, "encloses no area"


def _yolo_orphans(root):
    _image(root / "images" / "train" / "a.png")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "b.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.5\n")
    return root, "b.txt"


def _mask_files_wrong_size(root):
    for sample in ("s1", "s2"):
        _image(root / sample / "images" / f"{sample}.png")
        (root / sample / "masks").mkdir()
        Image.fromarray(np.full((5, 5), 255, np.uint8)).save(root / sample / "masks" / "m.png")
    return root, "mask is 5x5"


def _masks_unpaired(root):
    _penn_fudan(root, mask_name="{stem}.seg.png")
    return root, "FudanPed00001.seg.png"


@pytest.mark.parametrize(
    "fmt, make",
    [
        ("coco", _coco_without_masks),
        ("via", _via_points),
        ("labelme", _labelme_points),
        ("yolo", _yolo_orphans),
        ("mask-files", _mask_files_wrong_size),
        ("masks", _masks_unpaired),
    ],
)
def test_keeping_none_of_the_labels_read_is_an_error_in_every_reader(tmp_path, cli, fmt, make):
    src, reason = make(tmp_path / "src")
    out = tmp_path / "out.json"
    result = cli("convert", src, out, "--from", fmt)
    _refused(result, out, src, "kept 0 of", reason)


def _coco_mostly_unsegmented(root, segmented):
    """A COCO file with ``segmented`` squares and three box-only annotations."""
    square = {"segmentation": [[2, 2, 8, 2, 8, 8, 2, 8]], "area": 36, "bbox": [2, 2, 6, 6], "iscrowd": 0}
    anns = [square] * segmented + [{"bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}] * 3
    io.write_json(
        root / "data.json",
        {
            "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
            "categories": [{"id": 1, "name": "cell"}],
            "annotations": [{**a, "id": k + 1, "image_id": 1, "category_id": 1} for k, a in enumerate(anns)],
        },
    )
    _image(root / "a.png")
    return root / "data.json"


def test_keeping_under_half_is_an_error_unless_allowed(tmp_path, cli):
    src = _coco_mostly_unsegmented(tmp_path / "src", segmented=1)
    out = tmp_path / "out"
    _refused(cli("convert", src, out, "--to", "yolo"), out, "kept 1 of 4", "no segmentation", "--allow-skipped")
    r = cli("convert", src, out, "--to", "yolo", "--allow-skipped")
    assert r.code == 0, r.stderr
    assert r.stderr.count("warning:") == 3 and "1 instances" in r.stdout


def test_keeping_half_is_accepted_with_warnings(tmp_path):
    report = convert(_coco_mostly_unsegmented(tmp_path, segmented=3), tmp_path / "kept.json", src_format="coco")
    assert len(Dataset.load(tmp_path / "kept.json").annotations) == 3 and len(report.warnings) == 3
    assert report.skipped == {"no segmentation, skipped": 3}


def test_background_only_masks_are_not_an_error(tmp_path):
    _image(tmp_path / "images" / "a.png")
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "masks" / "a.png")
    dataset = open_dataset(tmp_path, "masks")
    assert len(dataset.images) == 1 and not dataset.annotations


# -- defect 5: PASCAL VOC's void value --------------------------------------------------------------
def _voc(root, labels, mode=None):
    _image(root / "images" / "a.png")
    (root / "masks").mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(labels)
    if mode == "P":
        picture = picture.convert("P")
        picture.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 252 + [224, 224, 192])
    picture.save(root / "masks" / "a.png")
    return root


@pytest.mark.parametrize("mode", ["L", "P"])
def test_voc_void_border_is_not_an_instance(tmp_path, mode):
    root = _voc(tmp_path, _ids(*TWO, border=255), mode)
    report = Report()
    dataset = open_dataset(root, "masks", report=report)
    assert _areas(dataset) == sorted((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in TWO)
    assert len(report.warnings) == 1 and "255" in report.warnings[0] and "--ignore-value" in report.warnings[0]


def test_ignore_value_none_keeps_255_and_a_number_sets_the_void(tmp_path, cli):
    root = _voc(tmp_path / "voc", _ids(*TWO, border=255))
    r = cli("convert", root, tmp_path / "none.json", "--ignore-value", "none")
    assert r.code == 0, r.stderr
    assert len(Dataset.load(tmp_path / "none.json").annotations) == 3
    labels = _ids(*TWO, dtype=np.uint16, border=7)
    root = _voc(tmp_path / "seven", labels)
    r = cli("convert", root, tmp_path / "seven.json", "--ignore-value", "7")
    assert r.code == 0, r.stderr
    assert len(Dataset.load(tmp_path / "seven.json").annotations) == 2
    bad = cli("convert", root, tmp_path / "bad.json", "--ignore-value", "border")
    _refused(bad, tmp_path / "bad.json", "--ignore-value", "border")


def test_a_lone_255_is_an_instance(tmp_path):
    """A binary 0/255 mask is one instance, and so is id 255 in a mask holding ids 1..255."""
    lone = _voc(tmp_path / "lone", np.where(_ids(*TWO) > 0, 255, 0).astype(np.uint8))
    assert len(open_dataset(lone, "masks").annotations) == 1
    full = (np.arange(H * W) % 255 + 1).reshape(H, W).astype(np.uint8)
    assert len(open_dataset(_voc(tmp_path / "full", full), "masks").annotations) == 255


def test_masks_writer_never_writes_id_255_in_an_8_bit_png(tmp_path):
    """255 instances, the first hidden under the others: ids 2..255 stay visible and all read back."""
    size = 64
    tiles = [[x, y, x + 4, y, x + 4, y + 4, x, y + 4] for y in range(0, size, 4) for x in range(0, size, 4)][:254]
    anns = [[[0, 0, 8, 0, 8, 8, 0, 8]], *([t] for t in tiles)]
    _image(tmp_path / "imgs" / "a.png", (size, size))
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": size, "height": size}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [
            {"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": s, "iscrowd": 0} for k, s in enumerate(anns)
        ],
    }
    write_dataset(Dataset(coco, tmp_path / "imgs"), tmp_path / "ids", "masks")
    back = open_dataset(tmp_path / "ids", "masks")
    assert len(back.annotations) == 254
    assert json.loads((tmp_path / "ids" / "classes.json").read_text())["a"].keys() == {str(k) for k in range(2, 256)}
