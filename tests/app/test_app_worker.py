"""Faults: workers killed mid-job (SIGKILL) leave their jobs failed or retried, never running for ever, and
the current model intact; a worker stopped with SIGTERM hands its job back and exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import select

from instaseg.app.db.database import Database
from instaseg.app.db.schema import Job, JobEvent, JobStatus, ModelVersion
from instaseg.app.jobs import queue
from instaseg.app.jobs.kinds import job_kind
from instaseg.core import events
from instaseg.engine.checkpoint import make_checkpoint, save_checkpoint
from instaseg.engine.config import TrainConfig
from instaseg.models import get_model
from tests.app.test_app_train_job import TINY_TRAIN, label_images, training_steps, wait_for

HERE = Path(__file__).parent


class StepsParams(BaseModel):
    steps: int = 30
    seconds: float = 0.1


@job_kind("test-steps", params=StepsParams, max_attempts=2)
def _steps(context) -> dict:
    for _ in events.track(range(context.params.steps), "steps"):
        time.sleep(context.params.seconds)
    return {"steps": context.params.steps}


def _start_worker(database_url: str, project: Path, log: Path, *options: str, test_kinds: bool) -> subprocess.Popen:
    """``instaseg worker`` as a process of its own; with ``test_kinds`` it also knows this module's test-steps."""
    if test_kinds:
        command = [sys.executable, "-c", "import test_app_worker; from instaseg.cli import main; main()"]
    else:
        command = [sys.executable, "-m", "instaseg"]
    command += ["worker", "--db", database_url, "--project", str(project), "--poll", "0.2", *options]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _make_current_model(db: Database, project: Path) -> Path:
    """A checkpoint of an untrained tiny model, recorded as the project's current model version."""
    config = TrainConfig(epochs=1, preset="small", model_kwargs=TINY_TRAIN["model_kwargs"])
    model = get_model(config.model, 1, preset="small", **config.model_kwargs)
    inference = {"model": config.model, "preset": "small", "kwargs": config.model_arguments(), "class_names": ["blob"]}
    path = save_checkpoint(
        project / "models" / "first" / "best.pt",
        make_checkpoint(config=inference, weights=model.state_dict(), train_config=config, train_state={}),
    )
    with db.write() as session:
        session.add(ModelVersion(name="first", architecture=config.model, path="models/first/best.pt", current=True))
    return path


def _job(db: Database, job_id: int) -> Job:
    with db.read() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _steps_done(db: Database, job_id: int) -> int:
    with db.read() as session:
        rows = session.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.kind == "progress"))
        return max((row["done"] for row in rows), default=0)


def _kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_killed_workers_leave_jobs_failed_or_retried_and_the_model_intact(client, database_url, tmp_path):
    db, project = client.app.state.db, tmp_path / "project"
    label_images(db)
    checkpoint = _make_current_model(db, project)
    first_model = checkpoint.read_bytes()
    with db.write() as session:
        # Submitted first, so the worker knowing both kinds takes it, and the plain one the training.
        retried = queue.submit(session, "test-steps", {}, None).id
        training = queue.submit(session, "train", {"epochs": 10000, **TINY_TRAIN}, None).id
    started: list[subprocess.Popen] = []
    try:
        plain = _start_worker(database_url, project, tmp_path / "plain.log", "--name", "plain", test_kinds=False)
        knowing = _start_worker(database_url, project, tmp_path / "knowing.log", "--name", "knowing", test_kinds=True)
        started += [plain, knowing]
        wait_for(lambda: _steps_done(db, retried) >= 1, what="the test-steps job to run")
        _kill(knowing)
        wait_for(lambda: training_steps(db, training) >= 1, timeout_s=90, what="training to make progress")
        _kill(plain)
        for job_id, worker in ((training, "plain"), (retried, "knowing")):
            job = _job(db, job_id)
            assert (job.status, job.worker, job.attempts) == (JobStatus.running, worker, 1)

        # A new worker finds both heartbeats stale: the training (one attempt) fails, the other runs again.
        rescuer = _start_worker(
            database_url, project, tmp_path / "rescuer.log", "--name", "rescuer", "--stale-after", "2", test_kinds=True
        )
        started.append(rescuer)
        wait_for(lambda: _job(db, retried).status == JobStatus.done, what="the retried job to finish")
        failed = _job(db, training)
        assert failed.status == JobStatus.failed and failed.finished_at is not None
        assert failed.error == "the worker (plain) stopped during the job"
        done = _job(db, retried)
        assert (done.attempts, done.worker, done.result) == (2, "rescuer", {"steps": 30})
        with db.read() as session:
            versions = session.scalars(select(ModelVersion)).all()
        assert [(v.name, v.current) for v in versions] == [("first", True)]
        assert checkpoint.read_bytes() == first_model

        # SIGTERM: the worker stops at the job's next event, queues it again and exits cleanly.
        with db.write() as session:
            handed_back = queue.submit(session, "test-steps", {"steps": 500}, None).id
        wait_for(lambda: _steps_done(db, handed_back) >= 1, what="the rescuer to run the new job")
        rescuer.send_signal(signal.SIGTERM)
        assert rescuer.wait(timeout=30) == 0, (tmp_path / "rescuer.log").read_text()
        queued = _job(db, handed_back)
        assert (queued.status, queued.worker, queued.attempts) == (JobStatus.queued, None, 1)
        assert "the worker was stopped during the job" in (queued.message or "")
        log = (tmp_path / "rescuer.log").read_text()
        assert f"job {retried} (test-steps) started, attempt 2 of 2" in log
        assert f"job {retried} (test-steps) done" in log and f"job {handed_back} (test-steps) handed back" in log
    finally:
        for process in started:
            if process.poll() is None:
                _kill(process)
