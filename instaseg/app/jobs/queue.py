"""The job queue: clients submit and cancel jobs, workers claim them, keep them alive and finish them.

A job goes ``queued -> running -> done | failed | cancelled``. A worker claims the oldest queued job
of a kind it knows in one write transaction: on PostgreSQL with ``SELECT ... FOR UPDATE SKIP LOCKED``,
so workers on several machines never take the same job nor wait for each other; on SQLite the
transaction's ``IMMEDIATE`` lock makes the claim atomic. While it runs, the worker refreshes the
job's heartbeat; a running job whose heartbeat stopped lost its worker and is queued again while it
has attempts left (``max_attempts``), else failed, so no job stays "running" for ever.

Every time written here comes from the database's clock on PostgreSQL, so that workers on machines
whose clocks differ still agree on whose heartbeat is stale.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from instaseg.app.db.database import Database
from instaseg.app.db.schema import Job, JobStatus
from instaseg.app.errors import bad_request, conflict, not_found
from instaseg.app.jobs.catalog import JOB_KINDS

FINISHED = (JobStatus.done, JobStatus.failed, JobStatus.cancelled)


def database_now(session: Session) -> datetime:
    """Now by the database's clock on PostgreSQL (shared by every worker's machine), else by this machine's."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        return session.execute(select(func.now())).scalar_one()
    return datetime.now(UTC)


def validate_params(kind: str, params: dict[str, Any]) -> BaseModel:
    """``params`` checked by ``kind``'s parameter model; 422 naming ``kind`` or ``params.<field>`` when wrong."""
    if kind not in JOB_KINDS:
        raise bad_request("kind", f"no job kind {kind!r}; available: {', '.join(sorted(JOB_KINDS))}")
    try:
        return JOB_KINDS[kind].params.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(["params", *(str(part) for part in first["loc"])])
        # A check of the parameter model's own (a ValueError) reads best without pydantic's prefix.
        raise bad_request(field, first["msg"].removeprefix("Value error, ")) from None


def submit(session: Session, kind: str, params: dict[str, Any], user_id: int | None) -> Job:
    """Queue a job of ``kind`` with its validated ``params`` (defaults filled in); refused (422) as
    ``validate_params`` says."""
    checked = validate_params(kind, params)
    job = Job(
        kind=kind,
        params=checked.model_dump(mode="json"),
        status=JobStatus.queued,
        created_by=user_id,
        max_attempts=JOB_KINDS[kind].max_attempts,
    )
    session.add(job)
    session.flush()
    return job


def cancel(session: Session, job_id: int) -> Job:
    """Cancel a queued job at once, or ask its worker to stop a running one (it stops at the job's next
    event); 404 for no such job, 409 for a finished one."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise not_found("job_id", f"no job {job_id}")
    if job.status in FINISHED:
        raise conflict("job_id", f"job {job_id} has already finished ({job.status.value})", current=None)
    if job.status == JobStatus.queued:
        job.status = JobStatus.cancelled
        job.finished_at = database_now(session)
    else:
        job.cancel_requested = True
    session.flush()
    return job


def claim(db: Database, worker_name: str, kinds: Iterable[str] | None = None) -> Job | None:
    """Take the oldest queued job of ``kinds`` (default: every registered kind) for ``worker_name``:
    it becomes running, with its start, heartbeat and one more attempt recorded. None when none is queued."""
    known = list(JOB_KINDS if kinds is None else kinds)
    with db.write() as session:
        job = session.scalars(
            select(Job)
            .where(Job.status == JobStatus.queued, Job.kind.in_(known))
            .order_by(Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if job is None:
            return None
        now = database_now(session)
        job.status = JobStatus.running
        job.started_at = job.heartbeat_at = now
        job.worker = worker_name
        job.attempts += 1
        job.progress, job.message = None, None
        return job


def heartbeat(db: Database, job_id: int) -> None:
    """Record that the running job ``job_id``'s worker is alive."""
    with db.write() as session:
        job = session.get(Job, job_id)
        if job is not None and job.status == JobStatus.running:
            job.heartbeat_at = database_now(session)


def recover_stale(db: Database, stale_after_s: float) -> list[int]:
    """Queue again (or fail, once out of attempts) every running job whose heartbeat is older than
    ``stale_after_s``: its worker died. Returns their ids."""
    with db.read() as session:
        cutoff = database_now(session) - timedelta(seconds=stale_after_s)
        candidates = session.scalars(
            select(Job.id).where(Job.status == JobStatus.running, Job.heartbeat_at < cutoff)
        ).all()
    if not candidates:
        return []
    with db.write() as session:
        cutoff = database_now(session) - timedelta(seconds=stale_after_s)
        stale = session.scalars(
            select(Job)
            .where(Job.id.in_(candidates), Job.status == JobStatus.running, Job.heartbeat_at < cutoff)
            .with_for_update(skip_locked=True)
        ).all()
        for job in stale:
            _retry_or_fail(session, job, f"the worker ({job.worker}) stopped during the job")
        return [job.id for job in stale]


def release(db: Database, job_id: int, worker_name: str, reason: str) -> None:
    """Hand back the running job of a worker that is stopping: queued again while it has attempts
    left, else failed with ``reason``."""
    with db.write() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is not None and job.status == JobStatus.running and job.worker == worker_name:
            _retry_or_fail(session, job, reason)


def finish(
    db: Database,
    job_id: int,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    cancelled: bool = False,
    worker_name: str | None = None,
) -> bool:
    """End the running job ``job_id``: cancelled, failed with ``error``, or done with ``result``.

    Refused (False, nothing changed) when the job is not running, or, given ``worker_name``, runs
    on another worker: a worker taken for dead whose job went to another must not end it.
    """
    with db.write() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.status != JobStatus.running or worker_name not in (None, job.worker):
            return False
        job.finished_at = database_now(session)
        if cancelled:
            job.status = JobStatus.cancelled
        elif error is not None:
            job.status, job.error = JobStatus.failed, error
        else:
            job.status, job.result, job.progress = JobStatus.done, result or {}, 1.0
        return True


def _retry_or_fail(session: Session, job: Job, reason: str) -> None:
    if job.cancel_requested:
        job.status, job.finished_at = JobStatus.cancelled, database_now(session)
    elif job.attempts < job.max_attempts:
        job.status, job.worker, job.heartbeat_at = JobStatus.queued, None, None
        job.message = f"queued again: {reason} (attempt {job.attempts} of {job.max_attempts})"
    else:
        job.status, job.finished_at = JobStatus.failed, database_now(session)
        job.error = reason
