"""Training: a few iterations on tiny synthetic data, checkpoints, resume, weights and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from instaseg.core.errors import InstasegError
from instaseg.data import Dataset
from instaseg.data.stats import object_size
from instaseg.data.synth import make_synthetic
from instaseg.engine.checkpoint import load_weights, read_checkpoint
from instaseg.engine.config import TrainConfig
from instaseg.engine.data import TrainingImages, epoch_batches
from instaseg.engine.predictor import load
from instaseg.engine.train import WARMUP_ITERS, Schedule, Trainer, train
from instaseg.models import get_model
from instaseg.review.sources import seen_warning, training_image_digests
from tests.conftest import TINY_MASKRCNN as TINY

# Small enough that one iteration takes well under a second on one core.


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    train_json, val_json = make_synthetic(tmp_path_factory.mktemp("shapes") / "data", num_train=8, num_val=2, size=64)
    return Dataset.load(train_json), Dataset.load(val_json)


def _train(data, out, *, resume=False, **kw):
    config = TrainConfig(**{"epochs": 1, "batch_size": 4, "preset": "small", "model_kwargs": TINY, **kw})
    return train(config, *data, out=out, resume=resume)


def test_a_few_iterations_give_finite_losses_and_a_loadable_checkpoint(shapes, tmp_path):
    best = _train(shapes, tmp_path / "run")
    assert best == tmp_path / "run" / "best.pt"
    for name in ("best.pt", "last.pt", "metrics.jsonl", "curves.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert steps and all(np.isfinite(r[k]) for r in steps for k in r if k.startswith("loss"))
    assert any("val_mask_mAP" in r for r in rows)
    predictor = load(best, device="cpu")
    assert predictor.class_names == tuple(shapes[0].class_names)
    result = predictor.predict(shapes[1].image_path(shapes[1].images[0]), score_threshold=0.0)
    assert result.masks.shape[1:] == (64, 64)
    assert result.data["class_probs"].shape == (len(result), 4)
    # The checkpoint names its training images, so a review can tell seen images from unseen ones.
    assert len(training_image_digests(predictor.config)) == len(shapes[0].images)
    assert seen_warning(shapes[1], training_image_digests(predictor.config)) is None
    assert "trained on 8 of these 8 images" in seen_warning(shapes[0], training_image_digests(predictor.config))
    # ... and the object sizes it learnt at its input size (64 px images, no resizing)
    sides = [object_size(shapes[0], image) for image in shapes[0].images]
    assert predictor.object_sizes == pytest.approx(tuple(np.percentile(sides, (10, 90))))
    with pytest.raises(InstasegError, match="--overwrite"):
        _train(shapes, tmp_path / "run")


def test_resume_continues_exactly_where_last_pt_was_written(shapes, tmp_path, monkeypatch):
    # The run resumes with the augmentation it recorded, though the resuming command leaves it out.
    no_val = (shapes[0], None)
    recipe = {"flips": "all", "photometric": "all"}
    _train(no_val, tmp_path / "straight", epochs=2, batch_size=2, **recipe)
    straight = read_checkpoint(tmp_path / "straight" / "last.pt")

    calls = {"n": 0}
    real_step = Trainer.run_step

    def dies_at_third_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "run_step", dies_at_third_step)
    with pytest.raises(KeyboardInterrupt):
        _train(no_val, tmp_path / "killed", epochs=2, batch_size=2, checkpoint_every=1, **recipe)
    monkeypatch.setattr(Trainer, "run_step", real_step)
    assert read_checkpoint(tmp_path / "killed" / "last.pt")["train_state"]["iteration"] == 2
    _train(no_val, tmp_path / "killed", epochs=2, batch_size=2, resume=True)
    resumed = read_checkpoint(tmp_path / "killed" / "last.pt")
    assert resumed["train_state"]["iteration"] == straight["train_state"]["iteration"] == 8
    for name, tensor in straight["model"].items():
        assert torch.allclose(tensor.float(), resumed["model"][name].float(), atol=1e-6), name


def test_torchvision_state_dict_with_other_class_count_reinitialises_heads(tmp_path, shapes, cli):
    torch.manual_seed(1)
    other = get_model("maskrcnn_resnet18_fpn", 2, preset="small", **TINY)
    path = tmp_path / "tv.pth"
    torch.save(other.state_dict(), path)
    model = get_model("maskrcnn_resnet18_fpn", 4, preset="small", **TINY)
    not_loaded = load_weights(model, path)
    assert any(
        line.startswith("roi_heads.box_predictor.cls_score.weight (shape (3, 512) in file") for line in not_loaded
    )
    assert any(line.startswith("roi_heads.mask_predictor.mask_fcn_logits.weight") for line in not_loaded)
    assert len(not_loaded) == 6  # class-specific weights and biases of the box and mask predictors
    assert torch.equal(model.backbone.body.conv1.weight, other.backbone.body.conv1.weight)

    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(InstasegError, match="no tensor in the file fits"):
        load_weights(model, tmp_path / "foreign.pth")


def test_cli_train_reports_unloaded_layers_and_bad_arguments(tmp_path, shapes, cli):
    train_json = shapes[0].source
    other = get_model("maskrcnn_resnet18_fpn", 2, preset="cpu")
    torch.save(other.state_dict(), tmp_path / "tv.pth")
    ok = cli(
        "train",
        train_json,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--weights",
        tmp_path / "tv.pth",
        "--out",
        tmp_path / "run",
    )
    assert ok.code == 0, ok.stderr
    assert "roi_heads.box_predictor.cls_score.weight" in ok.stdout and "best checkpoint:" in ok.stdout
    no_length = cli("train", train_json, "--out", tmp_path / "other")
    assert no_length.code == 2 and "--epochs N or --minutes M" in no_length.stderr
    again = cli("train", train_json, "--epochs", "1", "--out", tmp_path / "run")
    assert again.code == 2 and "--overwrite" in again.stderr
    nothing = cli("train", train_json, "--epochs", "1", "--resume", "--out", tmp_path / "empty")
    assert nothing.code == 2 and "nothing to resume" in nothing.stderr


def test_bad_training_data_is_refused_or_warned(tmp_path, shapes):
    empty = Dataset({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}, source="empty.json")
    with pytest.raises(InstasegError, match="empty.json: the training set has no images"):
        train(TrainConfig(epochs=1), empty, out=tmp_path / "a")
    coco = shapes[0].copy().coco
    coco["categories"].append({"id": 9, "name": "hexagon"})
    with pytest.warns(UserWarning, match="no instances of hexagon"):
        train(
            TrainConfig(epochs=1, preset="small", model_kwargs=TINY, batch_size=8),
            Dataset(coco, shapes[0].image_root),
            out=tmp_path / "b",
        )
    # Resuming with another class list is refused, naming both lists.
    with pytest.raises(InstasegError, match="last.pt was trained on classes"):
        _train(shapes, tmp_path / "b", resume=True)


def test_mixed_sizes_and_channel_counts_train(tmp_path):
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for k, (mode, w, h) in enumerate([("L", 64, 48), ("RGBA", 48, 64), ("RGB", 80, 60), ("I;16", 60, 60)]):
        base = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        gray16 = np.asarray(base.convert("L")).astype(np.uint16) * 200
        img = Image.fromarray(gray16) if mode == "I;16" else base.convert(mode)
        img.save(tmp_path / f"{k}.png")
        images.append({"id": k + 1, "file_name": f"{k}.png", "width": w, "height": h})
        annotations.append(
            {
                "id": k + 1,
                "image_id": k + 1,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [[5, 5, 30, 5, 30, 30, 5, 30]],
                "bbox": [5, 5, 25, 25],
                "area": 625,
            }
        )
    data = Dataset({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "box"}]}, tmp_path)
    best = train(TrainConfig(epochs=1, batch_size=2, preset="small", model_kwargs=TINY), data, out=tmp_path / "run")
    assert read_checkpoint(best)["train_state"]["iteration"] == 2


def test_batches_group_orientations_and_shard_evenly():
    images = [
        {"id": i, "file_name": f"{i}.png", "width": 10 if i % 3 else 5, "height": 5 if i % 3 else 10} for i in range(11)
    ]
    data = Dataset({"images": images, "annotations": [], "categories": []})
    batches = epoch_batches(data, 2, seed=0, epoch=0)
    assert len(batches) == 5 and all(len(b) == 2 for b in batches)
    mixed = [b for b in batches if len({images[i]["width"] for i in b}) > 1]
    assert len(mixed) <= 1
    shards = [epoch_batches(data, 2, seed=0, epoch=0, rank=r, world=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 3
    seen = [i for shard in shards for batch in shard for i in batch]
    assert len(seen) == 12 and set(seen) == set(range(11))  # padded to an even split: one image twice
    assert epoch_batches(data, 2, seed=0, epoch=1) != batches


def test_quickstart_runs_every_step(tmp_path):
    from instaseg.cli.quickstart import quickstart

    summary = quickstart(tmp_path / "qs", minutes=0.05, num_train=8, num_val=2)
    assert 0.0 <= summary["mask_mAP"] <= 1.0
    assert summary["checkpoint"] == tmp_path / "qs" / "model" / "best.pt" and summary["checkpoint"].exists()
    assert json.loads(summary["eval"].read_text())["num_images"] == 2
    assert len(list(summary["overlays"].glob("*.png"))) == 2
    with pytest.raises(InstasegError, match="--overwrite"):
        quickstart(tmp_path / "qs", minutes=0.05, num_train=8, num_val=2)


def test_training_in_processes_writes_one_run_and_reports_a_failure_as_one_line(shapes, tmp_path):
    best = _train(shapes, tmp_path / "run", processes=2)
    assert best.exists() and read_checkpoint(best)["config"]["class_names"] == shapes[0].class_names
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # 8 images in steps of 4 shared by 2 processes: 2 steps, logged once each by rank 0 only.
    assert [r["iteration"] for r in rows if "loss" in r] == [1]
    with pytest.raises(InstasegError, match="training failed: .*missing.pt: checkpoint not found") as raised:
        _train(shapes, tmp_path / "failed", processes=2, weights=tmp_path / "missing.pt")
    assert "Error:" not in str(raised.value)
    with pytest.raises(InstasegError, match="--batch-size 4 must be a multiple of --processes 3"):
        _train(shapes, tmp_path / "odd", processes=3)
    with pytest.raises(InstasegError, match="--processes must be at least 1"):
        _train(shapes, tmp_path / "none", processes=0)
    # An occupied out folder is refused before any process starts.
    with pytest.raises(InstasegError, match="holds an earlier run") as raised:
        _train(shapes, tmp_path / "run", processes=2)
    assert "training failed" not in str(raised.value)


def test_crops_are_taken_at_the_models_scale_with_their_instances(tmp_path):
    # One 200 x 120 image holding two squares; the model's short side is 60 or 240 px.
    pixels = np.zeros((120, 200, 3), np.uint8)
    pixels[10:30, 10:30] = 255
    pixels[80:110, 150:190] = 128
    Image.fromarray(pixels).save(tmp_path / "a.png")
    boxes = [[10, 10, 20, 20], [150, 80, 40, 30]]
    anns = [
        {
            "id": i + 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": b,
            "area": b[2] * b[3],
            "iscrowd": 0,
            "segmentation": [[b[0], b[1], b[0] + b[2], b[1], b[0] + b[2], b[1] + b[3], b[0], b[1] + b[3]]],
        }
        for i, b in enumerate(boxes)
    ]
    (tmp_path / "a.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 120}],
                "annotations": anns,
                "categories": [{"id": 1, "name": "square"}],
            }
        )
    )
    dataset = Dataset.load(tmp_path / "a.json")
    images = TrainingImages(dataset, augment=False, min_sizes=(60, 240), max_size=1000, crop_size=64)
    scales_seen = set()
    for images.epoch in range(12):
        crop, target = images[0]
        assert crop.shape[0] == 3 and max(crop.shape[1:]) <= 64
        scale = 0.5 if crop.shape[1] == 60 else 2.0  # a 64 x 60 window of 100 x 60, or 64 x 64 of 400 x 240
        scales_seen.add(scale)
        assert crop.shape[1:] == ((60, 64) if scale == 0.5 else (64, 64))
        for box, mask in zip(target["boxes"].tolist(), target["masks"]):
            ys, xs = np.nonzero(mask.numpy())
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            # every kept instance is one of the two squares, which the crop's pixels show where its mask is
            assert (crop[0][mask.bool()] > 0.2).float().mean() > 0.95
        assert (crop[0] > 0.4).sum() <= sum(m.sum() for m in target["masks"]) + 4 * 64
    assert scales_seen == {0.5, 2.0}
    # Training with crops runs, and inference still resizes (only training skips the model's resize).
    best = train(
        TrainConfig(epochs=1, batch_size=1, preset="small", model_kwargs=TINY, crop_size=48),
        dataset,
        out=tmp_path / "run",
    )
    assert read_checkpoint(best)["train_config"]["crop_size"] == 48
    assert load(best, device="cpu").predict(tmp_path / "a.png", score_threshold=0.0).masks.shape[1:] == (120, 200)


def test_all_flips_turn_the_image_with_its_masks_and_boxes(tmp_path):
    # A 120 x 200 image with one bright bar off-centre: each of the eight flips and quarter turns
    # puts it somewhere else, and the mask and box must follow the pixels there.
    pixels = np.zeros((120, 200, 3), np.uint8)
    pixels[10:30, 20:80] = 255
    Image.fromarray(pixels).save(tmp_path / "a.png")
    (tmp_path / "a.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "width": 200, "height": 120}],
                "annotations": [
                    {
                        "id": 1,
                        "image_id": 1,
                        "category_id": 1,
                        "bbox": [20, 10, 60, 20],
                        "area": 1200,
                        "iscrowd": 0,
                        "segmentation": [[20, 10, 80, 10, 80, 30, 20, 30]],
                    }
                ],
                "categories": [{"id": 1, "name": "bar"}],
            }
        )
    )
    dataset = Dataset.load(tmp_path / "a.json")
    seen = {}
    for flips in ("horizontal", "all"):
        images = TrainingImages(dataset, augment=True, min_sizes=(120,), max_size=1000, flips=flips)
        seen[flips] = set()
        for images.epoch in range(64):
            image, target = images[0]
            (box,), (mask,) = target["boxes"].tolist(), target["masks"].bool()
            ys, xs = np.nonzero(mask.numpy())
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert image[0][mask].min() > image[0][~mask].max()  # colour jitter keeps the bar the brightest
            seen[flips].add((tuple(image.shape[1:]), tuple(box)))
    assert seen["horizontal"] == {((120, 200), (20, 10, 80, 30)), ((120, 200), (120, 10, 180, 30))}
    assert len(seen["all"]) == 8 and {size for size, _ in seen["all"]} == {(120, 200), (200, 120)}
    with pytest.raises(InstasegError, match="--flips"):
        TrainConfig(epochs=1, flips="upside-down")


def test_photometric_all_also_turns_images_grey_and_inverts_them(tmp_path):
    # A red bar on a dark green background: "jitter" keeps the bar red and brighter than the
    # background; "all" also shows it grey (all channels equal) and dark on a light background,
    # each about half the time, and never moves the mask or the box.
    pixels = np.zeros((60, 80, 3), np.uint8)
    pixels[..., 1] = 40
    pixels[10:30, 20:60, 0] = 230
    Image.fromarray(pixels).save(tmp_path / "a.png")
    (tmp_path / "a.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "width": 80, "height": 60}],
                "annotations": [
                    {
                        "id": 1,
                        "image_id": 1,
                        "category_id": 1,
                        "bbox": [20, 10, 40, 20],
                        "area": 800,
                        "iscrowd": 0,
                        "segmentation": [[20, 10, 60, 10, 60, 30, 20, 30]],
                    }
                ],
                "categories": [{"id": 1, "name": "bar"}],
            }
        )
    )
    dataset = Dataset.load(tmp_path / "a.json")
    for photometric in ("jitter", "all"):
        images = TrainingImages(dataset, augment=True, min_sizes=(60,), max_size=1000, photometric=photometric)
        grey = inverted = 0
        for images.epoch in range(200):
            image, target = images[0]
            mask = target["masks"][0].bool()
            box = target["boxes"][0].tolist()
            if box[0] > 20:  # mirrored
                mask, image, box = mask.flip(-1), image.flip(-1), [80 - box[2], box[1], 80 - box[0], box[3]]
            assert box == [20, 10, 60, 30] and mask.sum() == 800
            bar, background = image[:, mask].mean(1), image[:, ~mask].mean(1)
            grey += bool(torch.allclose(image[0], image[1]) and torch.allclose(image[1], image[2]))
            inverted += bool(bar.mean() < background.mean())
        if photometric == "jitter":
            assert grey == inverted == 0
        else:
            assert 70 < grey < 130 and 70 < inverted < 130
    with pytest.raises(InstasegError, match="--photometric"):
        TrainConfig(epochs=1, photometric="sepia")


def test_short_runs_warm_up_for_a_tenth_of_the_run():
    seconds_per_step = 6.0

    def schedule(epochs: int | None, batches_per_epoch: int, minutes: float | None = None) -> list[float]:
        run = Schedule(lr=1e-3, epochs=epochs, minutes=minutes, batches_per_epoch=batches_per_epoch)
        steps = epochs * batches_per_epoch if epochs else round(minutes * 60 / seconds_per_step)
        return [run.learning_rate(iteration, seconds_per_step * iteration) for iteration in range(steps)]

    short = schedule(epochs=24, batches_per_epoch=6)  # 144 iterations: warmup 15, not WARMUP_ITERS
    assert int(np.argmax(short)) == 15 and max(short) > 0.97e-3
    timed = schedule(epochs=None, batches_per_epoch=6, minutes=5)  # 50 steps of 6 s: warmup 5
    assert int(np.argmax(timed)) == 5 and max(timed) > 0.97e-3
    long = schedule(epochs=50, batches_per_epoch=40)  # 2000 iterations: the full warmup
    assert int(np.argmax(long)) == WARMUP_ITERS - 1
    assert long[WARMUP_ITERS // 2 - 1] < 0.51e-3
