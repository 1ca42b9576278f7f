"""LabelMe, VIA and YOLO readers: labelme's ignore/background labels and --classes, VIA polylines,
polygons reaching outside the image, non-finite and unnormalised YOLO coordinates, LabelMe imageData."""

from __future__ import annotations

import base64
import io as bytes_io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from instaseg.core.geometry import join_polygons
from instaseg.data import Dataset
from instaseg.data.convert import Report, open_dataset
from tests.conftest import assert_one_line_error

W, H = 32, 24
SQUARE = [[4, 4], [14, 4], [14, 14], [4, 14]]


def _image(path: Path, width: int = W, height: int = H) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (40, 80, 120)).save(path)
    return path


def _files(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


def _refused(result, before, root: Path, *culprits) -> None:
    """The verb refused with one line naming every culprit, and wrote nothing."""
    assert_one_line_error(result, *culprits)
    assert _files(root) == before, "nothing may be written"


def _decode(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons as a boolean mask, with pycocotools alone."""
    return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))).astype(bool)


def _mask(annotation: dict) -> np.ndarray:
    return _decode(annotation["segmentation"], H, W)


def _class_of(dataset: Dataset, annotation: dict) -> str:
    return dataset.class_names[dataset.category_index[annotation["category_id"]]]


# -- LabelMe: __ignore__, background and --classes ----------------------------------------------
def _shape(label: str, points=SQUARE) -> dict:
    return {"label": label, "points": points, "shape_type": "polygon", "group_id": None, "flags": {}}


def _labelme(root: Path, shapes: list[dict], name: str = "a", **document) -> Path:
    _image(root / f"{name}.png")
    data = {"version": "5.5.0", "shapes": shapes, "imagePath": f"{name}.png", "imageData": None, "flags": {}}
    data.update(imageHeight=H, imageWidth=W, **document)
    (root / f"{name}.json").write_text(json.dumps(data))
    return root


def test_labelme_ignore_and_background_shapes_are_dropped_and_are_not_classes(tmp_path):
    shapes = [_shape("cat"), _shape("__ignore__"), _shape("_background_"), _shape("__ignore__")]
    root = _labelme(tmp_path / "lm", shapes)
    report = Report()
    dataset = open_dataset(root, "labelme", report=report)
    assert dataset.class_names == ["cat"]
    assert [_class_of(dataset, a) for a in dataset.annotations] == ["cat"]
    assert any("a.json" in w and "2 shapes labelled '__ignore__'" in w for w in report.warnings), report.warnings
    assert any("a.json" in w and "'_background_'" in w for w in report.warnings), report.warnings


def test_labelme_classes_file_sets_the_class_list_and_order(tmp_path, cli):
    root = _labelme(tmp_path / "lm", [_shape("cat"), _shape("__ignore__")])
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\ndog\ncat\n")  # labelme's own labels.txt layout
    result = cli("convert", root, tmp_path / "out.json", "--classes", labels)
    assert result.code == 0, result.stderr
    back = Dataset.load(tmp_path / "out.json")
    assert back.class_names == ["dog", "cat"]
    assert [_class_of(back, a) for a in back.annotations] == ["cat"]


def test_labelme_label_missing_from_classes_is_refused_naming_file_and_shape(tmp_path, cli):
    root = _labelme(tmp_path / "lm", [_shape("cat"), _shape("bird")])
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\ncat\n")
    before = _files(tmp_path)
    result = cli("convert", root, tmp_path / "out.json", "--classes", labels)
    _refused(result, before, tmp_path, root / "a.json", "shape 1", "'bird'")


# -- VIA polylines ------------------------------------------------------------------------------
def _via(root: Path, *shapes: dict) -> Path:
    _image(root / "a.png")
    regions = [{"shape_attributes": s, "region_attributes": {"class": "cell"}} for s in shapes]
    (root / "via_region_data.json").write_text(json.dumps({"a.png1": {"filename": "a.png", "regions": regions}}))
    return root


def _polyline(points) -> dict:
    return {"name": "polyline", "all_points_x": [p[0] for p in points], "all_points_y": [p[1] for p in points]}


CLOSED = _polyline([*SQUARE, [4.8, 4.6]])  # ends under a pixel from where it starts, as when closed by a click
OPEN = _polyline([[18, 4], [28, 4], [28, 14], [18, 14]])


def _polyline_mask(shape: dict) -> np.ndarray:
    return _decode([[v for xy in zip(shape["all_points_x"], shape["all_points_y"], strict=True) for v in xy]], H, W)


def test_via_closed_polyline_is_a_polygon_and_open_ones_are_reported(tmp_path):
    root = _via(tmp_path / "via", CLOSED, CLOSED, OPEN)
    report = Report()
    dataset = open_dataset(root, "via", report=report)
    expected = _polyline_mask(CLOSED)
    assert len(dataset.annotations) == 2 and all((_mask(a) == expected).all() for a in dataset.annotations)
    assert any("region 2" in w and "--polylines-as-polygons" in w for w in report.warnings), report.warnings


def test_via_polylines_as_polygons_closes_open_polylines(tmp_path, cli):
    root = _via(tmp_path / "via", CLOSED, OPEN)
    result = cli("convert", root, tmp_path / "out.json", "--polylines-as-polygons")
    assert result.code == 0, result.stderr
    back = Dataset.load(tmp_path / "out.json")
    assert [a["area"] for a in back.annotations] == [int(_polyline_mask(s).sum()) for s in (CLOSED, OPEN)]


def test_polylines_as_polygons_is_refused_for_other_formats(tmp_path, cli):
    root = _labelme(tmp_path / "lm", [_shape("cat")])
    before = _files(tmp_path)
    _refused(cli("convert", root, tmp_path / "out.json", "--polylines-as-polygons"), before, tmp_path, "via")


# -- polygons reaching outside the image --------------------------------------------------------
# One vertex outside on the right (x = 36 > W): the edges to it cross the border at (32, 8) and (32, 16).
ONE_OUTSIDE = [[4, 4], [28, 4], [36, 12], [28, 20], [4, 20]]
# Two arms joined outside the image: inside it is two separate rectangles.
JOINED_OUTSIDE = [[4, 4], [40, 4], [40, 20], [4, 20], [4, 16], [34, 16], [34, 8], [4, 8]]
# A rectangle with a hole, joined by a zero-width bridge as the YOLO and VIA writers do, reaching outside.
BRIDGED_HOLE_OUTSIDE = np.reshape(
    join_polygons([[4, 4, 40, 4, 40, 20, 4, 20], [10, 8, 20, 8, 20, 14, 10, 14]]), (-1, 2)
).tolist()


def _write_labelme(root: Path, points) -> Path:
    return _labelme(root, [_shape("cell", points)])


def _write_via(root: Path, points) -> Path:
    return _via(root, {**_polyline(points), "name": "polygon"})


def _write_yolo(root: Path, points) -> Path:
    _image(root / "images" / "a.png")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 " + " ".join(f"{x / W!r} {y / H!r}" for x, y in points) + "\n")
    (root / "data.yaml").write_text("names: [cell]\n")
    return root


def _inside_pixels(points) -> np.ndarray:
    """The unclipped polygon rasterised on a canvas holding all of it, cropped to the image."""
    pad = 20
    shifted = (np.asarray(points, float) + pad).ravel().tolist()
    return _decode([shifted], H + 2 * pad, W + 2 * pad)[pad : pad + H, pad : pad + W]


@pytest.mark.parametrize("write", [_write_labelme, _write_via, _write_yolo], ids=["labelme", "via", "yolo"])
@pytest.mark.parametrize(
    "points",
    [ONE_OUTSIDE, JOINED_OUTSIDE, BRIDGED_HOLE_OUTSIDE],
    ids=["one-vertex-outside", "joined-outside", "bridged-hole-outside"],
)
def test_polygon_reaching_outside_keeps_every_pixel_inside_the_image(tmp_path, write, points):
    dataset = open_dataset(write(tmp_path / "src", points), report=Report())
    expected = _inside_pixels(points)
    assert expected[:, 28:].any(), "the test polygon must reach the image edge"
    (annotation,) = dataset.annotations
    assert (_mask(annotation) == expected).all()
    assert annotation["area"] == int(expected.sum())
    coords = np.concatenate([np.asarray(p).reshape(-1, 2) for p in annotation["segmentation"]])
    assert coords.min() >= 0 and coords[:, 0].max() <= W and coords[:, 1].max() <= H


def test_polygon_entirely_outside_the_image_is_reported_not_kept(tmp_path):
    root = _labelme(tmp_path / "lm", [_shape("cell"), _shape("cell", [[40, 4], [50, 4], [50, 14]])])
    report = Report()
    dataset = open_dataset(root, "labelme", report=report)
    assert len(dataset.annotations) == 1
    assert any("shape 1" in w and "empty" in w for w in report.warnings), report.warnings


# -- YOLO: non-finite and unnormalised coordinates ----------------------------------------------
def _yolo_line(root: Path, *lines: str) -> Path:
    _image(root / "images" / "a.png")
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("".join(line + "\n" for line in lines))
    (root / "data.yaml").write_text("names: [cell]\n")
    return root


@pytest.mark.parametrize(
    "line",
    [
        "0 0.1 0.1 nan 0.1 0.5 0.5",
        "0 0.1 0.1 inf 0.1 0.5 0.5",
        "0 0.1 0.1 0.5 -inf 0.5 0.5",
        "0 0.1 0.1 0.5 0.1 1e400 0.5",
        "nan 0.1 0.1 0.5 0.1 0.5 0.5",
        "0 0.5 nan 0.2 0.2",
    ],
)
def test_yolo_non_finite_values_are_refused_naming_file_and_line(tmp_path, cli, line):
    root = _yolo_line(tmp_path / "y", "0 0.1 0.1 0.5 0.1 0.5 0.5", line)
    before = _files(tmp_path)
    _refused(cli("convert", root, tmp_path / "out.json"), before, tmp_path, root / "labels" / "a.txt", "line 2")


def test_yolo_coordinates_outside_0_1_are_warned_once_per_file(tmp_path):
    beyond = "0 0.5 0.5 1.5 0.5 1.5 0.9 0.5 0.9"
    root = _yolo_line(tmp_path / "y", "0 0.1 0.1 0.5 0.1 0.5 0.5", beyond, beyond)
    report = Report()
    dataset = open_dataset(root, "yolo", report=report)
    outside = [w for w in report.warnings if "outside [0, 1]" in w]
    assert len(outside) == 1 and "a.txt" in outside[0] and "line 2" in outside[0] and "pixels" in outside[0]
    assert len(dataset.annotations) == 3


def test_yolo_in_pixels_is_refused_with_a_hint_about_normalisation(tmp_path, cli):
    pixels = "0 3 2 15 2 15 12 3 12"  # a square in pixels, as some exporters write it: all outside the image
    root = _yolo_line(tmp_path / "y", pixels, pixels)
    before = _files(tmp_path)
    result = cli("convert", root, tmp_path / "out.json")
    _refused(result, before, tmp_path, root / "labels" / "a.txt", "line 1", "pixels")


def test_yolo_coordinates_inside_0_1_give_no_warning(tmp_path):
    report = Report()
    open_dataset(_yolo_line(tmp_path / "y", "0 0 0 1 0 1 1", "0 0.5 0.5 1 1"), "yolo", report=report)
    assert report.warnings == []


# -- LabelMe imageData --------------------------------------------------------------------------
def _png_base64(width: int, height: int) -> str:
    buffer = bytes_io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_labelme_image_size_comes_from_image_data_when_the_file_is_missing(tmp_path):
    root = _labelme(tmp_path / "lm", [_shape("cell")], imageData=_png_base64(W + 8, H + 6))
    (root / "a.png").unlink()
    document = json.loads((root / "a.json").read_text())
    del document["imageWidth"], document["imageHeight"]
    (root / "a.json").write_text(json.dumps(document))
    report = Report()
    dataset = open_dataset(root, "labelme", report=report)
    assert [(i["width"], i["height"]) for i in dataset.images] == [(W + 8, H + 6)]
    assert [a["area"] for a in dataset.annotations] == [100]
    assert any("a.json" in w and "imageData" in w for w in report.warnings), report.warnings


def test_labelme_unreadable_image_data_is_refused(tmp_path, cli):
    root = _labelme(tmp_path / "lm", [_shape("cell")], imageData=base64.b64encode(b"not an image").decode())
    (root / "a.png").unlink()
    before = _files(tmp_path)
    _refused(cli("convert", root, tmp_path / "out.json"), before, tmp_path, root / "a.json", "imageData")
