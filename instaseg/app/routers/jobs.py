"""Background jobs over HTTP: submit, list, cancel, and follow a job's progress as server-sent events.

Requests only queue work and read its state; a worker process runs it (``instaseg.app.jobs.worker``).
``GET /api/jobs/{id}/events`` streams the job's stored events (``id:`` the event's id, ``event:``
progress, metrics or message, ``data:`` the event as JSON), then new ones as the worker stores them,
then one ``end`` event carrying the finished job. A client that reconnects sends ``Last-Event-ID``
(browsers do) or ``?after=`` and misses nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from instaseg.app.auth import CurrentUser, Permission, current_user, get_db, require
from instaseg.app.db.database import Database
from instaseg.app.db.schema import Job, JobEvent, JobStatus
from instaseg.app.errors import bad_request, not_found
from instaseg.app.jobs import queue
from instaseg.app.jobs.catalog import JOB_KINDS

router = APIRouter(prefix="/api", tags=["jobs"])

# How often a stream looks for new events; and how long it may stay silent before a keep-alive
# comment, so that proxies do not close a stream whose job is waiting in the queue.
POLL_S = 0.5
KEEPALIVE_S = 15.0


def _as_utc(moment: datetime) -> datetime:
    # SQLite hands datetimes back without their zone; they were stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class JobIn(BaseModel):
    kind: str = Field(description="train, prelabel, review, export, ...")
    params: dict[str, Any] = Field(default_factory=dict, description="the kind's parameters")


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    params: dict[str, Any]
    status: JobStatus
    progress: float | None = Field(description="done/total of the task now running, 0..1 (None: unknown)")
    message: str | None
    result: dict[str, Any] | None
    error: str | None
    created_by: int | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    worker: str | None
    heartbeat_at: UtcDatetime | None
    attempts: int
    max_attempts: int
    cancel_requested: bool


class JobEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    at: UtcDatetime
    kind: str = Field(description="progress, metrics or message")
    data: dict[str, Any]


@router.post("/jobs", status_code=201)
def submit_job(
    body: JobIn, user: CurrentUser = Depends(require(Permission.manage)), db: Database = Depends(get_db)
) -> JobOut:
    """Queue a job; 422 naming ``kind`` or ``params.<field>`` when the kind or its parameters are wrong."""
    with db.write() as session:
        return JobOut.model_validate(queue.submit(session, body.kind, body.params, user.id))


@router.get("/jobs")
def list_jobs(
    status: JobStatus | None = None,
    kind: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    _user: CurrentUser = Depends(current_user),
    db: Database = Depends(get_db),
) -> list[JobOut]:
    """The newest jobs first, of ``status`` and ``kind`` when given."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Job.status == status)
    if kind is not None:
        query = query.where(Job.kind == kind)
    with db.read() as session:
        return [JobOut.model_validate(job) for job in session.scalars(query)]


class JobKindOut(BaseModel):
    name: str
    max_attempts: int = Field(description="runs in all when workers die during it, before the job fails")
    params_schema: dict[str, Any] = Field(description="JSON Schema of the kind's params")


@router.get("/jobs/kinds")
def list_job_kinds(_user: CurrentUser = Depends(current_user)) -> list[JobKindOut]:
    """The kinds of job a client may submit, with the parameters each takes."""
    return [
        JobKindOut(name=kind.name, max_attempts=kind.max_attempts, params_schema=kind.params.model_json_schema())
        for kind in sorted(JOB_KINDS.values(), key=lambda kind: kind.name)
    ]


@router.get("/jobs/{job_id}")
def get_job(job_id: int, _user: CurrentUser = Depends(current_user), db: Database = Depends(get_db)) -> JobOut:
    with db.read() as session:
        return JobOut.model_validate(_job(session, job_id))


@router.post("/jobs/{job_id}/cancel")
def cancel_job(
    job_id: int, _user: CurrentUser = Depends(require(Permission.manage)), db: Database = Depends(get_db)
) -> JobOut:
    """Cancel a queued job at once; a running one stops within about a second of its next event
    (``cancel_requested`` until then). 409 for a finished job."""
    with db.write() as session:
        return JobOut.model_validate(queue.cancel(session, job_id))


@router.get(
    "/jobs/{job_id}/events",
    response_model=list[JobEventOut],
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the events (a JSON list with stream=false)"}
    },
)
def job_events(
    job_id: int,
    after: Annotated[int, Query(ge=0, description="only events after this event id")] = 0,
    stream: Annotated[bool, Query(description="false: the stored events as a JSON list, at once")] = True,
    kind: Annotated[str | None, Query(description="only events of this kind (progress, metrics, message)")] = None,
    last_event_id: Annotated[str | None, Header(description="sent by a reconnecting EventSource")] = None,
    _user: CurrentUser = Depends(current_user),
    db: Database = Depends(get_db),
) -> Response | list[JobEventOut]:
    """The job's events: streamed as server-sent events until the job ends, or a JSON list with ``stream=false``."""
    if last_event_id is not None:
        if not last_event_id.strip().isdigit():
            raise bad_request("last-event-id", "Last-Event-ID must be an event id")
        after = int(last_event_id)
    with db.read() as session:
        _job(session, job_id)
    if not stream:
        return _events_since(db, job_id, after, kind)[1]
    return EventSourceResponse(_stream(db, job_id, after, kind), headers={"Cache-Control": "no-cache"})


async def _stream(db: Database, job_id: int, after: int, kind: str | None) -> AsyncIterator[bytes]:
    sent_at = time.monotonic()
    while True:
        job, new = await run_in_threadpool(_events_since, db, job_id, after, kind)
        for event in new:
            yield format_sse_event(data_str=event.model_dump_json(), event=event.kind, id=str(event.id))
            after, sent_at = event.id, time.monotonic()
        if job.status in queue.FINISHED:
            yield format_sse_event(data_str=job.model_dump_json(), event="end")
            return
        if time.monotonic() - sent_at >= KEEPALIVE_S:
            yield KEEPALIVE_COMMENT
            sent_at = time.monotonic()
        await asyncio.sleep(POLL_S)


def _events_since(db: Database, job_id: int, after: int, kind: str | None) -> tuple[JobOut, list[JobEventOut]]:
    """The job, then its events after ``after``: read in that order, a finished job's events are all there."""
    with db.read() as session:
        job = JobOut.model_validate(_job(session, job_id))
        query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after).order_by(JobEvent.id)
        if kind is not None:
            query = query.where(JobEvent.kind == kind)
        return job, [JobEventOut.model_validate(event) for event in session.scalars(query)]


def _job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise not_found("job_id", f"no job {job_id}")
    return job
