"""CLI verb ``eval``: the COCO metric of predictions against ground truth."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from instaseg.cli.options import ClassesFile, ClassName, Overwrite
from instaseg.core import io
from instaseg.data.convert import ReadOptions, open_dataset
from instaseg.evaluation import ERROR_KINDS, EvalResult, evaluate_results, load_predictions, write_report

TOP_IMAGES = 10
# short column headings keep the worst-images table inside an 80-column terminal
ERROR_HEADINGS = {
    "missed": "miss",
    "background": "bkg",
    "duplicate": "dup",
    "wrong_class": "class",
    "localization": "loc",
    "class_and_location": "cls+loc",
}


class IouType(StrEnum):
    segm = "segm"
    bbox = "bbox"
    both = "both"


def eval_command(
    gt: Annotated[Path, typer.Argument(help="Ground truth: a COCO JSON (or any dataset 'instaseg convert' reads).")],
    pred: Annotated[
        Path,
        typer.Argument(
            help="Predictions: a COCO results JSON, or a folder / predictions.json from 'instaseg predict'."
        ),
    ],
    iou_type: Annotated[
        IouType, typer.Option("--iou-type", help="Match by mask IoU (segm), box IoU (bbox) or report both.")
    ] = IouType.segm,
    out: Annotated[
        Path | None, typer.Option(help="Folder for metrics.json, PR curves, confusion matrix and errors.json/csv.")
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="Folder GT image file names are relative to (formats that need it).")
    ] = None,
    gt_format: Annotated[
        str | None,
        typer.Option(
            "--from", help="Format of GT, as for 'instaseg convert' (coco, yolo, via, ...); detected when omitted."
        ),
    ] = None,
    class_name: ClassName = None,
    classes: ClassesFile = None,
    score_threshold: Annotated[
        float,
        typer.Option("--score-threshold", min=0.0, help="Score from which predictions count in the error breakdown."),
    ] = 0.5,
    overwrite: Overwrite = False,
) -> None:
    """COCO mAP of PRED against GT: the 12 COCO numbers, a per-class table and where AP is lost.

    Predictions from 'instaseg predict' are matched to GT images by their paths (a bare file name
    where it is unique) and to classes by name.
    """
    io.guard_outputs([out], [gt, pred, classes], [images or gt])
    if out is not None:
        io.check_output(out, overwrite)  # before minutes of work, not after
    dataset = open_dataset(
        gt, gt_format, options=ReadOptions(images=images, class_name=class_name, classes=classes), outputs=[out]
    )
    warnings: list[str] = []
    results = load_predictions(dataset, pred, warnings)
    iou_types = ("segm", "bbox") if iou_type is IouType.both else (iou_type.value,)
    result = evaluate_results(
        dataset, results, iou_types, score_threshold=score_threshold, source=pred, warnings=warnings
    )
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    print_result(result, Console(highlight=False))
    if out is not None:
        write_report(result, out, overwrite=overwrite)
        Console(highlight=False).print(
            f"wrote {out}/ (metrics.json, PR curves, confusion_matrix.png, errors.json/csv)", markup=False
        )


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_result(result: EvalResult, console: Console) -> None:
    """The summary lines, a per-class table per IoU type and the error breakdown's worst images."""
    console.print(f"{result.num_images} images, {result.num_predictions} predictions", markup=False)
    console.print(result.summary(), markup=False)
    for iou_type, rows in result.per_class.items():
        table = Table(title=f"per class ({iou_type})")
        for column in ("class", "GT", "pred", "AP", "AP50", "AP75", "AR100"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for row in rows:
            table.add_row(
                row["class"], str(row["gt"]), str(row["predictions"]),
                *(_number(row[key]) for key in ("AP", "AP50", "AP75", "AR100")),
            )  # fmt: skip
        console.print(table)
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    errors = result.errors
    if errors is None:
        return
    totals = errors.totals
    console.print(
        f"errors at score >= {errors.score_threshold:g} ({errors.iou_type}): {totals['true_positives']} of "
        f"{totals['predictions']} predictions correct, {totals['gt']} instances; "
        + ", ".join(f"{kind.replace('_', ' ')} {totals[kind]}" for kind in ERROR_KINDS),
        markup=False,
    )
    worst = [row for row in errors.images if row["errors"]][:TOP_IMAGES]
    if not worst:
        return
    table = Table(title=f"worst {len(worst)} images")
    table.add_column("image", overflow="fold")
    for column in ("GT", "pred", "TP", *(ERROR_HEADINGS[kind] for kind in ERROR_KINDS)):
        table.add_column(column, justify="right", no_wrap=True)
    for row in worst:
        table.add_row(
            row["file_name"], str(row["gt"]), str(row["predictions"]), str(row["true_positives"]),
            *(str(row[kind]) for kind in ERROR_KINDS),
        )  # fmt: skip
    console.print(table)
