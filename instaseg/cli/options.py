"""Option types shared by several verbs, so one flag reads and behaves the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")]
ImageFolder = Annotated[
    Path | None, typer.Option("--images", help="Folder the image file names are relative to (default: beside DATA).")
]
ClassName = Annotated[
    str | None,
    typer.Option("--class", help="Class of the instances when the format carries none (default: object)."),
]
ClassesFile = Annotated[
    Path | None,
    typer.Option("--classes", help="Class names file (YOLO, LabelMe) or id-to-class mapping (instance-id masks)."),
]
