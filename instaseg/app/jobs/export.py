"""The ``export`` job: the project's labels written in any format ``instaseg convert`` writes, as one file.

The file is ``PROJECT_DIR/exports/job-<id>.json`` for COCO and ``job-<id>.zip`` holding the folder
of any other format; ``GET /api/exports/{job_id}`` serves it once the job is done.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select

from instaseg.app.db.schema import AnnotatedInstance, Image
from instaseg.app.jobs.kinds import JobContext, job_kind
from instaseg.app.jobs.prelabel import refuse_unknown_images
from instaseg.app.transfer import export_project
from instaseg.core import io
from instaseg.data.convert import WRITERS

# The one format written as a file; every other one is a folder, sent zipped.
FILE_FORMAT = "coco"


class ExportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = Field(FILE_FORMAT, description=f"one of {', '.join(WRITERS)}")
    image_ids: list[int] | None = Field(None, description="only these images (all when None)")

    @field_validator("format")
    @classmethod
    def _writable(cls, name: str) -> str:
        if name not in WRITERS:
            raise ValueError(f"cannot write format {name!r}; writable formats: {', '.join(WRITERS)}")
        return name


def export_file(project_dir: Path, job_id: int, fmt: str) -> Path:
    """Where the export job ``job_id`` writes its file."""
    return project_dir / "exports" / f"job-{job_id}.{'json' if fmt == FILE_FORMAT else 'zip'}"


@job_kind("export", params=ExportParams)
def export(context: JobContext) -> dict[str, Any]:
    """Export the project (or its ``image_ids``) with ``transfer.export_project``; a folder format is zipped.

    Refuses ``image_ids`` the project does not have, and what ``export_project`` refuses.
    """
    params = context.params
    assert isinstance(params, ExportParams)
    if params.image_ids is not None:
        with context.db.read() as session:
            refuse_unknown_images(session, params.image_ids)
    out = export_file(context.project_dir, context.job_id, params.format)
    if params.format == FILE_FORMAT:
        export_project(context.db, out, params.format, overwrite=True, image_ids=params.image_ids)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{out.stem}.", dir=out.parent) as scratch:
            folder = export_project(context.db, Path(scratch) / out.stem, params.format, image_ids=params.image_ids)
            with io.atomic_path(out, overwrite=True) as target:
                shutil.make_archive(str(target.with_suffix("")), "zip", root_dir=folder)
    with context.db.read() as session:
        images = select(func.count(Image.id))
        instances = select(func.count(AnnotatedInstance.id))
        if params.image_ids is not None:
            images = images.where(Image.id.in_(params.image_ids))
            instances = instances.where(AnnotatedInstance.image_id.in_(params.image_ids))
        counts = {"images": session.scalar(images) or 0, "instances": session.scalar(instances) or 0}
    return {"path": out.relative_to(context.project_dir).as_posix(), "format": params.format, **counts}
