"""Where the predictions judging the labels come from: a model, a predictions file, or K out-of-fold models.

A review is only as honest as its predictions are out-of-sample: a model that was trained on an
image has learnt that image's labels, errors included, and will agree with them. ``--folds``
guarantees it; for ``--model`` and ``--pred`` the review can only check what the checkpoint records
about its training data, and warns otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from instaseg.core import events
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.core.structures import Instances
from instaseg.data.dataset import Dataset
from instaseg.data.stats import object_size

if TYPE_CHECKING:
    from instaseg.engine.predictor import Predictor

PREDICT_SCORE_THRESHOLD = 0.05
# Detections allowed per labelled instance, above the model's own cap: a crowded image (hundreds of
# cells) needs room for every object the labels hold, the ones they miss and the model's doubts.
ROOM_PER_LABEL = 2
# annotation id -> (1 + K) class probabilities of the label's box, background first; None without a model.
LabelProbs = dict[int, np.ndarray] | None
UNSEEN_WARNING = (
    "the predictions must come from a model that was not trained on these images; "
    "otherwise it has learnt their label errors and the review misses them (use --folds to be sure)"
)


def predictions_from_results(dataset: Dataset, results: list[dict]) -> dict[int, Instances]:
    """Group a COCO results list (in ``dataset``'s image and category ids) into Instances per image.

    A record's optional ``class_probs`` (one probability per dataset class, in category order)
    is kept as ``data["class_probs"]``.
    """
    by_image: dict[int, list[dict]] = {}
    for position, record in enumerate(results):
        if not isinstance(record, dict) or not {"image_id", "category_id", "segmentation"} <= record.keys():
            raise InstasegError(
                "prediction needs image_id, category_id and segmentation", record=f"results[{position}]"
            )
        if record["image_id"] not in dataset.image_by_id:
            raise InstasegError(f"unknown image id {record['image_id']}", record=f"results[{position}]")
        if record["category_id"] not in dataset.category_index:
            raise InstasegError(f"unknown category id {record['category_id']}", record=f"results[{position}]")
        by_image.setdefault(record["image_id"], []).append(record)
    predictions = {}
    for image_id, records in by_image.items():
        image = dataset.image_by_id[image_id]
        height, width = image["height"], image["width"]
        rles = [mask_ops.to_rle(r["segmentation"], height, width) for r in records]
        data = {}
        if all("class_probs" in r for r in records):
            data["class_probs"] = np.asarray([r["class_probs"] for r in records], np.float32).reshape(len(records), -1)
        predictions[image_id] = Instances.from_masks(
            mask_ops.decode_many(rles, height, width),
            [dataset.category_index[r["category_id"]] for r in records],
            [float(r.get("score", 1.0)) for r in records],
            dataset.class_names,
            **data,
        )
    return predictions


def load_prediction_file(dataset: Dataset, path: str | Path) -> tuple[dict[int, Instances], None, list[str]]:
    """Predictions from an ``instaseg predict`` folder or a COCO results JSON, and the review's warnings.

    A file cannot say what the model thinks of the labels' boxes, so the label probabilities are None.
    Images are matched as ``instaseg eval`` matches them (``evaluate.match_images``); a predictions
    folder that covers only some of the images draws a warning, since the others are judged as
    images on which the model found nothing.
    """
    from instaseg.evaluation import load_predictions

    warnings = [UNSEEN_WARNING]
    results = load_predictions(dataset, path, warnings)
    return predictions_from_results(dataset, results), None, warnings


def predict_with_model(dataset: Dataset, model_path: str | Path) -> tuple[dict[int, Instances], LabelProbs, list[str]]:
    """Judge every image with a checkpoint (see ``judge``), and warn unless it provably never trained on them."""
    import instaseg

    predictor = instaseg.load(model_path)
    warning = seen_warning(dataset, training_image_digests(predictor.config))
    predictions, label_probs = judge(predictor, dataset)
    return predictions, label_probs, [warning] if warning else []


def judge(predictor: Predictor, dataset: Dataset) -> tuple[dict[int, Instances], LabelProbs]:
    """What a model sees in every image: its predictions, and its class probabilities for each label's box.

    The second are the box head's answer to "what is in this labelled box?" (``classify_boxes``,
    averaged over the model's own input size and its largest training size, each also mirrored),
    with column 0 for background and then the dataset's classes in order. They are left out (None)
    when the model does not know every class of the dataset. The same question asked about each
    prediction's own box gives ``data["box_score"]``: the probability of the predicted class, a
    second opinion on the detection's score (four views instead of one). Each image may hold up to
    ``ROOM_PER_LABEL`` detections per label when that is more than the model's own cap, and is run
    (both questions) at a scale where its labelled objects have a size the model learnt (when the
    checkpoint records those sizes), so that objects smaller or larger than usual are still found.
    """
    position = {name: k + 1 for k, name in enumerate(predictor.class_names)}
    columns = [0] + [position.get(name, -1) for name in dataset.class_names]
    judged = -1 not in columns
    predictions: dict[int, Instances] = {}
    label_probs: dict[int, np.ndarray] = {}
    for image in events.track(dataset.images, "predict", unit="img"):
        pixels = dataset.read_image(image)
        labels = dataset.ground_truth(image)
        size = object_size(dataset, image)
        room = max(predictor.max_detections, ROOM_PER_LABEL * len(labels))
        found = predictor.predict(pixels, PREDICT_SCORE_THRESHOLD, max_detections=room, object_size=size)
        # One call judges both sets of boxes, so the backbone runs once per view for all of them.
        boxes = np.concatenate([labels.boxes, found.boxes])
        probs = (
            predictor.classify_boxes(pixels, boxes, augment=True, object_size=size)
            if len(boxes)
            else np.zeros((0, 1 + len(predictor.class_names)), np.float32)
        )
        found.data["box_score"] = probs[len(labels) + np.arange(len(found)), found.class_ids + 1]
        predictions[image["id"]] = found
        if judged and len(labels):
            label_probs.update(zip(labels.data["annotation_id"].tolist(), probs[: len(labels), columns], strict=True))
    return predictions, label_probs if judged else None


def training_image_digests(config: dict[str, Any]) -> set[str] | None:
    """SHA-1s of a model's training images, when its checkpoint's config (``Predictor.config``) records them."""
    digests = config.get("train_image_sha1")
    return set(digests) if digests else None


def seen_warning(dataset: Dataset, trained_on: set[str] | None) -> str | None:
    """The warning a review should carry about predictions from a model trained on images with SHA-1s ``trained_on``."""
    if trained_on is None:
        return UNSEEN_WARNING
    seen = sum(dataset.image_sha1(image) in trained_on for image in dataset.images)
    if seen:
        return (
            f"the model was trained on {seen} of these {len(dataset.images)} images, so it has learnt their "
            "labels, errors included; use --folds for an honest review"
        )
    return None


def assign_folds(dataset: Dataset, k: int, seed: int = 0) -> dict[int, int]:
    """Image id -> fold in [0, k): a seeded shuffle dealt round-robin, so folds differ in size by one image at most."""
    if k < 2:
        raise InstasegError(f"--folds needs at least 2 folds, got {k}")
    if len(dataset.images) < k:
        raise InstasegError(f"cannot split {len(dataset.images)} images into {k} folds", file=dataset.source)
    order = np.random.default_rng(seed).permutation([image["id"] for image in dataset.images])
    return {int(image_id): position % k for position, image_id in enumerate(order)}


def out_of_fold_predictions(
    dataset: Dataset,
    k: int,
    *,
    out: Path,
    model: str | None = None,
    minutes_per_fold: float | None = 5.0,
    epochs_per_fold: int | None = None,
    seed: int = 0,
    train_options: dict[str, Any] | None = None,
) -> tuple[dict[int, Instances], LabelProbs, dict[str, Any]]:
    """Train ``k`` models, each on all folds but one, and judge the fold it never saw.

    Args:
        dataset: the labels under review (the training labels too, errors included).
        k: number of folds (at least 2).
        out: folder for the fold checkpoints (``fold-1`` ... ``fold-K``).
        model: architecture name (the trainer's default when None).
        minutes_per_fold, epochs_per_fold: training budget of each fold.
        seed: fixes the fold split and the training.
        train_options: further ``TrainConfig`` fields (preset, crop_size, flips, ...).

    Returns:
        ``(predictions, label_probs, info)``: image id -> Instances for every image, annotation id
        -> the held-out model's class probabilities for that label's box (see ``judge``), and
        ``info`` with the fold of each image and the checkpoint of each fold.
    """
    from instaseg.engine.config import TrainConfig
    from instaseg.engine.train import train

    options: dict[str, Any] = dict(train_options or {})
    if model is not None:
        options["model"] = model
    # One config for every fold, checked before the first fold trains.
    config = TrainConfig(epochs=epochs_per_fold, minutes=minutes_per_fold, seed=seed, **options)
    folds = assign_folds(dataset, k, seed)
    checkpoints = []
    for fold in range(k):
        training = dataset.subset(image_id for image_id, f in folds.items() if f != fold)
        if not training.annotations:
            raise InstasegError(f"fold {fold + 1} has no training labels; use fewer folds", file=dataset.source)
        checkpoints.append(train(config, training, None, out=Path(out) / f"fold-{fold + 1}"))
    predictions, label_probs = judge_held_out(dataset, folds, checkpoints)
    return (
        predictions,
        label_probs,
        {"folds": {str(i): f + 1 for i, f in folds.items()}, "checkpoints": [str(c) for c in checkpoints]},
    )


def judge_held_out(
    dataset: Dataset, folds: dict[int, int], checkpoints: Sequence[str | Path]
) -> tuple[dict[int, Instances], dict[int, np.ndarray]]:
    """Judge (see ``judge``) each fold's images with ``checkpoints[fold]``, the model trained without them."""
    import instaseg

    predictions: dict[int, Instances] = {}
    label_probs: dict[int, np.ndarray] = {}
    for fold, checkpoint in enumerate(checkpoints):
        held_out = dataset.subset(image_id for image_id, f in folds.items() if f == fold)
        fold_predictions, fold_probs = judge(instaseg.load(checkpoint), held_out)
        predictions.update(fold_predictions)
        label_probs.update(fold_probs or {})
    return predictions, label_probs
