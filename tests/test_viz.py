"""Overlay pictures: fills, outlines and labels land where the instances are, on dark and light images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instaseg.core import masks as mask_ops
from instaseg.core.structures import Instances
from instaseg.data import Dataset
from instaseg.data.convert import open_dataset
from instaseg.viz import draw_instances, enlarge, instance_color, save_overlays, side_by_side
from tests.conftest import shared_dataset


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _two_discs(h=120, w=220):
    # Far enough apart that each label fits above its disc whatever the font's metrics.
    masks = np.stack([_disc(h, w, 60, 40, 20), _disc(h, w, 70, 170, 25)])
    return Instances.from_masks(masks, [0, 1], [0.9, 0.4], ("balloon", "cat"))


@pytest.mark.parametrize("background", [0, 255])
def test_fill_outline_and_label_on_dark_and_light(background):
    h, w = 120, 220
    image = np.full((h, w, 3), background, np.uint8)
    instances = _two_discs(h, w)
    picture = draw_instances(image, instances, alpha=0.5)

    assert picture.shape == image.shape and picture.dtype == np.uint8
    assert (image == background).all(), "the input image must not be modified"
    # Deep inside each disc: the background blended half-way towards the instance colour.
    for k, (cy, cx) in enumerate([(60, 40), (75, 170)]):
        expected = np.round(background * 0.5 + np.asarray(instance_color(k)) * 0.5)
        assert np.abs(picture[cy, cx].astype(int) - expected).max() <= 1
    # Far from every instance and label (bottom-left corner): untouched.
    assert (picture[h - 5 :, :10] == background).all()
    # A label sits just above each disc; it holds the instance colour and black or white text.
    for k, (top, left) in enumerate([(40, 20), (45, 145)]):
        region = picture[max(0, top - 20) : top, left : left + 40].reshape(-1, 3)
        colors = {tuple(int(v) for v in c) for c in region}
        assert instance_color(k) in colors
        assert (0, 0, 0) in colors or (255, 255, 255) in colors


def test_scores_make_the_label_wider():
    image = np.zeros((120, 220, 3), np.uint8)
    instances = _two_discs()
    with_scores = draw_instances(image, instances, alpha=0.0, show_scores=True)
    without = draw_instances(image, instances, alpha=0.0, show_scores=False)
    color = np.asarray(instance_color(0))
    width_with = (np.abs(with_scores[:40].astype(int) - color).max(axis=2) == 0).any(axis=0).sum()
    width_without = (np.abs(without[:40].astype(int) - color).max(axis=2) == 0).any(axis=0).sum()
    assert width_with > width_without


def test_alpha_zero_keeps_the_interior():
    image = np.full((120, 220, 3), 90, np.uint8)
    picture = draw_instances(image, _two_discs(), alpha=0.0)
    assert (picture[55:65, 35:45] == 90).all()


def test_palette_is_stable_and_distinct():
    first = [instance_color(k) for k in range(12)]
    assert first == [instance_color(k) for k in range(12)]
    assert len(set(first)) == 12
    # No two of the first twelve colours are near-identical.
    arr = np.asarray(first, float)
    distances = np.abs(arr[:, None] - arr[None]).sum(axis=2) + np.eye(12) * 1e9
    assert distances.min() > 40


def test_grayscale_input_and_size_mismatch():
    gray = np.zeros((120, 220), np.uint8)
    assert draw_instances(gray, _two_discs()).shape == (120, 220, 3)
    with pytest.raises(ValueError, match="masks are"):
        draw_instances(np.zeros((50, 50, 3), np.uint8), _two_discs())


def test_empty_instances_leave_the_image_as_is():
    image = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    assert (draw_instances(image, Instances.empty(30, 40)) == image).all()


def test_side_by_side_keeps_both_pictures():
    left = np.full((40, 30, 3), 10, np.uint8)
    right = np.full((50, 20, 3), 200, np.uint8)
    sheet = side_by_side(left, right, ("label", "suggestion"), gap=4)
    title_h = sheet.shape[0] - 50
    assert title_h > 0 and sheet.shape[1] == 30 + 4 + 20
    assert (sheet[title_h : title_h + 40, :30] == 10).all()
    assert (sheet[title_h:, 34:] == 200).all()
    assert (sheet[title_h + 40 :, :30] == 255).all()  # padding below the shorter picture


def test_enlarge_scales_image_masks_and_boxes_together():
    image = np.zeros((20, 30, 3), np.uint8)
    instances = Instances.from_masks(_disc(20, 30, 10, 10, 4)[None], [0], None, ("a",))
    big_image, big = enlarge(image, instances, min_side=100)
    assert big_image.shape == (100, 150, 3)
    assert big.masks.shape == (1, 100, 150)
    assert big.masks.sum() == instances.masks.sum() * 25
    assert big.boxes[0].tolist() == (instances.boxes[0] * 5).tolist()
    same_image, same = enlarge(np.zeros((400, 600, 3), np.uint8), Instances.empty(400, 600))
    assert same_image.shape == (400, 600, 3) and same.masks.shape == (0, 400, 600)


def test_show_draws_the_balloon_photos(tmp_path, cli):
    balloon = shared_dataset("balloon") / "val"
    r = cli("show", balloon, "--out", tmp_path / "out", "--limit", "1")
    assert r.code == 0, r.stderr
    (picture_path,) = (tmp_path / "out").rglob("*.png")
    dataset = open_dataset(balloon)
    image = next(img for img in dataset.images if Path(img["file_name"]).stem == picture_path.stem)
    photo = dataset.read_image(image)
    with Image.open(picture_path) as picture:
        drawn = np.asarray(picture)
    assert drawn.shape == photo.shape
    inside = dataset.ground_truth(image).masks.any(axis=0)
    changed = np.abs(drawn.astype(int) - photo).max(axis=2) > 0
    # Every balloon is tinted; well away from the balloons and labels, the photo is untouched.
    assert changed[inside].mean() > 0.95
    assert changed[~inside].mean() < 0.1


def test_show_labels_carry_scores_for_predictions(tmp_path):
    Image.new("RGB", (160, 120), (50, 50, 50)).save(tmp_path / "a.png")
    mask = _disc(120, 160, 60, 80, 30)
    rle = mask_ops.encode(mask)
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 160, "height": 120}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": rle,
                "bbox": mask_ops.bbox(rle),
                "area": mask_ops.area(rle),
            }
        ],
    }
    (labels,) = save_overlays(Dataset(coco, tmp_path), tmp_path / "labels")
    coco["annotations"][0]["score"] = 0.87
    (predictions,) = save_overlays(Dataset(coco, tmp_path), tmp_path / "predictions")
    label_picture, prediction_picture = (np.asarray(Image.open(p)) for p in (labels, predictions))
    assert label_picture.shape == (480, 640, 3)  # enlarged 4 times: 384 / 120 rounded up
    differs = np.abs(label_picture.astype(int) - prediction_picture).max(axis=2) > 0
    rows, cols = np.nonzero(differs)
    # Only the label differs: it grows to the right by the score text, above the disc.
    assert differs.any() and rows.max() < (60 - 30) * 4 and cols.min() > (80 - 30) * 4
