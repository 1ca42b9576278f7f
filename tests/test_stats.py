"""``instaseg stats``: counts agree with pycocotools' own indexes and area ranges."""

from __future__ import annotations

import contextlib
import io as std_io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from instaseg.core import io
from instaseg.data import Dataset
from instaseg.data.stats import dataset_stats, object_size


def _square(x, y, side):
    return [[x, y, x + side, y, x + side, y + side, x, y + side]]


@pytest.fixture
def coco_file(tmp_path):
    """Four 300x200 images: 0, 1, 3 and 7 instances of two classes, sizes on both sides of 32² and 96²."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 300, "height": 200} for i in range(1, 5)]
    sides = {2: [10], 3: [20, 40, 100], 4: [5, 31, 33, 95, 97, 150, 60]}
    annotations = []
    for image_id, image_sides in sides.items():
        for side in image_sides:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1 + len(annotations) % 2,
                    "segmentation": _square(1, 1, side),
                    "bbox": [1, 1, side, side],
                    "area": side * side,
                    "iscrowd": int(side == 150),
                }
            )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "dust"}],
    }
    for image in images:
        Image.new("RGB", (300, 200)).save(tmp_path / image["file_name"])
    return io.write_json(tmp_path / "data.json", coco)


def test_counts_match_pycocotools(coco_file):
    stats = dataset_stats(Dataset.load(coco_file))
    with contextlib.redirect_stdout(std_io.StringIO()):
        coco = COCO(str(coco_file))
    assert stats["images"] == len(coco.getImgIds()) == 4
    assert stats["instances"] == len(coco.getAnnIds()) == 11
    for cat_id, name in ((1, "cell"), (2, "dust")):
        row = stats["per_class"][name]
        assert row["instances"] == len(coco.getAnnIds(catIds=[cat_id]))
        assert row["images"] == len(coco.getImgIds(catIds=[cat_id]))
    # pycocotools' own area filter (open ranges; no area here sits on a boundary).
    assert stats["sizes"]["small"] == len(coco.getAnnIds(areaRng=[0, 32**2]))
    assert stats["sizes"]["medium"] == len(coco.getAnnIds(areaRng=[32**2, 96**2]))
    assert stats["sizes"]["large"] == len(coco.getAnnIds(areaRng=[96**2, 1e10]))
    assert stats["crowd"] == len(coco.getAnnIds(iscrowd=True)) == 1
    per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
    assert stats["images_without_instances"] == per_image.count(0) == 1
    spread = stats["instances_per_image"]
    assert (spread["min"], spread["median"], spread["max"]) == (0, float(np.median(per_image)), 7)
    assert sum(b["images"] for b in spread["histogram"]) == 4
    assert {b["from"]: b["images"] for b in spread["histogram"]}[7] == 1


def test_missing_area_is_measured_from_the_mask():
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 300, "height": 200}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": _square(0, 0, 100)}],
    }
    assert dataset_stats(Dataset(coco))["sizes"] == {"small": 0, "medium": 0, "large": 1}
    coco["annotations"][0]["category_id"] = 5
    assert dataset_stats(Dataset(coco))["per_class"]["<unknown id 5>"]["instances"] == 1


def test_object_size_is_the_median_side_of_an_images_instances(coco_file):
    dataset = Dataset.load(coco_file)
    sizes = [object_size(dataset, image) for image in dataset.images]
    # image 4: the 150 px square is a crowd region, left out; the median of the other six sides
    assert sizes == [None, 10.0, 40.0, pytest.approx(np.median([5, 31, 33, 95, 97, 60]))]
    del dataset.annotations[1]["area"]  # measured from the polygon instead
    assert object_size(dataset, dataset.images[2]) == pytest.approx(40.0)


def test_cli_table_json_and_plot(coco_file, tmp_path, cli):
    r = cli("stats", coco_file)
    assert r.code == 0, r.stderr
    assert "cell" in r.stdout and "dust" in r.stdout and "images without instances" in r.stdout

    r = cli("stats", coco_file, "--json")
    assert r.code == 0
    assert json.loads(r.stdout) == dataset_stats(Dataset.load(coco_file))

    plot = tmp_path / "stats.png"
    r = cli("stats", coco_file, "--plot", plot)
    assert r.code == 0, r.stderr
    with Image.open(plot) as picture:
        assert picture.size[0] > 500
    r = cli("stats", coco_file, "--plot", plot)
    assert r.code == 2 and "--overwrite" in r.stderr
    assert cli("stats", coco_file, "--plot", plot, "--overwrite").code == 0
