"""CLI verb ``export``: a checkpoint to ONNX or TorchScript."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from instaseg.cli.options import Overwrite
from instaseg.core import io


def export(
    model: Annotated[Path, typer.Argument(help="Checkpoint file (best.pt / last.pt from `instaseg train`).")],
    format: Annotated[str, typer.Option("--format", "-f", help="onnx or torchscript.")] = "onnx",
    out: Annotated[
        Path | None, typer.Option(help="Output file (default: beside MODEL, .onnx or .torchscript).")
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Export a trained model to ONNX (runs in onnxruntime) or TorchScript, with a fixed input size."""
    from instaseg.engine.predictor import load
    from instaseg.export import export_model

    io.guard_outputs([out], [model])
    path = export_model(load(model), format, out=out, overwrite=overwrite, source=model)
    typer.echo(f"wrote {path}")
