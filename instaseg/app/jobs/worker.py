"""The worker: claims queued jobs one at a time and runs each in this process, reporting as it goes.

A job hears only its own worker: it runs in a fresh ``contextvars`` context whose one events
listener stores the job's progress, metrics and messages as ``JobEvent`` rows (what clients stream)
and stops the job once a cancel is asked for (``JobCancelled``) or the worker must stop. A heartbeat
thread keeps the job's ``heartbeat_at`` fresh meanwhile, so that other workers can tell a live job
from one whose worker died (``queue.recover_stale``).
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from instaseg.app.db.database import Database
from instaseg.app.db.schema import Job, JobEvent
from instaseg.app.errors import ApiError
from instaseg.app.jobs import queue
from instaseg.app.jobs.catalog import JOB_KINDS
from instaseg.app.jobs.kinds import JobCancelled, JobContext
from instaseg.app.server import image_root
from instaseg.core import events
from instaseg.core.errors import InstasegError

HEARTBEAT_S = 1.0
# A stored progress event per task at most this often; the first and the finished one always.
PROGRESS_EVERY_S = 0.25
# How often a running job looks whether somebody asked to cancel it.
CANCEL_CHECK_S = 1.0


class WorkerStopping(BaseException):
    """Raised inside a job when its worker must stop (SIGTERM or ``stop``); a BaseException so that a
    kind's ``except Exception`` cannot swallow it."""


def run_worker(
    db: Database,
    project_dir: str | Path,
    *,
    name: str,
    poll_s: float = 1.0,
    stale_after_s: float = 60,
    once: bool = False,
    stop: threading.Event | None = None,
) -> int:
    """Run queued jobs until ``stop`` is set (or, with ``once``, until none is queued); how many ran.

    Before each claim, running jobs whose heartbeat is older than ``stale_after_s`` are queued again
    or failed (``queue.recover_stale``). A job's exception fails that job only. On SIGTERM or SIGINT
    (when called from the main thread) or once ``stop`` is set, the running job stops at its next event
    and is queued again while it has attempts left, else failed. Refuses a ``stale_after_s`` that
    live workers' heartbeats could not beat.
    """
    if stale_after_s < 2 * HEARTBEAT_S:
        raise InstasegError(f"--stale-after must be at least {2 * HEARTBEAT_S:g} s, not {stale_after_s:g}")
    stop = stop if stop is not None else threading.Event()
    worker = _Worker(db, Path(project_dir), image_root(db), name, stop)
    restore_signals = _stop_on_signals(stop)
    ran = 0
    try:
        while not stop.is_set():
            recovered = queue.recover_stale(db, stale_after_s)
            if recovered:
                events.info(f"jobs {', '.join(map(str, recovered))} had lost their worker: queued again or failed")
            job = queue.claim(db, name)
            if job is None:
                if once:
                    break
                stop.wait(poll_s)
                continue
            worker.run(job)
            ran += 1
    finally:
        restore_signals()
    return ran


@dataclasses.dataclass(frozen=True)
class _Worker:
    db: Database
    project_dir: Path
    image_root: Path
    name: str
    stop: threading.Event

    def run(self, job: Job) -> None:
        """Run the claimed ``job`` to its end and record how it ended."""
        events.info(f"job {job.id} ({job.kind}) started, attempt {job.attempts} of {job.max_attempts}")
        started = time.monotonic()
        listener = _JobListener(self.db, job.id, self.stop)
        beating = threading.Event()
        beat = threading.Thread(target=_beat, args=(self.db, job.id, beating), name=f"heartbeat-{job.id}", daemon=True)
        beat.start()
        end: dict[str, Any]
        try:
            params = queue.validate_params(job.kind, job.params)
            job_context = JobContext(
                self.db, job.id, params, job.created_by, self.project_dir, self.image_root, listener.check
            )
            # A fresh context: the job hears none of the worker's own listeners (the CLI's console).
            end = {"result": contextvars.Context().run(listener.run, JOB_KINDS[job.kind].run, job_context)}
        except JobCancelled:
            end = {"cancelled": True}
        except WorkerStopping:
            queue.release(self.db, job.id, self.name, "the worker was stopped during the job")
            events.info(f"job {job.id} ({job.kind}) handed back: the worker is stopping")
            return
        except Exception as exc:  # a failing job fails alone; the worker goes on with the next
            end = {"error": error_line(exc)}
        finally:
            beating.set()
            beat.join()
        said = "cancelled" if "cancelled" in end else f"failed: {end['error']}" if "error" in end else "done"
        if queue.finish(self.db, job.id, worker_name=self.name, **end):
            events.info(f"job {job.id} ({job.kind}) {said} after {time.monotonic() - started:.1f} s")
        else:
            events.warn(f"job {job.id} ({job.kind}) was taken over by another worker; its end here is not recorded")


