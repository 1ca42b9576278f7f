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

from instaseg.core import io
from instaseg.data import Dataset
from instaseg.data.synth import make_synthetic
from instaseg.evaluation import evaluate
from instaseg.models import DEFAULT_MODEL
from instaseg.engine.predict import predict_images
from instaseg.engine.predictor import load
from instaseg.engine.train import check_options, train, usable_cores

# Tuned on a 2-core CPU (see BENCHMARKS.md): more distinct images beat more epochs.
NUM_TRAIN_IMAGES = 1000
NUM_VAL_IMAGES = 50
NUM_PICTURES = 8
BATCH_SIZE = 4
LEARNING_RATE = 1e-3
# Each validation of a young model (many low-score detections) costs tens of seconds on a CPU,
# steps the 10-minute budget needs: one halfway, one at the end.
VALIDATIONS = 2
# On a CPU one process keeps only ~1.35 of 2 cores busy at 128 px; two single-thread data-parallel
# processes, each taking half of every batch, make 1.35x the steps (BENCHMARKS.md, quickstart run 13).
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
    check_options(minutes=minutes)  # before the data are made: a refused budget must leave nothing behind
    out = io.check_output(out, overwrite)
    train_json, val_json = make_synthetic(
        out / "data", num_train=num_train, num_val=num_val, seed=seed, overwrite=overwrite
    )
    training, val = Dataset.load(train_json), Dataset.load(val_json)
    processes = 1 if torch.cuda.is_available() or usable_cores() < CPU_PROCESSES else CPU_PROCESSES
    best = train(training, val, model=DEFAULT_MODEL, preset="small", minutes=minutes, out=out / "model", seed=seed,
                 overwrite=overwrite, lr=LEARNING_RATE, val_every=minutes / VALIDATIONS, batch_size=BATCH_SIZE,
                 processes=processes)
    predictor = load(best)
    result = evaluate(val, predictor.iter_dataset(val), ("segm", "bbox"))
    io.write_json(out / "eval.json", result.to_dict(), overwrite=overwrite, indent=True)
    print(result.summary())
    pictures = [val.image_path(image) for image in val.images[:NUM_PICTURES]]
    predict_images(predictor, pictures, out=out / "predictions", overwrite=overwrite)
    return {
        "mask_mAP": result.stat("AP", "segm"),
        "box_mAP": result.stat("AP", "bbox"),
        "checkpoint": best,
        "eval": out / "eval.json",
        "overlays": out / "predictions" / "overlays",
    }

