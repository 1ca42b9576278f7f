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

import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from instaseg import io
from instaseg.data import Dataset
from instaseg.data.synth import make_synthetic
from instaseg.errors import InstasegError
from instaseg.evaluate import evaluate
from instaseg.models import DEFAULT_MODEL
from instaseg.predict import predict_images
from instaseg.predictor import load
from instaseg.train import train

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
    out = io.check_output(out, overwrite)
    train_json, val_json = make_synthetic(
        out / "data", num_train=num_train, num_val=num_val, seed=seed, overwrite=overwrite
    )
    training, val = Dataset.load(train_json), Dataset.load(val_json)
    options = {"model": DEFAULT_MODEL, "preset": "small", "minutes": minutes, "out": out / "model", "seed": seed,
               "overwrite": overwrite, "lr": LEARNING_RATE, "val_every": minutes / VALIDATIONS}
    # The cores this process may use (a container's CPU set), not all the machine has.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.cuda.is_available() or cores < CPU_PROCESSES:
        best = train(training, val, batch_size=BATCH_SIZE, **options)
    else:
        best = _train_on_cpu_cores(training, val, options)
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


def _train_on_cpu_cores(train_set: Dataset, val: Dataset, options: dict[str, Any]) -> Path:
    """``train`` as ``CPU_PROCESSES`` single-thread processes (DDP over gloo) sharing each batch."""
    with socket.socket() as probe:  # a free port for the processes to meet on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        mp.spawn(_train_process, (CPU_PROCESSES, port, train_set, val, options), nprocs=CPU_PROCESSES)
    except mp.ProcessRaisedException as exc:
        # The child's traceback ends with "ExceptionType: message"; the message is what to show.
        raise InstasegError(f"training failed: {str(exc).strip().splitlines()[-1].split(': ', 1)[-1]}") from None
    return Path(options["out"]) / "best.pt"


def _train_process(rank: int, world: int, port: int, train_set: Dataset, val: Dataset, options: dict[str, Any]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    train(train_set, val, batch_size=BATCH_SIZE // world, progress=rank == 0, **options)
