"""The files export jobs wrote, for download."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from instaseg.app.auth import Permission, get_db, require
from instaseg.app.db.database import Database
from instaseg.app.db.schema import Job, JobStatus
from instaseg.app.errors import not_found
from instaseg.core import io

router = APIRouter(prefix="/api", tags=["exports"])


@router.get(
    "/exports/{job_id}",
    response_class=FileResponse,
    dependencies=[Depends(require(Permission.manage))],
    responses={200: {"content": {"application/json": {}, "application/zip": {}}, "description": "the export"}},
)
def download_export(job_id: int, request: Request, db: Database = Depends(get_db)) -> FileResponse:
    """The file of the finished export job ``job_id`` (COCO JSON, or a zip of a folder format); 404 naming
    ``job_id`` when there is no such export job, it has not finished well, or its file is gone."""
    with db.read() as session:
        job = session.get(Job, job_id)
        if job is None or job.kind != "export" or job.status != JobStatus.done or not job.result:
            raise not_found("job_id", f"no finished export job {job_id}")
        relative = job.result["path"]
    path = io.safe_join(Path(request.app.state.settings.project_dir), relative)
    if not path.is_file():
        raise not_found("job_id", f"the file of export job {job_id} is gone")
    media_type = "application/json" if path.suffix == ".json" else "application/zip"
    return FileResponse(path, media_type=media_type, filename=f"export-{job_id}{path.suffix}")
