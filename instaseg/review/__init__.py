"""Label review: rank suspected label errors by consensus with out-of-sample predictions, and fix them.

The Python API mirrors the CLI::

    from instaseg.review import run_review, apply_review_file, inject_noise
    doc = run_review(dataset, folds=2, minutes_per_fold=5, out="review")      # instaseg review DATA --folds 2
    doc = run_review(dataset, pred="runs/predict", out="review")               # instaseg review DATA --pred DIR
    fixed, changes = apply_review_file("review/review.json", accept_above=0.8) # instaseg review apply ...
    noisy, injected = inject_noise(dataset, missing=0.1, seed=0)               # instaseg noise DATA ...
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from instaseg.core import events, io
from instaseg.core.errors import InstasegError
from instaseg.data.dataset import Dataset
from instaseg.review.apply import IdRanges, apply_review
from instaseg.review.noise import inject_noise
from instaseg.review.report import write_outputs
from instaseg.review.score import (
    ReviewSettings,
    Suggestion,
    SuggestionType,
    boundary_iou,
    review,
)
from instaseg.review.sources import (
    load_prediction_file,
    out_of_fold_predictions,
    predict_with_model,
)

REVIEW_FORMAT = "instaseg-review"

__all__ = [
    "ReviewSettings",
    "Suggestion",
    "SuggestionType",
    "apply_review",
    "apply_review_file",
    "boundary_iou",
    "inject_noise",
    "review",
    "run_review",
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_review(
    dataset: Dataset,
    *,
    out: str | Path,
    model: str | Path | None = None,
    pred: str | Path | None = None,
    folds: int | None = None,
    minutes_per_fold: float | None = 5.0,
    epochs_per_fold: int | None = None,
    architecture: str | None = None,
    preset: str | None = None,
    crop_size: int | None = None,
    flips: str = "horizontal",
    photometric: str = "jitter",
    processes: int = 1,
    max_pictures: int = 200,
    seed: int = 0,
    settings: ReviewSettings | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Review ``dataset`` with one source of predictions and write the report folder ``out``.

    Args:
        dataset: the labels to review.
        out: folder to create with review.json, review.csv, report.html and pictures/.
        model: a checkpoint, predicting every image (it must not have been trained on them).
        pred: an ``instaseg predict`` folder or a COCO results JSON for these images.
        folds: train this many out-of-fold models instead (checkpoints kept in ``out/folds``).
        minutes_per_fold, epochs_per_fold: training budget of each fold model.
        architecture: model name for the fold models (the trainer's default when None).
        preset: model preset for the fold models ("cpu", "gpu", "small"; the trainer's default when None).
        crop_size, flips, photometric, processes: how the fold models train (see ``instaseg.engine.train.train``).
        max_pictures: draw pictures for this many suggestions, worst first.
        seed: fixes the fold split and training.
        settings: thresholds of the rules (the defaults suit most datasets).
        overwrite: replace ``out`` if it exists.

    Returns:
        The review document (what ``review.json`` holds). Its warnings are also reported with
        ``events.warn``, once the report folder is written.
    """
    if sum(source is not None for source in (model, pred, folds)) != 1:
        raise InstasegError("give exactly one of --model, --pred or --folds")
    settings = settings or ReviewSettings()
    out = io.check_output(out, overwrite)
    with io.atomic_path(out, overwrite) as folder:
        folder.mkdir()
        if folds is not None:
            predictions, label_probs, fold_info = out_of_fold_predictions(
                dataset,
                folds,
                out=folder / "folds",
                model=architecture,
                minutes_per_fold=minutes_per_fold,
                epochs_per_fold=epochs_per_fold,
                seed=seed,
                train_options={
                    "preset": preset,
                    "crop_size": crop_size,
                    "flips": flips,
                    "photometric": photometric,
                    "processes": processes,
                },
            )
            warnings: list[str] = []
            source: dict[str, Any] = {
                "kind": "folds",
                "folds": folds,
                "minutes_per_fold": minutes_per_fold,
                "epochs_per_fold": epochs_per_fold,
                **fold_info,
            }
            source["checkpoints"] = [str(out / Path(c).relative_to(folder)) for c in source["checkpoints"]]
        elif model is not None:
            predictions, label_probs, warnings = predict_with_model(dataset, model)
            source = {"kind": "model", "path": str(Path(model).resolve())}
        else:
            assert pred is not None  # exactly one source is given, checked above
            predictions, label_probs, warnings = load_prediction_file(dataset, pred)
            source = {"kind": "pred", "path": str(Path(pred).resolve())}

        suggestions, info = review(dataset, predictions, settings, label_probs, dataset.read_image)
        document = review_document(
            dataset,
            suggestions,
            source=source,
            warnings=warnings + info["warnings"],
            settings=settings,
            extra={"bad_mask_reference": info["bad_mask_reference"]},
        )
        if document["dataset"] is None:  # not a COCO file: keep the dataset reviewed beside the review
            dataset.save(folder / "dataset.json", record_image_root=True, location=out / "dataset.json")
            document["dataset"] = str((out / "dataset.json").resolve())
            document["dataset_sha256"] = _sha256(folder / "dataset.json")
        write_outputs(folder, document, dataset, max_pictures=max_pictures)
    for warning in document["warnings"]:
        events.warn(warning)
    return document


def review_document(
    dataset: Dataset,
    suggestions: list[Suggestion],
    *,
    source: dict,
    warnings: list[str],
    settings: ReviewSettings,
    extra: dict | None = None,
) -> dict[str, Any]:
    """The JSON document of a review; ``dataset`` is None unless the dataset is a COCO file on disk."""
    path = dataset.source
    coco_file = path if path is not None and path.suffix.lower() == ".json" and path.is_file() else None
    counts = {t.value: sum(s.type is t for s in suggestions) for t in SuggestionType}
    return {
        "format": REVIEW_FORMAT,
        "version": 1,
        "dataset": str(coco_file.resolve()) if coco_file is not None else None,
        "dataset_sha256": _sha256(coco_file) if coco_file is not None else None,
        "image_root": str(dataset.image_root.resolve()),
        "source": source,
        "warnings": warnings,
        "settings": asdict(settings),
        **(extra or {}),
        "counts": counts,
        "suggestions": [s.to_dict() for s in suggestions],
    }


def read_review(path: str | Path) -> dict[str, Any]:
    """Load a ``review.json`` (or the review folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "review.json"
    document = io.read_json(path)
    if not isinstance(document, dict) or document.get("format") != REVIEW_FORMAT:
        raise InstasegError(
            "not an instaseg review (expected the review.json that 'instaseg review' writes)", file=path
        )
    return document


def apply_review_file(
    review_path: str | Path,
    *,
    accept: IdRanges | Iterable[int] = (),
    accept_above: float | None = None,
    reject: IdRanges | Iterable[int] = (),
    data: str | Path | None = None,
) -> tuple[Dataset, list[dict]]:
    """Apply accepted suggestions of a saved review to the dataset it was made on (or ``data``).

    ``accept`` and ``reject`` are ids (``apply.parse_ids`` reads ranges like ``"3,7,10-12"``); see ``apply_review``.
    """
    document = read_review(review_path)
    path = Path(data) if data is not None else Path(document["dataset"])
    dataset = Dataset.load(path, None if data is not None else document.get("image_root"))
    if data is None and document.get("dataset_sha256") and _sha256(path) != document["dataset_sha256"]:
        raise InstasegError(
            "has changed since the review was made; review it again (or pass --data to apply anyway)", file=path
        )
    return apply_review(document, dataset, accept=accept, accept_above=accept_above, reject=reject)
