"""Import of the real datasets in ../shared/datasets over the API, exported to COCO: the same images,
categories and instances (masks pixel for pixel) as instaseg reads from the originals. Skipped
when the checkout has no ../shared beside it."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from instaseg.app.server import create_app, open_project
from instaseg.app.settings import AppSettings
from instaseg.core import masks as mask_ops
from instaseg.data import Dataset
from instaseg.data.convert import ReadOptions, open_dataset

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def _shared(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"needs ../shared/datasets/{name}, which is not beside this checkout")
    return path


@functools.cache
def _original_content(name: str, sources: tuple[str, ...], fmt: str, options: tuple) -> tuple[list[tuple], dict]:
    """What instaseg reads from the originals: read once for both databases' cases."""
    root = SHARED / name
    return _content([open_dataset(root / source, fmt, options=ReadOptions(**dict(options))) for source in sources])


def _content(datasets: list[Dataset]) -> tuple[list[tuple], dict[Path, tuple]]:
    """Categories as (name, supercategory) in order, and per image file (resolved): its size and its
    instances in order as (class name, crowd, mask)."""
    categories = [(c["name"], c.get("supercategory")) for c in datasets[0].categories]
    images = {}
    for dataset in datasets:
        assert [(c["name"], c.get("supercategory")) for c in dataset.categories] == categories
        names = {c["id"]: c["name"] for c in dataset.categories}
        for image in dataset.images:
            h, w = image["height"], image["width"]
            instances = [
                (names[a["category_id"]], bool(a.get("iscrowd", 0)), mask_ops.decode(a["segmentation"], h, w))
                for a in dataset.annotations_by_image.get(image["id"], [])
            ]
            images[dataset.image_path(image).resolve()] = ((w, h), instances)
    return categories, images


@pytest.mark.parametrize(
    ("name", "sources", "fmt", "options", "counts"),
    [
        ("balloon", ["train", "val"], "via", {}, (74, 305)),
        ("coco128-seg", ["."], "yolo", {}, (128, 929)),
        ("dsb2018_nuclei", ["."], "mask-files", {"class_name": "nucleus"}, (53, 2558)),
    ],
)
def test_shared_dataset_import_export_gives_the_same_instances(
    name, sources, fmt, options, counts, tmp_path, database_url
):
    root = _shared(name)
    settings = AppSettings(project_dir=tmp_path / "project", database_url=database_url)
    db = open_project(settings, image_root=root)
    try:
        with TestClient(create_app(settings, db)) as client:
            for source in sources:
                response = client.post("/api/import", json={"source": source, "format": fmt, "options": options})
                assert response.status_code == 200, response.text
            response = client.get("/api/export", params={"format": "coco"})
            assert response.status_code == 200, response.text
    finally:
        db.close()
    exported = Dataset(response.json(), root)
    assert (len(exported.images), len(exported.annotations)) == counts
    categories, images = _original_content(name, tuple(sources), fmt, tuple(options.items()))
    categories_back, images_back = _content([exported])
    assert categories_back == categories
    assert images_back.keys() == images.keys()
    for path, (size, instances) in images.items():
        size_back, instances_back = images_back[path]
        assert size_back == size, path
        assert [(c, crowd) for c, crowd, _ in instances_back] == [(c, crowd) for c, crowd, _ in instances], path
        for (_, _, mask), (_, _, mask_back) in zip(instances, instances_back, strict=True):
            assert np.array_equal(mask, mask_back), path
