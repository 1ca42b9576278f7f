"""Import a dataset of any format ``instaseg convert`` reads into the project; export the project to any it writes.

Both need the manage permission. An import reads files on the server, so its source must lie in
the project's image folder or the project folder: nothing else on the machine can be read
through it. An export is built in a temporary folder, sent, and deleted.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from instaseg.app.auth import CurrentUser, Permission, get_db, require
from instaseg.app.db.database import Database
from instaseg.app.db.schema import Project
from instaseg.app.errors import bad_request
from instaseg.app.jobs.prelabel import refuse_unknown_images
from instaseg.app.transfer import ImportSummary, export_project, import_dataset
from instaseg.core.errors import InstasegError
from instaseg.data.convert import READERS, WRITERS, ReadOptions, open_dataset

router = APIRouter(prefix="/api", tags=["transfer"])

# The one format written as a file; every other one is a folder, sent zipped.
FILE_FORMAT = "coco"


class ImportOptions(BaseModel):
    """What the format leaves unsaid (``instaseg convert``'s options of the same names)."""

    model_config = ConfigDict(extra="forbid")

    class_name: str | None = Field(default=None, description="the class of instances whose format carries none")
    classes: str | None = Field(
        default=None, description="a names file (YOLO, LabelMe) or mapping file (masks); relative to the image folder"
    )
    mask_suffix: str | None = Field(default=None, description="what follows the image's stem in a mask's name (masks)")
    ignore_value: int | str | None = Field(default="auto", description="the void value of instance-id masks (masks)")


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="a dataset file or folder; a relative path is relative to the image folder")
    format: str | None = Field(default=None, description=f"one of {', '.join(READERS)}; detected when null")
    options: ImportOptions = Field(default_factory=ImportOptions)


@router.post("/import", response_model=ImportSummary)
def import_source(
    body: ImportRequest,
    request: Request,
    db: Database = Depends(get_db),
    user: CurrentUser = Depends(require(Permission.manage)),
) -> ImportSummary:
    """Import the dataset at ``source`` (its images must lie in the image folder), all or nothing.

    Images are matched by their path in the image folder and classes by name; a second import of
    the same dataset adds its instances again. 422 naming ``source`` when it lies outside the image
    folder and the project folder, cannot be read, or holds what the project refuses (the message
    names the file and the record); naming ``format`` for an unknown format and ``options.*`` for
    a bad option.
    """
    if body.format is not None and body.format not in READERS:
        raise bad_request("format", f"cannot read format {body.format!r}; readable formats: {', '.join(READERS)}")
    source = _readable_path(request, db, body.source, "source")
    classes = _readable_path(request, db, body.options.classes, "options.classes") if body.options.classes else None
    try:
        options = ReadOptions(
            class_name=body.options.class_name,
            classes=classes,
            mask_suffix=body.options.mask_suffix,
            ignore_value=body.options.ignore_value,
        )
    except InstasegError as exc:
        raise bad_request("options.ignore_value", str(exc)) from exc
    try:
        # import_dataset validates the dataset itself, whatever opened it.
        dataset = open_dataset(source, body.format, options=options, validate=False)
        return import_dataset(db, dataset, user_id=user.id)
    except InstasegError as exc:
        raise bad_request("source", str(exc)) from exc


@router.get(
    "/export",
    response_class=FileResponse,
    responses={200: {"content": {"application/json": {}, "application/zip": {}}, "description": "the export"}},
)
def export(
    format: str = Query(FILE_FORMAT, description=f"one of {', '.join(WRITERS)}"),
    image_ids: list[int] | None = Query(None, description="only these images (all when absent)"),
    db: Database = Depends(get_db),
    _user: CurrentUser = Depends(require(Permission.manage)),
) -> FileResponse:
    """The project (or its ``image_ids``) as a COCO JSON, or as a zip of the folder of any other format.

    422 naming ``format`` for a format ``instaseg convert`` does not write, ``image_ids`` for ids
    the project has no image of.
    """
    if format not in WRITERS:
        raise bad_request("format", f"cannot write format {format!r}; writable formats: {', '.join(WRITERS)}")
    with db.read() as session:
        if image_ids is not None:
            refuse_unknown_images(session, image_ids)
        name = _project(session).name
    scratch = Path(tempfile.mkdtemp(prefix="instaseg-export-"))
    try:
        if format == FILE_FORMAT:
            path = export_project(db, scratch / "export.json", format, image_ids=image_ids)
            media_type, download = "application/json", f"{name}.json"
        else:
            folder = export_project(db, scratch / "export", format, image_ids=image_ids)
            path = Path(shutil.make_archive(str(scratch / "export"), "zip", root_dir=folder))
            media_type, download = "application/zip", f"{name}-{format}.zip"
    except InstasegError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise bad_request("format", str(exc)) from exc
    except Exception:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    cleanup = BackgroundTask(shutil.rmtree, scratch, ignore_errors=True)
    return FileResponse(path, media_type=media_type, filename=download, background=cleanup)


def _project(session: Session) -> Project:
    project = session.scalar(select(Project))
    assert project is not None, "open_project creates the project row"
    return project


def _readable_path(request: Request, db: Database, text: str, field: str) -> Path:
    """``text`` as a path (relative to the image folder), refused (422 naming ``field``) unless it lies in
    the image folder or the project folder once symbolic links are followed."""
    with db.read() as session:
        root = Path(_project(session).image_root).resolve()
    path = (root / text).resolve()
    allowed = (root, Path(request.app.state.settings.project_dir).resolve())
    if not any(path.is_relative_to(folder) for folder in allowed):
        raise bad_request(field, f"{text} lies outside the image folder and the project folder")
    return path
