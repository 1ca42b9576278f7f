"""The synthetic shapes dataset: deterministic, valid COCO, visible (non-overlapping) masks."""

from __future__ import annotations

import numpy as np

from instaseg.core import masks as mask_ops
from instaseg.data import Dataset
from instaseg.data.synth import CLASS_NAMES, MIN_VISIBLE_PIXELS, make_synthetic


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a = make_synthetic(tmp_path / "a", num_train=6, num_val=3, size=64, seed=1)
    b = make_synthetic(tmp_path / "b", num_train=6, num_val=3, size=64, seed=1)
    make_synthetic(tmp_path / "c", num_train=6, num_val=3, size=64, seed=2)
    for x, y in zip(a, b, strict=True):
        assert x.read_bytes() == y.read_bytes()
    assert (tmp_path / "a/train/train_000001.png").read_bytes() == (tmp_path / "b/train/train_000001.png").read_bytes()
    assert (tmp_path / "a/train/train_000001.png").read_bytes() != (tmp_path / "c/train/train_000001.png").read_bytes()


def test_val_split_does_not_depend_on_train_size(tmp_path):
    _, val_small = make_synthetic(tmp_path / "a", num_train=2, num_val=3, size=64)
    _, val_large = make_synthetic(tmp_path / "b", num_train=9, num_val=3, size=64)
    assert val_small.read_bytes() == val_large.read_bytes()


def test_annotations_are_visible_disjoint_masks_matching_the_images(tmp_path):
    train_json, _ = make_synthetic(tmp_path / "s", num_train=20, num_val=1, size=96, seed=3)
    ds = Dataset.load(train_json)
    assert ds.class_names == list(CLASS_NAMES)
    assert len(ds.images) == 20 and len(ds.annotations) >= 40
    assert {ann["category_id"] for ann in ds.annotations} == {1, 2, 3, 4}
    for image in ds.images:
        assert ds.read_image(image).shape == (96, 96, 3)
        gt = ds.ground_truth(image)
        assert len(gt) >= 1
        # Later shapes occlude earlier ones, so the stored visible masks never overlap.
        assert gt.masks.sum(0).max() <= 1
        assert gt.areas.min() >= MIN_VISIBLE_PIXELS
    for ann in ds.annotations:
        rle = ann["segmentation"]
        assert ann["area"] == mask_ops.area(rle)
        assert np.allclose(ann["bbox"], mask_ops.bbox(rle))


def test_cli_synth_refuses_to_overwrite(tmp_path, cli):
    out = tmp_path / "shapes"
    first = cli("synth", out, "--num-train", "2", "--num-val", "1", "--size", "48")
    assert first.code == 0 and (out / "train.json").exists() and (out / "val/val_000001.png").exists()
    again = cli("synth", out, "--num-train", "2", "--num-val", "1")
    assert again.code == 2 and again.stderr.startswith("error:") and "--overwrite" in again.stderr
    replaced = cli("synth", out, "--num-train", "3", "--num-val", "1", "--size", "48", "--overwrite")
    assert replaced.code == 0 and len(Dataset.load(out / "train.json").images) == 3
