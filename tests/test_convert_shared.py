"""Converters on the real datasets in ../shared/datasets (skipped when they are not there)."""

from __future__ import annotations

import numpy as np

from instaseg.core import masks as mask_ops
from instaseg.data import Dataset
from tests.conftest import shared_dataset


def _rles_by_image(dataset: Dataset) -> dict[str, list[dict]]:
    """{image base name: [RLE per instance]} in annotation order."""
    out = {}
    for image in dataset.images:
        anns = dataset.annotations_by_image.get(image["id"], [])
        out[image["file_name"].rsplit("/", 1)[-1]] = [
            mask_ops.to_rle(a["segmentation"], image["height"], image["width"]) for a in anns
        ]
    return out


def _labels(dataset: Dataset) -> list[str]:
    return [dataset.class_names[dataset.category_index[a["category_id"]]] for a in dataset.annotations]


def test_balloon_via_to_coco_counts(tmp_path, cli):
    root = shared_dataset("balloon")
    for split, images, instances in (("train", 61, 255), ("val", 13, 50)):
        out = tmp_path / f"{split}.json"
        r = cli("convert", root / split, out)
        assert r.code == 0, r.stderr
        assert "detected format: via" in r.stdout
        dataset = Dataset.load(out)
        assert (len(dataset.images), len(dataset.annotations)) == (images, instances)
        assert dataset.class_names == ["object"]
        assert dataset.read_image(dataset.images[0]).shape[:2] == (
            dataset.images[0]["height"],
            dataset.images[0]["width"],
        )
        for image in dataset.images:  # 13 polygons touch x == width or y == height: clipped
            for ann in dataset.annotations_by_image[image["id"]]:
                polygon = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
                assert polygon[:, 0].max() <= image["width"] and polygon[:, 1].max() <= image["height"]


def test_dsb_mask_files_to_coco_to_yolo_to_coco_keeps_all_instances(tmp_path, cli):
    root = shared_dataset("dsb2018_nuclei")
    assert cli("convert", root, tmp_path / "a.json", "--class", "nucleus").code == 0
    assert cli("convert", tmp_path / "a.json", tmp_path / "yolo", "--to", "yolo").code == 0
    r = cli("convert", tmp_path / "yolo", tmp_path / "b.json")
    assert r.code == 0, r.stderr
    first, back = Dataset.load(tmp_path / "a.json"), Dataset.load(tmp_path / "b.json")
    assert len(first.images) == len(back.images) == 53
    assert len(first.annotations) == len(back.annotations) == 2558
    assert back.class_names == ["nucleus"]
    before, after = _rles_by_image(first), _rles_by_image(back)
    ious = np.concatenate([np.diag(mask_ops.iou(before[name], after[name])) for name in before])
    # holes and multi-part masks survive too: YOLO polygons are joined and filled even-odd
    assert ious.min() >= 0.98


def test_coco128_yolo_to_coco_to_labelme_to_coco_keeps_masks(tmp_path, cli):
    root = shared_dataset("coco128-seg")
    r = cli("convert", root, tmp_path / "a.json")
    assert r.code == 0, r.stderr
    assert "detected format: yolo" in r.stdout
    assert r.stderr.count("background image") == 2 and r.stderr.count("without an image") == 2
    assert cli("convert", tmp_path / "a.json", tmp_path / "labelme", "--to", "labelme").code == 0
    assert cli("convert", tmp_path / "labelme", tmp_path / "b.json").code == 0
    first, back = Dataset.load(tmp_path / "a.json"), Dataset.load(tmp_path / "b.json")
    assert len(first.images) == len(back.images) == 128
    assert len(first.annotations) == len(back.annotations) == 929
    assert first.class_names == [f"class_{k}" for k in range(80)]
    before, after = _rles_by_image(first), _rles_by_image(back)
    assert before.keys() == after.keys()
    assert _labels(first) == _labels(back)
    ious = np.concatenate([np.diag(mask_ops.iou(before[name], after[name])) for name in before if before[name]])
    assert len(ious) == 929 and ious.min() >= 0.98
