"""CLI verbs to inspect a dataset: ``check``, ``stats`` and ``show``."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import typer

from instaseg.cli.options import ImageFolder, Overwrite
from instaseg.core import io
from instaseg.data.check import Severity, check_dataset, count_problems, fix_dataset
from instaseg.data.convert import ReadOptions, open_dataset
from instaseg.data.stats import dataset_stats, plot_stats, stats_tables
from instaseg.viz import save_overlays

EXIT_PROBLEMS = 1

DataArgument = typer.Argument(..., help="The dataset: a COCO JSON file (or any format 'instaseg convert' reads).")


def check(
    data: Path = DataArgument,
    images: ImageFolder = None,
    fix: Path | None = typer.Option(None, "--fix", help="Write a repaired COCO JSON here and list each change."),
    as_json: bool = typer.Option(False, "--json", help="Print the problems as JSON instead of text."),
    no_files: bool = typer.Option(False, "--no-files", help="Do not open the image files (JSON checks only)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the --fix output if it exists."),
) -> None:
    """Report every problem in a dataset, with its file, image id and annotation id.

    Exit status: 0 when there are no errors (warnings allowed), 1 with errors, 2 when DATA
    cannot be read at all. With --fix, the status is that of the repaired copy.
    """
    io.guard_outputs([fix], [data], [images or data])
    if fix is not None:
        io.check_output(fix, overwrite)
    dataset = open_dataset(data, options=ReadOptions(images=images), validate=False, outputs=[fix])
    problems = check_dataset(dataset, check_files=not no_files)
    errors, warnings = count_problems(problems)
    report: dict = {
        "file": str(data),
        "errors": errors,
        "warnings": warnings,
        "problems": [p.to_dict() for p in problems],
    }
    lines = [str(p) for p in problems]
    lines.append(
        f"{errors} error(s), {warnings} warning(s) in {len(dataset.images)} images, {len(dataset.annotations)} annotations"
    )
    if problems:
        kinds = Counter((p.severity, p.kind) for p in problems)
        lines.append("by kind: " + ", ".join(f"{n} {kind} ({severity})" for (severity, kind), n in kinds.most_common()))

    if fix is not None:
        fixed, changes = fix_dataset(dataset, problems)
        remaining = check_dataset(fixed, check_files=not no_files)
        errors, _ = count_problems(remaining)
        fixed.save(fix, overwrite=overwrite, record_image_root=True)
        report["fix"] = {"file": str(fix), "changes": changes, "errors_left": errors}
        lines += [f"fixed: {change}" for change in changes]
        lines.append(f"wrote {fix}: {len(changes)} change(s), {errors} error(s) left")
        lines += [f"  {p}" for p in remaining if p.severity is Severity.ERROR]

    if as_json:
        sys.stdout.write(io.dumps_json(report, indent=True).decode() + "\n")
    else:
        typer.echo("\n".join(lines))
    if errors:
        raise typer.Exit(EXIT_PROBLEMS)


def stats(
    data: Path = DataArgument,
    images: ImageFolder = None,
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
    plot: Path | None = typer.Option(None, "--plot", help="Also save a figure (PNG, SVG or PDF) here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the --plot file if it exists."),
) -> None:
    """Counts per class and per image, COCO size ranges and images without instances."""
    io.guard_outputs([plot], [data], [images or data])
    if plot is not None:
        io.check_output(plot, overwrite)
    result = dataset_stats(open_dataset(data, options=ReadOptions(images=images), outputs=[plot]))
    if plot is not None:
        plot_stats(result, plot, overwrite=overwrite)
    if as_json:
        sys.stdout.write(io.dumps_json(result, indent=True).decode() + "\n")
        return
    from rich.console import Console

    console = Console(file=sys.stdout)
    for table in stats_tables(result):
        console.print(table)
    if plot is not None:
        console.print(f"wrote {plot}")


def show(
    data: Path = DataArgument,
    out: Path = typer.Option(..., "--out", help="Folder to write one overlay PNG per image into."),
    images: ImageFolder = None,
    limit: int | None = typer.Option(None, "--limit", min=1, help="Draw only the first N images."),
    overwrite: Overwrite = False,
) -> None:
    """Draw each image's annotations on it and save the pictures as PNG."""
    io.guard_outputs([out], [data], [images or data])
    io.check_output(out, overwrite)
    written = save_overlays(
        open_dataset(data, options=ReadOptions(images=images)), out, limit=limit, overwrite=overwrite
    )
    typer.echo(f"wrote {len(written)} picture(s) to {out}")
