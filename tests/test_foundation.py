"""The core types: Instances validation and subsetting, mask encodings, atomic writes, image reading."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from instaseg.core import io
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.core.structures import Instances
from instaseg.data import Dataset


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_instances_validates_lengths_and_subsets():
    masks = np.stack([_disc(32, 40, 10, 10, 5), _disc(32, 40, 20, 30, 6)])
    inst = Instances.from_masks(masks, [0, 1], [0.9, 0.3], ("a", "b"))
    assert inst.image_size == (32, 40)
    assert inst.boxes[0].tolist() == [5, 5, 16, 16]
    assert inst.filter(min_score=0.5).class_labels == ["a"]
    assert inst.counts() == {"a": 1, "b": 1}
    assert len(inst[np.array([False, True])]) == 1
    with pytest.raises(ValueError):
        Instances(np.zeros((2, 4)), masks, [0], [1, 1])
    with pytest.raises(ValueError):
        Instances.from_masks(masks, [0, 2], None, ("a", "b"))


def test_polygon_roundtrip_redraws_the_same_pixels():
    mask = _disc(50, 60, 25, 30, 12) | _disc(50, 60, 5, 5, 3)
    redrawn = mask_ops.decode(mask_ops.to_polygons(mask), 50, 60)
    assert (redrawn == mask).all()


def test_rle_forms_agree():
    mask = _disc(20, 30, 10, 12, 6)
    compressed = mask_ops.encode(mask)
    uncompressed = {"size": [20, 30], "counts": _uncompressed_counts(mask)}
    assert (mask_ops.decode(uncompressed, 20, 30) == mask).all()
    assert (mask_ops.decode(compressed, 20, 30) == mask).all()
    assert mask_ops.area(compressed) == mask.sum()


def _uncompressed_counts(mask):
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return counts


def test_atomic_write_refuses_overwrite_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(InstasegError, match="--overwrite"):
        io.write_json(target, {"a": 2})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target, overwrite=True) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert io.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.parametrize(
    "mode, value",
    [("L", 128), ("RGBA", (10, 20, 30, 0)), ("I;16", 4000), ("P", 3)],
)
def test_read_image_gives_rgb_uint8(tmp_path, mode, value):
    path = tmp_path / "img.png"
    Image.new(mode, (7, 5), value).save(path)
    pixels = io.read_image(path)
    assert pixels.shape == (5, 7, 3) and pixels.dtype == np.uint8


def test_read_image_applies_exif_rotation(tmp_path):
    img = Image.new("RGB", (8, 4))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert io.read_image(path).shape == (8, 4, 3)
    assert io.image_size(path) == (4, 8)


def test_dataset_schema_errors_name_the_record(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [{"id": 1, "file_name": "a.png", "width": 4}], "categories": []}')
    with pytest.raises(InstasegError, match=r"bad.json: images\[0\] \(id 1\): field 'height' missing"):
        Dataset.load(path)


def test_ground_truth_instances_carry_annotation_ids():
    coco = {
        "images": [{"id": 3, "file_name": "x.png", "width": 10, "height": 8}],
        "categories": [{"id": 7, "name": "cell"}],
        "annotations": [
            {"id": 11, "image_id": 3, "category_id": 7, "segmentation": [[1, 1, 6, 1, 6, 5, 1, 5]], "iscrowd": 0}
        ],
    }
    gt = Dataset(coco).ground_truth(3)
    assert gt.class_labels == ["cell"] and gt.data["annotation_id"].tolist() == [11]
    assert gt.masks.shape == (1, 8, 10) and gt.masks[0].sum() > 0


def test_polygon_far_outside_is_clipped_not_allocated():
    # A vertex at 1e12 would make pycocotools allocate terabytes; it must be clipped first.
    huge = [[2, 2, 1e12, 2, 1e12, 6, 2, 6]]
    mask = mask_ops.decode(huge, 10, 12)
    assert mask.shape == (10, 12)
    assert mask[3, 2:].all() and not mask[8].any()
