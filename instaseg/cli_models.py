"""CLI verbs for models: ``models``, ``train``, ``synth`` and ``quickstart`` (registered on ``instaseg.cli.app``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from instaseg.cli import app


@app.command()
def models(
    num_classes: int = typer.Option(80, "--num-classes", help="Class count the parameter counts assume."),
) -> None:
    """List the model architectures with their backbones, parameter counts and measured results."""
    from rich.console import Console
    from rich.table import Table

    from instaseg.errors import InstasegError
    from instaseg.models import DEFAULT_MODEL, MODELS, count_parameters, list_models

    if num_classes < 1:
        raise InstasegError(f"--num-classes must be at least 1, not {num_classes}")
    table = Table(title=f"Mask R-CNN models (parameters for {num_classes} classes; presets: cpu, gpu, small)")
    table.add_column("name", no_wrap=True)
    table.add_column("params cpu", no_wrap=True, justify="right")
    table.add_column("params gpu", no_wrap=True, justify="right")
    table.add_column("about", overflow="fold")
    for name in list_models():
        entry = MODELS[name]
        measured = "; ".join(f"{k}: {v}" for k, v in entry.metrics.items())
        table.add_row(
            name + (" *" if name == DEFAULT_MODEL else ""),
            f"{count_parameters(name, num_classes, 'cpu') / 1e6:.1f} M",
            f"{count_parameters(name, num_classes, 'gpu') / 1e6:.1f} M",
            entry.description + (f" ({measured})" if measured else ""),
        )
    table.caption = "* default. cpu preset: BatchNorm backbone, lighter heads; gpu: GroupNorm, paper sizes."
    Console().print(table)


@app.command()
def train(
    data: Path = typer.Argument(..., help="Training set: a COCO JSON (images beside it) or any format 'instaseg convert' reads."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation set (any readable format); best.pt is chosen by its mask mAP."),
    model: str = typer.Option("maskrcnn_resnet18_fpn", "--model", help="Architecture (see `instaseg models`)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Number of passes over the training set."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Wall-clock budget in minutes, counted once the data are read: building the model and every validation included."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Start from an instaseg checkpoint or a torchvision state dict."),
    out: Path = typer.Option(Path("runs/train"), "--out", help="Folder for checkpoints, metrics and curves."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt, with the model and augmentation it recorded (refused on other training images than the run's)."),
    resume_anyway: bool = typer.Option(False, "--resume-anyway", help="Resume (as --resume) even though the training images differ from the run's."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per step (per process under torchrun; shared out with --processes)."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Model preset: cpu, gpu or small (default: gpu with CUDA, else cpu)."),
    crop_size: Optional[int] = typer.Option(None, "--crop-size", help="Train on random square crops of this many pixels at the model's input scale (large images, small objects)."),
    flips: str = typer.Option("horizontal", "--flips", help="Random flips: horizontal, or all (also upside down and quarter turns: images with no up, such as microscopy or aerial views)."),
    photometric: str = typer.Option("jitter", "--photometric", help="Random colour changes: jitter (brightness, contrast, saturation), or all (also grey and inverted: objects lighter or darker than their background from image to image, such as stained and fluorescent cells)."),
    processes: int = typer.Option(1, "--processes", help="On a CPU, train as this many data-parallel processes (2 keeps both cores of a 2-core machine busy)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run in --out."),
) -> None:
    """Train a model from scratch (or from --weights) and write best.pt, last.pt, metrics.jsonl and curves.png."""
    from instaseg import io
    from instaseg.data.convert import load_dataset
    from instaseg.train import train as run_training

    io.guard_outputs([out], [data, val, weights], [data, val])
    best = run_training(
        load_dataset(data, outputs=[out]),
        load_dataset(val, outputs=[out]) if val is not None else None,
        model=model, epochs=epochs, minutes=minutes, weights=weights, out=out, seed=seed,
        overwrite=overwrite, resume=resume, batch_size=batch_size, lr=lr, preset=preset, crop_size=crop_size,
        flips=flips, photometric=photometric, processes=processes, resume_anyway=resume_anyway,
    )
    typer.echo(f"best checkpoint: {best}")


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to create (train.json, val.json and the images)."),
    num_train: int = typer.Option(200, "--num-train", min=0, help="Training images."),
    num_val: int = typer.Option(50, "--num-val", min=0, help="Validation images."),
    size: int = typer.Option(128, "--size", min=32, help="Image width and height in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same data."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Make a synthetic dataset of coloured shapes (circle, square, triangle, star) with COCO masks."""
    from instaseg import io
    from instaseg.data.synth import make_synthetic

    io.guard_outputs([out])
    train_json, val_json = make_synthetic(
        out, num_train=num_train, num_val=num_val, size=size, seed=seed, overwrite=overwrite
    )
    typer.echo(f"wrote {train_json} and {val_json}")


@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Folder for data, model, evaluation and pictures."),
    minutes: float = typer.Option(10.0, "--minutes", help="Training budget in minutes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Synthetic data -> train on the CPU -> evaluate -> predict with overlays, in about --minutes."""
    from instaseg import io
    from instaseg.quickstart import quickstart as run_quickstart

    io.guard_outputs([out])
    summary = run_quickstart(out, minutes=minutes, overwrite=overwrite)
    typer.echo(f"mask mAP@[.5:.95] on the synthetic val split: {summary['mask_mAP']:.3f}")
    typer.echo(f"model: {summary['checkpoint']}")
    typer.echo(f"pictures: {summary['overlays']}")
