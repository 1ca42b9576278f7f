"""CLI verb ``worker``: runs a project's background jobs; ``instaseg app`` starts one, more may run anywhere."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer


def worker(
    db: Annotated[str, typer.Option("--db", help="Database URL of the project.")],
    project: Annotated[Path, typer.Option("--project", help="Project folder (models, exports).")],
    name: Annotated[
        str | None, typer.Option("--name", help="This worker's name in the jobs list (default HOST-PID).")
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Run the queued jobs, then exit instead of waiting.")] = False,
    stale_after: Annotated[
        float,
        typer.Option("--stale-after", help="Seconds without a heartbeat after which a running job's worker is dead."),
    ] = 60.0,
    poll: Annotated[float, typer.Option("--poll", min=0.01, help="Seconds between looks at an empty queue.")] = 1.0,
) -> None:
    """Run background jobs of a project (train, pre-label, review, export), one line per job started and ended.

    Several workers, on this machine or others sharing the project folder and a PostgreSQL
    database, share the queue without running any job twice. SIGTERM or Ctrl+C stops the worker
    at its job's next progress event; the job is queued again or, out of attempts, failed.
    """
    from sqlalchemy.exc import OperationalError

    from instaseg.app.db.database import Database, head_revision
    from instaseg.app.jobs.worker import run_worker
    from instaseg.core.errors import InstasegError

    if not project.is_dir():
        raise InstasegError("no such project folder", file=project)
    database = Database(db)
    try:
        try:
            revision = database.schema_revision()
        except OperationalError as exc:
            raise InstasegError(f"cannot open the database: {str(exc.orig).strip()}", file=database.safe_url) from None
        if revision != head_revision():
            raise InstasegError(
                f"the database's schema is {revision or 'missing'}, this instaseg needs {head_revision()}: "
                "open the project with `instaseg app` (it migrates the database) or install the same instaseg",
                file=database.safe_url,
            )
        run_worker(
            database,
            project,
            name=name or f"{socket.gethostname()}-{os.getpid()}",
            poll_s=poll,
            stale_after_s=stale_after,
            once=once,
        )
    finally:
        database.close()
