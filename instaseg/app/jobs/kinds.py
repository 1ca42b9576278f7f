"""The kinds of job a worker can run, each registered with the parameters it takes.

A kind is a function of a ``JobContext`` returning the job's result (a JSON-ready dict). It
reports progress through ``instaseg.core.events`` like any library code; the worker listens,
stores the events for clients and stops the job (``JobCancelled``) once a cancel is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from instaseg.app.db.database import Database


class JobCancelled(Exception):
    """Raised inside a running job once somebody asked to cancel it."""


@dataclass
class JobContext:
    db: Database
    job_id: int
    params: BaseModel
    user_id: int | None
    project_dir: Path
    image_root: Path
    # Set by the worker: raises JobCancelled when a cancel was asked for.
    check_cancelled: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class JobKind:
    name: str
    params: type[BaseModel]
    run: Callable[[JobContext], dict[str, Any]]
    # A job killed with its worker is queued again this many times in all before it is failed.
    max_attempts: int = 1


JOB_KINDS: dict[str, JobKind] = {}


def job_kind(name: str, *, params: type[BaseModel], max_attempts: int = 1):
    """Register the decorated function as the job kind ``name`` taking ``params``."""

    def register(run: Callable[[JobContext], dict[str, Any]]) -> Callable[[JobContext], dict[str, Any]]:
        if name in JOB_KINDS:
            raise ValueError(f"job kind {name!r} registered twice")
        JOB_KINDS[name] = JobKind(name, params, run, max_attempts)
        return run

    return register
