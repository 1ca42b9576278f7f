"""``instaseg quickstart``: the whole loop on synthetic data, on a CPU, in about ten minutes.

Makes the synthetic shapes dataset, trains the default model with the "small" preset for the
time budget (on a CPU as two single-thread data-parallel processes, which keep both cores of a
small machine busy), evaluates it on the val split with the COCO metric and draws its predictions on a
few val images. Everything lands in one folder::

    OUT/data/          train.json, val.json and images (``instaseg synth``)
    OUT/model/         best.pt, last.pt, metrics.jsonl, curves.png (``instaseg train``)
    OUT/eval.json      COCO metrics of best.pt on the val split (``instaseg eval``)
    OUT/predictions/   a predictions folder with overlays/ (``instaseg predict``)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from instaseg.core import events, io
from instaseg.data import Dataset
from instaseg.data.synth import make_synthetic
from instaseg.engine.config import TrainConfig
from instaseg.engine.predict import predict_images
from instaseg.engine.predictor import load
from instaseg.engine.train import train, usable_cores
from instaseg.evaluation import evaluate

# More distinct images beat more epochs (see BENCHMARKS.md).
NUM_TRAIN_IMAGES = 1000
NUM_VAL_IMAGES = 50
NUM_PICTURES = 8
# Each validation of a young model (many low-score detections) is slow on a CPU and takes steps
# from the budget: one halfway, one at the end.
VALIDATIONS = 2
# On a CPU one process keeps only part of two cores busy at this image size; two single-thread
# data-parallel processes, each taking half of every batch, make more steps (BENCHMARKS.md).
CPU_PROCESSES = 2


def quickstart(
    out: str | Path = "runs/quickstart",
    *,
    minutes: float = 10.0,
    overwrite: bool = False,
    seed: int = 0,
    num_train: int = NUM_TRAIN_IMAGES,
    num_val: int = NUM_VAL_IMAGES,
) -> dict[str, Any]:
    """Run synth -> train -> evaluate -> predict into ``out``; returns a summary.

    Args:
        out: the folder to create.
        minutes: training budget (wall clock, validation included).
        overwrite: replace ``out`` if it exists.
        seed: seeds the data and the training.
        num_train, num_val: synthetic images per split.

    Returns:
        ``mask_mAP`` and ``box_mAP`` (COCO mAP@[.5:.95] on the val split), ``checkpoint`` (best.pt),
        ``eval`` (the metrics file) and ``overlays`` (the folder of pictures).
    """
    processes = 1 if torch.cuda.is_available() or usable_cores() < CPU_PROCESSES else CPU_PROCESSES
    # Before the data are made: a refused budget must leave nothing behind.
    config = TrainConfig.recipe(
        "quickstart", minutes=minutes, val_every=minutes / VALIDATIONS, seed=seed, processes=processes
    )
    out = io.check_output(out, overwrite)
    train_json, val_json = make_synthetic(
        out / "data", num_train=num_train, num_val=num_val, seed=seed, overwrite=overwrite
    )
    training, val = Dataset.load(train_json), Dataset.load(val_json)
    best = train(config, training, val, out=out / "model", overwrite=overwrite)
    predictor = load(best)
    result = evaluate(val, predictor.iter_dataset(val), ("segm", "bbox"))
    io.write_json(out / "eval.json", result.to_dict(), overwrite=overwrite, indent=True)
    events.info(result.summary())
    pictures = [val.image_path(image) for image in val.images[:NUM_PICTURES]]
    predict_images(predictor, pictures, out=out / "predictions", overwrite=overwrite)
    return {
        "mask_mAP": result.stat("AP", "segm"),
        "box_mAP": result.stat("AP", "bbox"),
        "checkpoint": best,
        "eval": out / "eval.json",
        "overlays": out / "predictions" / "overlays",
    }
