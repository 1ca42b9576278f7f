"""CLI verb ``app``: the annotation workspace of a project, served to the browser with its job worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

ProjectDir = Annotated[Path, typer.Argument(help="Project folder (created when new): its database, uploads, models.")]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: SQLite in PROJECT_DIR); postgresql+psycopg://user@host/name."),
]


def app(
    project_dir: ProjectDir = Path("project"),
    images: Annotated[
        Path | None,
        typer.Option("--images", help="Image folder (new images in it are added; default PROJECT_DIR/images)."),
    ] = None,
    db: DatabaseUrl = None,
    host: Annotated[str, typer.Option(help="Address to serve on; off loopback, users must log in.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Job worker processes to start beside the server (0: none).")] = 1,
) -> None:
    """Open or create a project and serve it: the web app, its API (at /docs) and a job worker."""
    import uvicorn

    from instaseg.app.auth import users_who_can_log_in
    from instaseg.app.server import create_app, open_project
    from instaseg.app.settings import AppSettings
    from instaseg.app.transfer import scan_images
    from instaseg.core.errors import InstasegError

    settings = AppSettings(project_dir=project_dir, database_url=db, host=host, port=port)
    database = open_project(settings, image_root=images)
    if not settings.local and not users_who_can_log_in(database):
        raise InstasegError(
            f"refusing to serve on {host} without users who can log in; add one with "
            f"`instaseg users add {project_dir} NAME --role admin` or serve on 127.0.0.1"
        )
    from instaseg.app.server import image_root

    added = scan_images(database, image_root(database))
    if added:
        typer.echo(f"added {added} new images from {image_root(database)}")
    worker_command = [sys.executable, "-m", "instaseg", "worker", "--db", database.url, "--project", str(project_dir)]
    started = [subprocess.Popen(worker_command) for _ in range(workers)]
    typer.echo(f"instaseg app: http://{host}:{port}/ (API at http://{host}:{port}/docs); Ctrl+C stops")
    try:
        uvicorn.run(create_app(settings, database), host=host, port=port, log_level="warning")
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(timeout=30)
