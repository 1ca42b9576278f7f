"""CLI verb ``worker``: TODO(worker) filled in by its owner."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def worker(
    db: Annotated[str, typer.Option("--db", help="Database URL of the project.")],
    project: Annotated[Path, typer.Option("--project", help="Project folder (models, exports).")],
) -> None:
    """Run background jobs of a project (train, pre-label, review, export)."""
    raise typer.Exit(0)