class _JobListener:
    """The events listener of one running job: stores its events and stops it when it must stop."""

    def __init__(self, db: Database, job_id: int, stop: threading.Event):
        self.db, self.job_id, self.stop = db, job_id, stop
        self.progress_stored: dict[str, float] = {}
        self.cancel_checked = time.monotonic()

    def run(self, kind: Callable[[JobContext], dict[str, Any]], context: JobContext) -> dict[str, Any]:
        with events.listen(self):
            return kind(context)

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.Progress):
            now = time.monotonic()
            first = event.task not in self.progress_stored
            if first or event.finished or now - self.progress_stored[event.task] >= PROGRESS_EVERY_S:
                self.progress_stored[event.task] = now
                fraction = min(1.0, event.done / event.total) if event.total else None
                self._store("progress", dataclasses.asdict(event), progress=fraction, message=event.task)
        elif isinstance(event, events.Metrics):
            values = {k: float(v) if math.isfinite(v) else None for k, v in event.values.items()}
            self._store("metrics", {"task": event.task, "step": event.step, "values": values})
        else:
            self._store("message", dataclasses.asdict(event), message=event.text)
        self.check()

    def check(self) -> None:
        """Raise ``WorkerStopping`` once the worker must stop, ``JobCancelled`` once somebody asked to cancel
        (looked up at most every ``CANCEL_CHECK_S``)."""
        if self.stop.is_set():
            raise WorkerStopping
        now = time.monotonic()
        if now - self.cancel_checked < CANCEL_CHECK_S:
            return
        self.cancel_checked = now
        with self.db.read() as session:
            if session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)):
                raise JobCancelled(f"job {self.job_id} was cancelled")

    def _store(self, kind: str, data: dict[str, Any], **job_fields: Any) -> None:
        with self.db.write() as session:
            session.add(JobEvent(job_id=self.job_id, kind=kind, data=data))
            if job_fields:
                session.execute(update(Job).where(Job.id == self.job_id).values(**job_fields))


def _beat(db: Database, job_id: int, done: threading.Event) -> None:
    while not done.wait(HEARTBEAT_S):
        try:
            queue.heartbeat(db, job_id)
        except SQLAlchemyError:
            pass  # a database that is briefly away misses a beat; the next one tries again


def error_line(exc: Exception) -> str:
    """A failed job's error, one line: an ``InstasegError``'s own text, else ``unexpected <Type>: <message>``."""
    if isinstance(exc, InstasegError):
        text = str(exc)
    elif isinstance(exc, ApiError):  # parameters stored before this version's checks
        text = f"{exc.field}: {exc.detail}"
    else:
        lines = str(exc).strip().splitlines()
        text = f"unexpected {type(exc).__name__}" + (f": {lines[0]}" if lines else "")
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """Make SIGTERM and SIGINT set ``stop`` (signals reach the main thread only), so that a stopping worker
    hands its job back instead of leaving it running; returns what puts the old handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {number: signal.signal(number, lambda _n, _f: stop.set()) for number in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    return restore
