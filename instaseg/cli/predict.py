"""CLI verb ``predict``: instances in images, as COCO results and overlays.

Models are imported inside the commands: torch takes seconds to import and ``instaseg --help``
should not wait for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from instaseg.cli.options import Overwrite
from instaseg.core import io

DEFAULT_PREDICT_DIR = Path("runs/predict")


def predict(
    model: Annotated[Path, typer.Argument(help="Checkpoint file (best.pt / last.pt from `instaseg train`).")],
    images: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.")],
    classes: Annotated[
        str | None, typer.Option(help="Comma-separated class names to keep, e.g. 'cat,dog' (default: all).")
    ] = None,
    score: Annotated[float, typer.Option(min=0.0, max=1.0, help="Drop instances scoring below this.")] = 0.5,
    max_detections: Annotated[
        int | None, typer.Option(min=1, help="Most instances per image (default: the model's own cap, usually 100).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Predictions folder to write (default: the first free runs/predict, runs/predict2, ...)."),
    ] = None,
    overwrite: Overwrite = False,
    overlays: Annotated[bool, typer.Option(help="Draw each image's instances into OUT/overlays.")] = True,
) -> None:
    """Segment images with a trained model and write a predictions folder.

    OUT holds predictions.json (COCO dict with scores), results.json (COCO results list),
    counts.csv / counts.json (instances per class, per image and in total) and overlays/*.png.
    """
    from instaseg.engine.predict import predict_images
    from instaseg.engine.predictor import load

    target = out if out is not None else _free_folder(DEFAULT_PREDICT_DIR)
    io.guard_outputs([target], [model, *images])
    predictor = load(model)
    wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes is not None else None
    summary = predict_images(
        predictor,
        images,
        score_threshold=score,
        classes=wanted,
        max_detections=max_detections,
        out=target,
        overlays=overlays,
        overwrite=overwrite,
    )
    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    for skip in summary["skipped"]:
        err.print(f"warning: skipped {skip['reason']}", markup=False)
    if summary["capped"]:
        first = ", ".join(summary["capped"][:3]) + (", ..." if len(summary["capped"]) > 3 else "")
        err.print(
            f"warning: {len(summary['capped'])} image(s) reached the cap of {summary['max_detections']} instances "
            f"and may hold more ({first}); raise --max-detections to count them all",
            markup=False,
        )
    table = Table(title=f"{summary['images']} images, score >= {score:g}")
    table.add_column("class")
    table.add_column("instances", justify="right")
    for name, count in summary["counts"].items():
        table.add_row(name, str(count))
    table.add_section()
    table.add_row("total", str(summary["total"]))
    console.print(table)
    console.print(f"wrote {summary['out']}", markup=False)


def _free_folder(base: Path) -> Path:
    """``base`` if it does not exist yet, else the first free ``base2``, ``base3``, ..."""
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}{n}")
    return candidate
