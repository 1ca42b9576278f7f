"""CLI verbs that make datasets: ``convert`` and ``synth``."""

from __future__ import annotations

from pathlib import Path

import typer

from instaseg.cli.options import ClassesFile, ClassName, Overwrite
from instaseg.data.convert import READERS, WRITERS, ReadOptions
from instaseg.data.convert import convert as convert_dataset


def convert(
    src: Path = typer.Argument(..., help="Dataset to read: a JSON file or a folder, depending on the format."),
    out: Path = typer.Argument(..., help="Output: a .json file for coco, a folder for the other formats."),
    from_format: str | None = typer.Option(
        None, "--from", help=f"Input format: {', '.join(READERS)} (detected when left out)."
    ),
    to_format: str | None = typer.Option(
        None, "--to", help=f"Output format: {', '.join(WRITERS)} (coco for a .json OUT)."
    ),
    images: Path | None = typer.Option(None, "--images", help="Image folder, where the input format does not say."),
    class_name: ClassName = None,
    classes: ClassesFile = None,
    mask_suffix: str | None = typer.Option(
        None,
        "--mask-suffix",
        help="masks: what follows the image's stem in a mask's name, instead of the usual _mask, _masks, -mask, "
        "_label, _instance(s), _gt (any case); identical stems always pair.",
    ),
    ignore_value: str = typer.Option(
        "auto",
        "--ignore-value",
        help="masks: the void value, never an instance: a number, none, or auto (255 in 8-bit masks that also "
        "hold other ids, as in PASCAL VOC).",
    ),
    allow_skipped: bool = typer.Option(
        False,
        "--allow-skipped",
        help="Convert even when under half of the label records read can be kept (keeping none is always an error).",
    ),
    polylines_as_polygons: bool = typer.Option(
        False,
        "--polylines-as-polygons",
        help="via: read open polylines as outlines (closed ones always are), not as lines without area.",
    ),
    split: str = typer.Option("train", help="Split folder name for YOLO output."),
    overwrite: Overwrite = False,
) -> None:
    """Convert a dataset between coco, yolo, via, labelme, masks, mask-files, semantic and panoptic."""
    from instaseg.core import io

    io.guard_outputs([out], [src, classes], [images or src])
    options = ReadOptions(
        images=images,
        class_name=class_name,
        classes=classes,
        mask_suffix=mask_suffix,
        ignore_value=ignore_value,
        allow_skipped=allow_skipped,
        polylines_as_polygons=polylines_as_polygons,
    )
    # Warnings reach the user as events (the console listener prints them) while converting.
    report = convert_dataset(
        src, out, src_format=from_format, out_format=to_format, options=options, split=split, overwrite=overwrite
    )
    if report.detected:
        typer.echo(f"detected format: {report.source_format}")
    typer.echo(
        f"read {report.images} images, {report.instances_read} instances ({report.source_format}); "
        f"wrote {report.instances_written} instances to {out}; {len(report.warnings)} warnings"
    )


def synth(
    out: Path = typer.Argument(..., help="Folder to create (train.json, val.json and the images)."),
    num_train: int = typer.Option(200, "--num-train", min=0, help="Training images."),
    num_val: int = typer.Option(50, "--num-val", min=0, help="Validation images."),
    size: int = typer.Option(128, "--size", min=32, help="Image width and height in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same data."),
    overwrite: Overwrite = False,
) -> None:
    """Make a synthetic dataset of coloured shapes (circle, square, triangle, star) with COCO masks."""
    from instaseg.core import io
    from instaseg.data.synth import make_synthetic

    io.guard_outputs([out])
    train_json, val_json = make_synthetic(
        out, num_train=num_train, num_val=num_val, size=size, seed=seed, overwrite=overwrite
    )
    typer.echo(f"wrote {train_json} and {val_json}")
