"""The predictions folder: its COCO files, counts, overlays, class filtering and bad inputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.core.structures import Instances
from instaseg.data import Dataset
from instaseg.engine.predict import predict_images


class FakePredictor:
    """Finds one 'disc' (score 0.9) and one 'box' (score 0.3) at fixed places in any image."""

    class_names = ("disc", "box", "never")
    max_detections = 100

    def predict(self, image, score_threshold=0.5, classes=None, max_detections=None):
        height, width = image.shape[:2]
        yy, xx = np.mgrid[:height, :width]
        disc = (yy - height // 2) ** 2 + (xx - width // 2) ** 2 <= 36
        box = np.zeros((height, width), bool)
        box[1:5, 2:9] = True
        found = Instances.from_masks(np.stack([disc, box]), [0, 1], [0.9, 0.3], self.class_names)
        return found.filter(score_threshold, classes)[: max_detections or self.max_detections]


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 40, 3), np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (24, 30, 3), np.uint8)).save(folder / "sub" / "b.jpg")
    return folder


def test_folder_holds_coco_predictions_results_and_counts(tmp_path, image_dir):
    out = tmp_path / "pred"
    summary = predict_images(FakePredictor(), [image_dir], score_threshold=0.2, classes=None, out=out, overlays=False)
    assert summary["images"] == 2 and summary["total"] == 4
    assert summary["counts"] == {"disc": 2, "box": 2, "never": 0}

    predictions = Dataset.load(out / "predictions.json")
    assert [img["file_name"] for img in predictions.images] == ["a.png", "sub/b.jpg"]
    assert [(img["width"], img["height"]) for img in predictions.images] == [(40, 32), (30, 24)]
    assert predictions.categories == [{"id": 1, "name": "disc"}, {"id": 2, "name": "box"}, {"id": 3, "name": "never"}]
    expected = FakePredictor().predict(np.zeros((24, 30, 3), np.uint8), score_threshold=0.2)
    got = predictions.ground_truth(2)
    assert (got.masks == expected.masks).all()
    assert got.scores.tolist() == pytest.approx([0.9, 0.3])

    # results.json is exactly what pycocotools' loadRes accepts for these images.
    gt = COCO(str(out / "predictions.json"))
    results = json.loads((out / "results.json").read_text())
    assert {"image_id", "category_id", "segmentation", "bbox", "score"} <= set(results[0])
    loaded = gt.loadRes(results)
    assert len(loaded.getAnnIds()) == 4
    box_ann = [a for a in results if a["image_id"] == 1 and a["category_id"] == 2][0]
    assert box_ann["bbox"] == [2, 1, 7, 4] and box_ann["area"] == 28
    assert mask_ops.decode(box_ann["segmentation"], 32, 40)[1:5, 2:9].all()

    rows = list(csv.reader((out / "counts.csv").open()))
    assert rows[0] == ["image", "disc", "box", "never", "total"]
    assert rows[1] == ["a.png", "1", "1", "0", "2"]
    assert rows[-1] == ["TOTAL", "2", "2", "0", "4"]
    counts = json.loads((out / "counts.json").read_text())
    assert counts["total"] == {"counts": {"disc": 2, "box": 2, "never": 0}, "total": 4}
    assert counts["images"][1] == {"file_name": "sub/b.jpg", "counts": {"disc": 1, "box": 1, "never": 0}, "total": 2}


def test_score_threshold_and_classes_restrict_the_output(tmp_path, image_dir):
    summary = predict_images(
        FakePredictor(), [image_dir / "a.png"], score_threshold=0.5, classes=None, out=tmp_path / "p1", overlays=False
    )
    assert summary["counts"] == {"disc": 1, "box": 0, "never": 0}

    summary = predict_images(
        FakePredictor(),
        [str(image_dir / "**" / "*.jpg")],
        score_threshold=0.1,
        classes=["box"],
        out=tmp_path / "p2",
        overlays=False,
    )
    assert summary["counts"] == {"box": 1} and summary["images"] == 1
    results = json.loads((tmp_path / "p2" / "results.json").read_text())
    assert [r["category_id"] for r in results] == [2]
    assert next(csv.reader((tmp_path / "p2" / "counts.csv").open())) == ["image", "box", "total"]


def test_images_that_reach_the_detection_cap_are_named(tmp_path, image_dir, cli, monkeypatch):
    summary = predict_images(
        FakePredictor(), [image_dir], score_threshold=0.1, max_detections=1, out=tmp_path / "p", overlays=False
    )
    assert summary["capped"] == ["a.png", "sub/b.jpg"] and summary["total"] == 2
    counts = json.loads((tmp_path / "p" / "counts.json").read_text())
    assert counts["max_detections"] == 1 and counts["capped"] == ["a.png", "sub/b.jpg"]
    assert (
        predict_images(FakePredictor(), [image_dir], score_threshold=0.1, out=tmp_path / "q", overlays=False)["capped"]
        == []
    )

    monkeypatch.setattr("instaseg.engine.predictor.load", lambda path: FakePredictor())
    r = cli(
        "predict",
        "fake.pt",
        image_dir,
        "--score",
        "0.1",
        "--max-detections",
        "1",
        "--out",
        tmp_path / "r",
        "--no-overlays",
    )
    assert r.code == 0 and "2 image(s) reached the cap of 1 instances" in r.stderr and "--max-detections" in r.stderr
    r = cli("predict", "fake.pt", image_dir, "--max-detections", "0", "--out", tmp_path / "s")
    assert r.code == 2 and "max-detections" in r.stderr


def test_unknown_class_is_refused_with_the_known_names(tmp_path, image_dir):
    with pytest.raises(InstasegError, match="unknown class 'cat'.*disc, box, never"):
        predict_images(FakePredictor(), [image_dir], classes=["cat"], out=tmp_path / "p", overlays=False)
    assert not (tmp_path / "p").exists()
    with pytest.raises(InstasegError, match="no class names given"):
        predict_images(FakePredictor(), [image_dir], classes=[], out=tmp_path / "p", overlays=False)


def test_corrupt_image_is_skipped_and_reported(tmp_path, image_dir):
    (image_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    summary = predict_images(FakePredictor(), [image_dir], out=tmp_path / "p", overlays=False)
    assert summary["images"] == 2
    assert [s["file"] for s in summary["skipped"]] == [str(image_dir / "broken.png")]
    assert "broken.png" in summary["skipped"][0]["reason"]
    assert json.loads((tmp_path / "p" / "counts.json").read_text())["skipped"] == summary["skipped"]

    only_broken = tmp_path / "only"
    only_broken.mkdir()
    (only_broken / "x.png").write_bytes(b"garbage")
    with pytest.raises(InstasegError, match="none of the 1 images could be read"):
        predict_images(FakePredictor(), [only_broken], out=tmp_path / "q", overlays=False)
    assert not (tmp_path / "q").exists()


def test_existing_output_needs_overwrite(tmp_path, image_dir):
    out = tmp_path / "p"
    predict_images(FakePredictor(), [image_dir], out=out, overlays=False)
    with pytest.raises(InstasegError, match="already exists"):
        predict_images(FakePredictor(), [image_dir], out=out, overlays=False)
    (out / "marker").write_text("old")
    predict_images(FakePredictor(), [image_dir], out=out, overlays=False, overwrite=True)
    assert not (out / "marker").exists() and (out / "predictions.json").exists()


def test_missing_images_are_a_clear_error(tmp_path):
    with pytest.raises(InstasegError, match="no such file"):
        predict_images(FakePredictor(), [tmp_path / "nope.png"], out=tmp_path / "p", overlays=False)


def test_overlays_show_the_instances(tmp_path, image_dir):
    (image_dir / "sub" / "a.png").write_bytes((image_dir / "a.png").read_bytes())  # same stem twice
    out = tmp_path / "p"
    predict_images(FakePredictor(), [image_dir], score_threshold=0.2, out=out)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a-2.png", "a.png", "b.png"]
    original = np.asarray(Image.open(image_dir / "a.png"))
    overlay = np.asarray(Image.open(out / "overlays" / "a.png"))
    factor = overlay.shape[0] // original.shape[0]  # small images are enlarged by a whole factor
    assert factor >= 1 and overlay.shape[:2] == (original.shape[0] * factor, original.shape[1] * factor)
    assert (overlay[16 * factor, 20 * factor] != original[16, 20]).any()  # the disc's centre is tinted


def write_tiny_checkpoint(path, class_names=("a", "b")):
    """A seeded, untrained Mask R-CNN small enough to run in milliseconds, saved as an instaseg checkpoint.

    Random weights still give detections: every class scores about 1 / (classes + 1).
    """
    import torch

    from instaseg.engine.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from instaseg.models.registry import resolve_config

    torch.manual_seed(0)
    kwargs = resolve_config("maskrcnn_resnet18_fpn", "small", min_size=64, max_size=64, fpn_channels=32, box_head_fc=64)
    from instaseg.models import get_model

    model = get_model("maskrcnn_resnet18_fpn", len(class_names), **kwargs)
    config = {"model": "maskrcnn_resnet18_fpn", "class_names": list(class_names), "kwargs": kwargs}
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "version": 1, "config": config, "model": model.state_dict()})
    return path


def test_cli_predict_with_a_real_checkpoint(tmp_path, image_dir, cli):
    model = write_tiny_checkpoint(tmp_path / "tiny.pt")
    r = cli("predict", model, image_dir, "--score", "0.05", "--classes", "b", "--out", tmp_path / "p", "--no-overlays")
    assert r.code == 0, r.stderr
    counts = json.loads((tmp_path / "p" / "counts.json").read_text())
    assert counts["classes"] == ["b"] and counts["total"]["total"] > 0
    assert "total" in r.stdout and str(counts["total"]["total"]) in r.stdout
    assert not (tmp_path / "p" / "overlays").exists()
    results = json.loads((tmp_path / "p" / "results.json").read_text())
    assert {r["category_id"] for r in results} == {2}

    r = cli("predict", model, image_dir, "--classes", "b,zebra", "--out", tmp_path / "q")
    assert r.code == 2 and "unknown class 'zebra'" in r.stderr and "a, b" in r.stderr
    r = cli("predict", model, image_dir, "--out", tmp_path / "p")
    assert r.code == 2 and "already exists" in r.stderr
    r = cli("predict", tmp_path / "missing.pt", image_dir, "--out", tmp_path / "q")
    assert r.code == 2 and "missing.pt" in r.stderr


def test_pasted_masks_give_back_the_masks_the_mask_head_learnt_from():
    """masks.paste inverts the training targets: torchvision's roi_align (aligned=False) of a GT mask."""
    import torch
    from torchvision.models.detection.roi_heads import paste_masks_in_image
    from torchvision.ops import roi_align

    rng = np.random.default_rng(0)
    height = width = 128
    yy, xx = np.mgrid[:height, :width] + 0.5
    ours, theirs = [], []
    for _ in range(60):
        (cy, cx), radius = rng.uniform(20, 108, 2), rng.uniform(4, 15)
        truth = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        box = np.array([mask_ops.box_from_mask(truth)], np.float32)
        rois = torch.tensor([[0.0, *box[0]]])
        target = roi_align(torch.from_numpy(truth.astype(np.float32))[None, None], rois, (28, 28), 1.0)[0].numpy()
        pasted = mask_ops.paste(target, box, height, width)[0]
        reference = paste_masks_in_image(torch.from_numpy(target)[None], torch.from_numpy(box), (height, width))[0, 0]
        ours.append((pasted & truth).sum() / (pasted | truth).sum())
        theirs.append(((reference.numpy() > 0.5) & truth).sum() / ((reference.numpy() > 0.5) | truth).sum())
    # torchvision rounds boxes to whole pixels; pasting at sub-pixel positions gets closer to the truth.
    assert np.mean(ours) > 0.94 and min(ours) > 0.8
    assert np.mean(ours) > np.mean(theirs) + 0.03
