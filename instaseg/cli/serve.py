"""CLI verb ``serve``: TODO(serve) filled in by its owner."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve(model: Annotated[Path, typer.Argument(help="Checkpoint file.")]) -> None:
    """Serve one model over HTTP: POST /api/predict."""
    raise typer.Exit(0)
