"""Dataset format converters on small synthetic data: every instance kept, masks preserved, bad input refused."""

from __future__ import annotations

import base64
import io as bytes_io
import json
import os

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as coco_mask

from instaseg.core import io
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.core.geometry import join_polygons
from instaseg.data import Dataset
from instaseg.data.convert import ReadOptions, Report, convert, detect_format, open_dataset, write_dataset

H, W = 40, 50


def _disc(cy, cx, r, h=H, w=W):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _image(path, h=H, w=W, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _uncompressed(mask):
    """COCO uncompressed RLE, computed independently of pycocotools (column-major runs, starting with 0s)."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], changes])).tolist()}


def _coco_file(tmp_path, name="gt.json"):
    """Two images with overlapping instances in all three segmentation encodings, one of them crowd."""
    _image(tmp_path / "imgs" / "a.png", seed=1)
    _image(tmp_path / "imgs" / "b.png", seed=2)
    big, small = _disc(20, 20, 14), _disc(22, 24, 6)
    two_parts = _disc(8, 40, 5) | _disc(32, 42, 5)
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H},
            {"id": 2, "file_name": "b.png", "width": W, "height": H},
        ],
        "categories": [{"id": 5, "name": "cell"}, {"id": 9, "name": "dot"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "segmentation": mask_ops.encode(big), "iscrowd": 0},
            {
                "id": 2,
                "image_id": 1,
                "category_id": 9,
                "segmentation": [[20, 18, 30, 18, 30, 28, 20, 28]],
                "iscrowd": 0,
            },
            {"id": 3, "image_id": 1, "category_id": 9, "segmentation": _uncompressed(two_parts), "iscrowd": 1},
            {"id": 4, "image_id": 2, "category_id": 5, "segmentation": mask_ops.encode(small), "iscrowd": 0},
        ],
    }
    path = tmp_path / "imgs" / name
    path.write_text(json.dumps(coco))
    return path


def _masks_of(dataset):
    """{image basename: [(class name, mask), ...]} decoded with pycocotools directly."""
    out = {}
    for image in dataset.images:
        anns = dataset.annotations_by_image.get(image["id"], [])
        masks = [_decode(a["segmentation"], image["height"], image["width"]) for a in anns]
        names = [dataset.class_names[dataset.category_index[a["category_id"]]] for a in anns]
        out[os.path.basename(image["file_name"])] = list(zip(names, masks, strict=True))
    return out


def _decode(segmentation, h, w):
    """Any COCO segmentation as a boolean mask, with pycocotools alone."""
    if isinstance(segmentation, dict) and isinstance(segmentation["counts"], str):
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
    else:
        rle = coco_mask.frPyObjects(segmentation, h, w)
        rle = coco_mask.merge(rle) if isinstance(rle, list) else rle
    return coco_mask.decode(rle).astype(bool)


def _mask_iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


# -- COCO ---------------------------------------------------------------------------------------
def test_coco_roundtrip_keeps_encodings_and_finds_images_elsewhere(tmp_path, cli):
    src = _coco_file(tmp_path)
    out = tmp_path / "elsewhere" / "out.json"
    r = cli("convert", src, out)
    assert r.code == 0, r.stderr
    assert "detected format: coco" in r.stdout and "4 instances" in r.stdout
    back = Dataset.load(out)  # images are found through info.image_root
    assert back.read_image(1).shape == (H, W, 3)
    assert [a["segmentation"] for a in back.annotations] == [a["segmentation"] for a in Dataset.load(src).annotations]
    assert [a["iscrowd"] for a in back.annotations] == [0, 0, 1, 0]


def test_coco_bad_input_is_one_line_and_writes_nothing(tmp_path, cli):
    src = tmp_path / "bad.json"
    src.write_text('{"images": [')
    r = cli("convert", src, tmp_path / "out.json", "--from", "coco")
    assert r.code == 2 and "malformed JSON" in r.stderr and "Traceback" not in r.stderr
    coco = json.loads(_coco_file(tmp_path).read_text())
    coco["annotations"][1]["segmentation"] = [[1, 2, 3, 4, 5, 6, 7]]
    src.write_text(json.dumps(coco))
    r = cli("convert", src, tmp_path / "out", "--from", "coco", "--to", "yolo")
    assert r.code == 2 and "annotation id 2" in r.stderr and "odd number" in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.json").exists()


def test_coco_unusable_annotations_are_reported_not_fatal(tmp_path):
    coco = json.loads(_coco_file(tmp_path).read_text())
    coco["annotations"].append({"id": 77, "image_id": 99, "category_id": 5, "segmentation": [[0, 0, 5, 0, 5, 5]]})
    coco["annotations"].append({"id": 78, "image_id": 1, "category_id": 5})
    (tmp_path / "imgs" / "gt.json").write_text(json.dumps(coco))
    report = convert(tmp_path / "imgs" / "gt.json", tmp_path / "kept.json")  # convert reads COCO through its converter
    assert len(Dataset.load(tmp_path / "kept.json").annotations) == 4 and report.instances_read == 4
    assert any("annotation id 77" in w and "image id 99" in w for w in report.warnings)
    assert any("annotation id 78" in w and "no segmentation" in w for w in report.warnings)
    nowhere = ReadOptions(images=tmp_path / "nowhere")
    report = convert(tmp_path / "imgs" / "gt.json", tmp_path / "labels_only.json", options=nowhere)
    assert any("nowhere" in w and "image folder not found" in w for w in report.warnings)
    with pytest.raises(InstasegError, match="image file not found"):
        convert(tmp_path / "imgs" / "gt.json", tmp_path / "y", out_format="yolo", options=nowhere)
    assert not (tmp_path / "y").exists()


def test_existing_output_needs_overwrite(tmp_path, cli):
    src = _coco_file(tmp_path)
    out = tmp_path / "out.json"
    out.write_text("keep")
    r = cli("convert", src, out)
    assert r.code == 2 and "--overwrite" in r.stderr and out.read_text() == "keep"
    assert cli("convert", src, out, "--overwrite").code == 0
    assert len(Dataset.load(out).annotations) == 4


# -- YOLO ---------------------------------------------------------------------------------------
def test_join_polygons_keeps_every_part_and_adds_no_pixels():
    mask = _disc(10, 10, 6) | _disc(30, 38, 7) | _disc(8, 42, 3)
    polygons = mask_ops.to_polygons(mask)
    assert len(polygons) == 3
    joined = mask_ops.decode([join_polygons(polygons)], H, W)
    assert _mask_iou(joined, mask_ops.decode(polygons, H, W)) == 1.0


def test_polygon_formats_keep_holes_and_overlapping_parts_exactly(tmp_path):
    ring_with_island = (_disc(20, 20, 15) & ~_disc(20, 20, 8)) | _disc(20, 20, 3) | _disc(5, 45, 3)
    overlapping = [[2, 2, 20, 2, 20, 12, 2, 12], [10, 8, 30, 8, 30, 30, 10, 30]]  # COCO polygons: a union
    _image(tmp_path / "x.png")
    coco = {
        "images": [{"id": 1, "file_name": "x.png", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": mask_ops.encode(ring_with_island)},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": overlapping},
        ],
    }
    expected = [ring_with_island, _decode(overlapping, H, W)]
    for fmt in ("yolo", "via"):
        write_dataset(Dataset(coco, tmp_path), tmp_path / fmt, fmt)
        back = open_dataset(tmp_path / fmt, fmt)
        assert [
            (_decode(a["segmentation"], H, W) == e).all() for a, e in zip(back.annotations, expected, strict=True)
        ] == [True, True]
    write_dataset(Dataset(coco, tmp_path), tmp_path / "lm", "labelme")  # LabelMe polygons cannot hold a hole
    ring_back = _decode(open_dataset(tmp_path / "lm", "labelme").annotations[0]["segmentation"], H, W)
    assert ring_back[20, 14] and not ring_with_island[20, 14]


def test_coco_to_yolo_and_back_keeps_instances_classes_and_masks(tmp_path, cli):
    src = _coco_file(tmp_path)
    r = cli("convert", src, tmp_path / "yolo", "--to", "yolo", "--split", "val")
    assert r.code == 0, r.stderr
    assert "crowd" in r.stderr  # YOLO cannot say iscrowd; that is reported
    data = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())
    assert data["names"] == {0: "cell", 1: "dot"} and data["val"] == "images/val"
    lines = (tmp_path / "yolo" / "labels" / "val" / "a.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1", "1"]
    assert cli("convert", tmp_path / "yolo", tmp_path / "back.json").code == 0
    before, after = _masks_of(Dataset.load(src)), _masks_of(Dataset.load(tmp_path / "back.json"))
    assert before.keys() == after.keys()
    for name in before:
        assert [c for c, _ in before[name]] == [c for c, _ in after[name]]
        for (_, a), (_, b) in zip(before[name], after[name], strict=True):
            assert (a == b).all()  # traced outlines redraw the RLE masks exactly


def _yolo_tree(tmp_path, lines="0 0.1 0.1 0.5 0.1 0.5 0.5\n", names=("a", "b")):
    root = tmp_path / "y"
    _image(root / "images" / "train" / "one.jpg")
    _image(root / "images" / "train" / "background.jpg")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "one.txt").write_text(lines)
    (root / "labels" / "train" / "orphan.txt").write_text("0 0.1 0.1 0.2 0.1 0.2 0.2\n")
    if names is not None:
        (root / "data.yaml").write_text(yaml.safe_dump({"names": list(names)}))
    return root


def test_yolo_reads_boxes_and_reports_background_and_orphan_files(tmp_path):
    root = _yolo_tree(tmp_path, "0 0.1 0.1 0.5 0.1 0.5 0.5\n1 0.5 0.5 0.2 0.4\n")
    report = Report()
    dataset = open_dataset(root, report=report)
    assert report.source_format == "yolo" and dataset.class_names == ["a", "b"]
    assert len(dataset.images) == 2 and len(dataset.annotations) == 2
    box = dataset.annotations[1]
    assert box["bbox"] == [20.0, 12.0, 10.0, 16.0]  # cx 0.5*50, cy 0.5*40, w 0.2*50, h 0.4*40
    assert any("background.jpg" in w and "background" in w for w in report.warnings)
    assert any("orphan.txt" in w and "without an image" in w for w in report.warnings)


def test_yolo_reads_one_split_given_its_images_folder(tmp_path):
    root = _yolo_tree(tmp_path, "1 0.1 0.1 0.5 0.1 0.5 0.5\n")
    _image(root / "images" / "val" / "other.jpg")
    report = Report()
    dataset = open_dataset(root / "images" / "train", "yolo", report=report)
    assert sorted(i["file_name"] for i in dataset.images) == ["background.jpg", "one.jpg"]
    assert dataset.class_names == ["a", "b"] and len(dataset.annotations) == 1  # names from data.yaml above
    assert any("orphan.txt" in w for w in report.warnings)


def test_yolo_without_names_uses_class_k_or_a_names_file(tmp_path):
    root = _yolo_tree(tmp_path, "2 0.1 0.1 0.5 0.1 0.5 0.5\n", names=None)
    assert open_dataset(root, "yolo").class_names == ["class_0", "class_1", "class_2"]
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nbird\n")
    dataset = open_dataset(root, "yolo", options=ReadOptions(classes=names))
    assert (
        dataset.class_names == ["cat", "dog", "bird"]
        and dataset.categories[dataset.category_index[dataset.annotations[0]["category_id"]]]["name"] == "bird"
    )


@pytest.mark.parametrize(
    "line, message",
    [
        ("5 0.1 0.1 0.5 0.1 0.5 0.5", "class id 5 but only 2"),
        ("0 0.1 0.1 0.5 0.1 0.5", "odd number of coordinates"),
        ("0 0.1 0.1", "at least 3 points"),
        ("0 0.1 abc 0.5 0.1 0.5 0.5", "expected numbers"),
    ],
)
def test_yolo_malformed_lines_name_file_and_line(tmp_path, cli, line, message):
    root = _yolo_tree(tmp_path, "0 0.1 0.1 0.5 0.1 0.5 0.5\n" + line + "\n")
    r = cli("convert", root, tmp_path / "out.json")
    assert r.code == 2 and message in r.stderr and "one.txt: line 2" in r.stderr
    assert not (tmp_path / "out.json").exists()


# -- VIA ----------------------------------------------------------------------------------------
def test_open_dataset_keeps_a_coco_file_as_it_is_and_converts_other_formats(tmp_path):
    coco = json.loads(_coco_file(tmp_path).read_text())
    coco["annotations"].append({"id": 77, "image_id": 99, "category_id": 5, "segmentation": [[0, 0, 5, 0, 5, 5]]})
    (tmp_path / "imgs" / "gt.json").write_text(json.dumps(coco))
    as_is = open_dataset(tmp_path / "imgs" / "gt.json")
    assert [a["id"] for a in as_is.annotations] == [a["id"] for a in coco["annotations"]]  # nothing dropped
    (tmp_path / "via" / "via_region_data.json").write_text(json.dumps(_via_entries(tmp_path)))
    converted = open_dataset(tmp_path / "via" / "via_region_data.json")
    assert converted.class_names and len(converted.annotations) == len(open_dataset(tmp_path / "via").annotations)


def _via_entries(tmp_path):
    _image(tmp_path / "via" / "p.jpg")
    _image(tmp_path / "via" / "q.jpg")
    polygon = {"name": "polygon", "all_points_x": [2, 50, 50, 2], "all_points_y": [2, 2, 41, 41]}
    return {
        "p.jpg999": {  # the key's size is wrong on purpose: entries are matched by filename
            "filename": "p.jpg",
            "size": 999,
            "regions": {
                "0": {"shape_attributes": polygon, "region_attributes": {"class": "cat"}},
                "1": {
                    "shape_attributes": {"name": "rect", "x": 5, "y": 6, "width": 10, "height": 4},
                    "region_attributes": {},
                },
                "2": {"shape_attributes": {"name": "point", "cx": 3, "cy": 3}, "region_attributes": {}},
            },
        },
        "q.jpg1": {
            "filename": "q.jpg",
            "regions": [
                {
                    "shape_attributes": {"name": "circle", "cx": 20, "cy": 20, "r": 8},
                    "region_attributes": {"kind": {"dog": True}},
                }
            ],
        },
        "gone.jpg1": {"filename": "gone.jpg", "regions": [{"shape_attributes": polygon, "region_attributes": {}}]},
    }


@pytest.mark.parametrize("version", [1, 2])
def test_via_reads_shapes_classes_and_clips_to_the_image(tmp_path, version):
    entries = _via_entries(tmp_path)
    document = entries if version == 1 else {"_via_settings": {}, "_via_img_metadata": entries, "_via_attributes": {}}
    (tmp_path / "via" / "via_region_data.json").write_text(json.dumps(document))
    report = Report()
    dataset = open_dataset(tmp_path / "via", options=ReadOptions(class_name="thing"), report=report)
    assert report.source_format == "via" and len(dataset.images) == 2
    assert [dataset.class_names[dataset.category_index[a["category_id"]]] for a in dataset.annotations] == [
        "cat",
        "thing",
        "dog",
    ]
    polygon = dataset.annotations[0]["segmentation"][0]
    assert max(polygon[0::2]) == W and max(polygon[1::2]) == H  # clipped to the image edge
    assert dataset.annotations[1]["area"] == 40
    assert abs(dataset.annotations[2]["area"] - np.pi * 64) < 12
    assert any("region 2" in w and "point" in w for w in report.warnings)
    assert any("gone.jpg" in w and "not found" in w for w in report.warnings)


def test_via_writer_round_trips_with_one_region_per_instance(tmp_path, cli):
    src = _coco_file(tmp_path)
    assert cli("convert", src, tmp_path / "via", "--to", "via").code == 0
    entries = json.loads((tmp_path / "via" / "via_region_data.json").read_text())
    assert sorted(e["filename"] for e in entries.values()) == ["a.png", "b.png"]
    back = open_dataset(tmp_path / "via")
    before, after = _masks_of(Dataset.load(src)), _masks_of(back)
    for name in before:
        assert [c for c, _ in before[name]] == [c for c, _ in after[name]]
        assert all(_mask_iou(a, b) >= 0.9 for (_, a), (_, b) in zip(before[name], after[name], strict=True))


# -- LabelMe ------------------------------------------------------------------------------------
def test_labelme_roundtrip_keeps_groups_and_crowd(tmp_path, cli):
    src = _coco_file(tmp_path)
    assert cli("convert", src, tmp_path / "lm", "--to", "labelme").code == 0
    document = json.loads((tmp_path / "lm" / "a.json").read_text())
    assert document["imagePath"] == "a.png" and (tmp_path / "lm" / "a.png").is_file()
    grouped = [s for s in document["shapes"] if s["group_id"] is not None]
    assert len(grouped) == 2 and all(s["flags"] == {"iscrowd": True} for s in grouped)
    r = cli("convert", tmp_path / "lm", tmp_path / "back.json")
    assert r.code == 0 and "detected format: labelme" in r.stdout
    back = Dataset.load(tmp_path / "back.json")
    assert len(back.annotations) == 4 and [a["iscrowd"] for a in back.annotations] == [0, 0, 1, 0]
    before, after = _masks_of(Dataset.load(src)), _masks_of(back)
    for name in before:
        assert [c for c, _ in before[name]] == [c for c, _ in after[name]]
        assert all(_mask_iou(a, b) >= 0.9 for (_, a), (_, b) in zip(before[name], after[name], strict=True))


def test_labelme_shapes_rectangle_mask_and_line(tmp_path):
    _image(tmp_path / "lm" / "x.png")
    shapes = [
        {"label": "box", "points": [[10, 5], [20, 15]], "shape_type": "rectangle", "group_id": None, "flags": {}},
        {"label": "wire", "points": [[1, 1], [9, 9]], "shape_type": "line", "group_id": None, "flags": {}},
    ]
    crop = np.zeros((6, 8), np.uint8)
    crop[1:5, 2:7] = 255  # 20 pixels, placed at (x=30, y=20)
    buffer = bytes_io.BytesIO()
    Image.fromarray(crop).save(buffer, format="PNG")
    shapes.append(
        {
            "label": "blob",
            "points": [[30, 20], [37, 25]],
            "shape_type": "mask",
            "mask": base64.b64encode(buffer.getvalue()).decode(),
            "group_id": None,
            "flags": {},
        }
    )
    document = {"shapes": shapes, "imagePath": "x.png", "imageHeight": H, "imageWidth": W}
    (tmp_path / "lm" / "x.json").write_text(json.dumps(document))
    (tmp_path / "lm" / "other.json").write_text("{}")
    report = Report()
    dataset = open_dataset(tmp_path / "lm", "labelme", report=report)
    assert [a["area"] for a in dataset.annotations] == [100, 20]
    assert dataset.annotations[1]["bbox"] == [32.0, 21.0, 5.0, 4.0]
    assert any("shape 1" in w and "line" in w for w in report.warnings)
    assert any("other.json" in w for w in report.warnings)


# -- instance-id masks, mask files --------------------------------------------------------------
def _instance_png_dataset(tmp_path):
    """Instance-id PNGs (one 16-bit, with 300 instances) with a per-image class mapping; returns the masks."""
    root = tmp_path / "ids"
    expected = {}
    first = np.zeros((H, W), np.uint8)
    first[_disc(10, 10, 6)] = 1
    first[_disc(25, 30, 8)] = 2
    first[_disc(30, 8, 4)] = 7  # ids need not be contiguous
    many = (np.arange(H * W, dtype=np.uint16).reshape(H, W) // 5 % 300 + 1).astype(np.uint16)  # 300 short runs
    many[:2] = 0
    for stem, labels in (("first", first), ("many", many)):
        _image(root / "images" / f"{stem}.png")
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(root / "masks" / f"{stem}.png")
        expected[stem] = {int(i): labels == i for i in np.unique(labels) if i}
    _image(root / "images" / "empty.png")
    (root / "classes.csv").write_text("image,instance,class\nfirst,2,big\nfirst,7,small\n")
    return root, expected


def test_instance_png_dataset_converts_with_every_instance(tmp_path, cli):
    root, expected = _instance_png_dataset(tmp_path)
    r = cli("convert", root, tmp_path / "out.json", "--classes", root / "classes.csv", "--class", "cell")
    assert r.code == 0, r.stderr
    assert "detected format: masks" in r.stdout and "303 instances" in r.stdout
    dataset = Dataset.load(tmp_path / "out.json")
    got = _masks_of(dataset)
    assert len(got["empty.png"]) == 0
    for stem, masks in expected.items():
        instances = got[f"{stem}.png"]
        assert len(instances) == len(masks)
        for (name, mask), (instance_id, want) in zip(instances, sorted(masks.items()), strict=True):
            assert (mask == want).all()
            if stem == "first":
                assert name == {1: "cell", 2: "big", 7: "small"}[instance_id]


def test_folder_outputs_give_clashing_stems_distinct_names(tmp_path):
    coco = json.loads(_coco_file(tmp_path).read_text())
    _image(tmp_path / "imgs" / "sub" / "a.jpg")
    coco["images"].append({"id": 3, "file_name": "sub/a.jpg", "width": W, "height": H})
    coco["images"][1]["file_name"] = "b.png"
    write_dataset(Dataset(coco, tmp_path / "imgs"), tmp_path / "lm", "labelme")
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == [
        "a_png.json",
        "a_png.png",
        "b.json",
        "b.png",
        "sub_a_jpg.jpg",
        "sub_a_jpg.json",
    ]


def test_colour_instance_pngs_keep_each_colour_as_one_instance(tmp_path):
    colours = np.zeros((H, W, 3), np.uint8)
    colours[_disc(10, 10, 5)] = (0, 0, 1)  # would be grey 0 (background) after a grey conversion
    colours[_disc(25, 30, 6)] = (200, 10, 10)
    colours[_disc(25, 12, 6)] = (10, 200, 10)
    _image(tmp_path / "c" / "images" / "a.png")
    (tmp_path / "c" / "masks").mkdir()
    Image.fromarray(colours).save(tmp_path / "c" / "masks" / "a.png")
    dataset = open_dataset(tmp_path / "c", "masks")
    assert sorted(a["area"] for a in dataset.annotations) == sorted(
        int(_disc(*args).sum()) for args in ((10, 10, 5), (25, 30, 6), (25, 12, 6))
    )


def test_masks_writer_round_trips_and_puts_smaller_on_top(tmp_path):
    src = _coco_file(tmp_path)
    report = Report()
    write_dataset(Dataset.load(src), tmp_path / "ids", "masks", report=report)
    labels = np.asarray(Image.open(tmp_path / "ids" / "masks" / "a.png"))
    big, square = _disc(20, 20, 14), mask_ops.decode([[20, 18, 30, 18, 30, 28, 20, 28]], H, W)
    assert (labels[square] == 2).all() and (labels[big & ~square & (labels != 3)] == 1).all()
    back = open_dataset(tmp_path / "ids")  # classes.json is picked up from the folder
    assert sorted(back.class_names) == ["cell", "dot"] and len(back.annotations) == 4


def test_mask_files_layout_is_lossless_and_round_trips(tmp_path):
    root = tmp_path / "dsb" / "stage1_train"
    ring = _disc(20, 20, 10) & ~_disc(20, 20, 4)  # a hole: polygons could not keep it, RLE does
    parts = _disc(5, 40, 3) | _disc(35, 40, 3)
    for sample, masks in (("s1", [ring, parts]), ("s2", [_disc(10, 10, 5)])):
        rgba = np.dstack(
            [np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8), np.full((H, W), 255, np.uint8)]
        )
        (root / sample / "images").mkdir(parents=True)
        Image.fromarray(rgba).save(root / sample / "images" / f"{sample}.png")
        (root / sample / "masks").mkdir()
        for k, mask in enumerate(masks):
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / sample / "masks" / f"m{k}.png")
    assert detect_format(tmp_path / "dsb") == "mask-files"
    dataset = open_dataset(tmp_path / "dsb", options=ReadOptions(class_name="nucleus"))
    assert dataset.class_names == ["nucleus"] and len(dataset.annotations) == 3
    assert (mask_ops.decode(dataset.annotations[0]["segmentation"], H, W) == ring).all()
    write_dataset(dataset, tmp_path / "again", "mask-files")
    back = open_dataset(tmp_path / "again", "mask-files")
    assert [a["segmentation"] for a in back.annotations] == [a["segmentation"] for a in dataset.annotations]


# -- semantic and panoptic, recomputed independently --------------------------------------------
def _expected_layers(tmp_path):
    """Per image: instance masks decoded with pycocotools, painted largest first (smaller on top)."""
    coco = json.loads(_coco_file(tmp_path).read_text())
    layers = {}
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        masks = [_decode(a["segmentation"], H, W) for a in anns]
        owner = np.full((H, W), -1)
        for k in sorted(range(len(anns)), key=lambda k: -masks[k].sum()):
            owner[masks[k]] = k
        layers[image["file_name"]] = (anns, owner)
    return coco, layers


def test_semantic_output_matches_an_independent_painting(tmp_path, cli):
    coco, layers = _expected_layers(tmp_path)
    r = cli("convert", tmp_path / "imgs" / "gt.json", tmp_path / "sem", "--to", "semantic")
    assert r.code == 0, r.stderr
    position = {c["id"]: k + 1 for k, c in enumerate(coco["categories"])}
    for file_name, (anns, owner) in layers.items():
        expected = np.zeros((H, W), np.uint8)
        for k, ann in enumerate(anns):
            expected[owner == k] = position[ann["category_id"]]
        picture = Image.open(tmp_path / "sem" / "masks" / file_name.replace(".png", ".png"))
        assert picture.mode == "P" and (np.asarray(picture) == expected).all()
    legend = json.loads((tmp_path / "sem" / "legend.json").read_text())
    assert [entry["name"] for entry in legend] == ["background", "cell", "dot"]
    assert io.read_image(tmp_path / "sem" / "legend.png").shape[2] == 3


def test_panoptic_output_matches_an_independent_painting(tmp_path, cli):
    coco, layers = _expected_layers(tmp_path)
    assert cli("convert", tmp_path / "imgs" / "gt.json", tmp_path / "pan", "--to", "panoptic").code == 0
    panoptic = json.loads((tmp_path / "pan" / "panoptic.json").read_text())
    assert all(c["isthing"] == 1 for c in panoptic["categories"])
    by_image = {a["image_id"]: a for a in panoptic["annotations"]}
    for image in coco["images"]:
        anns, owner = layers[image["file_name"]]
        entry = by_image[image["id"]]
        rgb = np.asarray(Image.open(tmp_path / "pan" / "panoptic" / entry["file_name"])).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        assert ((ids == 0) == (owner == -1)).all()
        got = sorted((s["category_id"], s["iscrowd"], (ids == s["id"]).tobytes()) for s in entry["segments_info"])
        want = sorted((a["category_id"], a["iscrowd"], (owner == k).tobytes()) for k, a in enumerate(anns))
        assert got == want
        for s in entry["segments_info"]:
            segment = ids == s["id"]
            assert s["area"] == segment.sum()
            assert s["bbox"] == coco_mask.toBbox(coco_mask.encode(np.asfortranarray(segment.astype(np.uint8)))).tolist()


# -- detection and file-level errors ------------------------------------------------------------
def test_detection_is_explicit_about_unknown_and_ambiguous_input(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    r = cli("convert", tmp_path / "empty", tmp_path / "out.json")
    assert r.code == 2 and "pass --from" in r.stderr and "coco" in r.stderr
    both = tmp_path / "both"
    _yolo_tree(both)
    (both / "y" / "images" / "train" / "one.json").write_text(json.dumps({"shapes": [], "imagePath": "one.jpg"}))
    with pytest.raises(InstasegError, match="could be yolo or labelme"):
        detect_format(both / "y")
    _coco_file(tmp_path)
    r = cli("convert", tmp_path / "imgs", tmp_path / "out.json")
    assert r.code == 2 and "pass the JSON file itself (gt.json)" in r.stderr
    r = cli("convert", tmp_path / "empty", tmp_path / "out.json", "--from", "pascal")
    assert r.code == 2 and "readable formats" in r.stderr


def test_non_utf8_file_names_are_refused(tmp_path):
    root = _yolo_tree(tmp_path)
    name = os.path.join(os.fsencode(root / "images" / "train"), b"caf\xe9.jpg")
    with open(name, "wb") as handle:
        handle.write((root / "images" / "train" / "one.jpg").read_bytes())
    with pytest.raises(InstasegError, match="not valid UTF-8"):
        open_dataset(root, "yolo")


def test_missing_image_during_folder_write_leaves_nothing(tmp_path):
    src = _coco_file(tmp_path)
    (tmp_path / "imgs" / "b.png").unlink()
    with pytest.raises(InstasegError, match="b.png"):
        write_dataset(Dataset.load(src), tmp_path / "out", "labelme")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["imgs"]
