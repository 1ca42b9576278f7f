"""CLI verbs ``train`` and ``quickstart``."""

from __future__ import annotations

from pathlib import Path

import typer

from instaseg.cli.options import Overwrite


def train(
    data: Path = typer.Argument(
        ..., help="Training set: a COCO JSON (images beside it) or any format 'instaseg convert' reads."
    ),
    val: Path | None = typer.Option(
        None, "--val", help="Validation set (any readable format); best.pt is chosen by its mask mAP."
    ),
    model: str = typer.Option("maskrcnn_resnet18_fpn", "--model", help="Architecture (see `instaseg models`)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Number of passes over the training set."),
    minutes: float | None = typer.Option(
        None,
        "--minutes",
        help="Wall-clock budget in minutes, counted once the data are read: building the model and every validation included.",
    ),
    weights: Path | None = typer.Option(
        None, "--weights", help="Start from an instaseg checkpoint or a torchvision state dict."
    ),
    out: Path = typer.Option(Path("runs/train"), "--out", help="Folder for checkpoints, metrics and curves."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --out from its last.pt, with the model and augmentation it recorded (refused on other training images than the run's).",
    ),
    resume_anyway: bool = typer.Option(
        False, "--resume-anyway", help="Resume (as --resume) even though the training images differ from the run's."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    batch_size: int = typer.Option(
        4, "--batch-size", help="Images per step (per process under torchrun; shared out with --processes)."
    ),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW)."),
    preset: str | None = typer.Option(
        None, "--preset", help="Model preset: cpu, gpu or small (default: gpu with CUDA, else cpu)."
    ),
    crop_size: int | None = typer.Option(
        None,
        "--crop-size",
        help="Train on random square crops of this many pixels at the model's input scale (large images, small objects).",
    ),
    flips: str = typer.Option(
        "horizontal",
        "--flips",
        help="Random flips: horizontal, or all (also upside down and quarter turns: images with no up, such as microscopy or aerial views).",
    ),
    photometric: str = typer.Option(
        "jitter",
        "--photometric",
        help="Random colour changes: jitter (brightness, contrast, saturation), or all (also grey and inverted: objects lighter or darker than their background from image to image, such as stained and fluorescent cells).",
    ),
    processes: int = typer.Option(
        1,
        "--processes",
        help="On a CPU, train as this many data-parallel processes (2 keeps both cores of a 2-core machine busy).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run in --out."),
) -> None:
    """Train a model from scratch (or from --weights) and write best.pt, last.pt, metrics.jsonl and curves.png."""
    from instaseg.core import io
    from instaseg.data.convert import open_dataset
    from instaseg.engine.config import TrainConfig
    from instaseg.engine.train import train as run_training

    io.guard_outputs([out], [data, val, weights], [data, val])
    config = TrainConfig(
        model=model,
        preset=preset,
        epochs=epochs,
        minutes=minutes,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        weights=weights,
        crop_size=crop_size,
        flips=flips,
        photometric=photometric,
        processes=processes,
    )
    best = run_training(
        config,
        open_dataset(data, outputs=[out]),
        open_dataset(val, outputs=[out]) if val is not None else None,
        out=out,
        overwrite=overwrite,
        resume=resume,
        resume_anyway=resume_anyway,
    )
    typer.echo(f"best checkpoint: {best}")


def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Folder for data, model, evaluation and pictures."),
    minutes: float = typer.Option(10.0, "--minutes", help="Training budget in minutes."),
    overwrite: Overwrite = False,
) -> None:
    """Synthetic data -> train on the CPU -> evaluate -> predict with overlays, in about --minutes."""
    from instaseg.cli.quickstart import quickstart as run_quickstart
    from instaseg.core import io

    io.guard_outputs([out])
    summary = run_quickstart(out, minutes=minutes, overwrite=overwrite)
    typer.echo(f"mask mAP@[.5:.95] on the synthetic val split: {summary['mask_mAP']:.3f}")
    typer.echo(f"model: {summary['checkpoint']}")
    typer.echo(f"pictures: {summary['overlays']}")
