"""The job queue through the API and its workers: submit, validate, list, cancel, claim each job exactly once."""

from __future__ import annotations

import threading
import time
from typing import Literal

import pytest
from pydantic import BaseModel
from sqlalchemy import select

from instaseg.app.db.schema import Job, JobStatus
from instaseg.app.jobs import queue
from instaseg.app.jobs.kinds import job_kind
from instaseg.app.jobs.worker import run_worker
from instaseg.core.errors import InstasegError
from tests.app.conftest import add_user, login

RUNS: list[int] = []
_runs_lock = threading.Lock()


class SleepParams(BaseModel):
    seconds: float = 0.0
    fail: Literal["instaseg", "bug"] | None = None


@job_kind("test-sleep", params=SleepParams)
def _sleep(context) -> dict:
    with _runs_lock:
        RUNS.append(context.job_id)
    time.sleep(context.params.seconds)
    if context.params.fail == "instaseg":
        raise InstasegError("no such thing", file="a.png")
    if context.params.fail == "bug":
        raise RuntimeError("oops\nsecond line")
    return {"slept": context.params.seconds}


def _submit(client, kind: str, params: dict, headers: dict | None = None):
    return client.post("/api/jobs", json={"kind": kind, "params": params}, headers=headers or {})


def _refused(response, status: int, field: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["field"] == field, response.json()
    return response.json()["detail"]


def test_submit_validates_params_and_writes_nothing_when_refused(client):
    assert "train" in _refused(_submit(client, "nope", {}), 422, "kind")
    _refused(_submit(client, "train", {"epochs": 0}), 422, "params.epochs")
    _refused(_submit(client, "train", {"epochs": 1, "batch_size": "four"}), 422, "params.batch_size")
    assert "maskrcnn_resnet18_fpn" in _refused(
        _submit(client, "train", {"epochs": 1, "model": "x"}), 422, "params.model"
    )
    assert "preset" in _refused(_submit(client, "train", {"epochs": 1, "preset": "huge"}), 422, "params")
    assert "training length" in _refused(_submit(client, "train", {}), 422, "params")
    _refused(_submit(client, "train", {"epochs": 1, "statuses": ["finished"]}), 422, "params.statuses.0")
    _refused(_submit(client, "train", {"epochs": 1, "learning_rate": 1}), 422, "params.learning_rate")
    _refused(client.post("/api/jobs", json={"params": {}}), 422, "kind")
    assert client.get("/api/jobs").json() == []

    submitted = _submit(client, "train", {"epochs": 2, "statuses": "all"})
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()
    assert job["status"] == "queued" and job["kind"] == "train" and job["max_attempts"] == 1
    # Defaults are filled in, so the job shows exactly what it will do.
    assert job["params"]["val_fraction"] == 0.2 and job["params"]["epochs"] == 2
    assert job["params"]["statuses"] == ["new", "in_progress", "done", "reviewed"]
    assert job["created_at"].endswith(("Z", "+00:00"))


def test_list_filters_newest_first_and_cancel(client):
    first = _submit(client, "test-sleep", {}).json()
    second = _submit(client, "test-sleep", {"seconds": 1}).json()
    third = _submit(client, "train", {"epochs": 1}).json()
    assert [j["id"] for j in client.get("/api/jobs").json()] == [third["id"], second["id"], first["id"]]
    assert [j["id"] for j in client.get("/api/jobs", params={"kind": "test-sleep"}).json()] == [
        second["id"],
        first["id"],
    ]
    assert [j["id"] for j in client.get("/api/jobs", params={"limit": 1}).json()] == [third["id"]]
    _refused(client.get("/api/jobs", params={"status": "sleeping"}), 422, "status")
    _refused(client.get("/api/jobs/999"), 404, "job_id")
    kinds = {kind["name"]: kind for kind in client.get("/api/jobs/kinds").json()}
    assert kinds["train"]["max_attempts"] == 1 and "val_fraction" in kinds["train"]["params_schema"]["properties"]
    assert client.get(f"/api/jobs/{first['id']}").json()["id"] == first["id"]

    # A queued job is cancelled at once ...
    cancelled = client.post(f"/api/jobs/{first['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert [j["id"] for j in client.get("/api/jobs", params={"status": "cancelled"}).json()] == [first["id"]]
    _refused(client.post(f"/api/jobs/{first['id']}/cancel"), 409, "job_id")
    _refused(client.post("/api/jobs/999/cancel"), 404, "job_id")
    # ... a running one is asked to stop, and its worker stops it.
    db = client.app.state.db
    claimed = queue.claim(db, "test-worker", kinds=["test-sleep"])
    assert claimed is not None and claimed.id == second["id"] and claimed.attempts == 1
    asked = client.post(f"/api/jobs/{second['id']}/cancel").json()
    assert asked["status"] == "running" and asked["cancel_requested"] is True and asked["worker"] == "test-worker"


def test_roles_and_logins_guard_the_jobs(secured_client):
    db = secured_client.app.state.db
    add_user(db, "ann", "annotator")
    add_user(db, "boss", "admin")
    _refused(_submit(secured_client, "test-sleep", {}), 401, "authorization")
    annotator, admin = login(secured_client, "ann"), login(secured_client, "boss")
    _refused(_submit(secured_client, "test-sleep", {}, annotator), 403, None)
    job = _submit(secured_client, "test-sleep", {}, admin).json()
    assert job["created_by"] is not None
    assert secured_client.get("/api/jobs", headers=annotator).json()[0]["id"] == job["id"]
    _refused(secured_client.post(f"/api/jobs/{job['id']}/cancel", headers=annotator), 403, None)
    assert secured_client.get(f"/api/jobs/{job['id']}", headers=annotator).json()["status"] == "queued"


def test_four_workers_run_each_of_thirty_jobs_exactly_once(client, tmp_path):
    db = client.app.state.db
    with db.write() as session:
        ids = [queue.submit(session, "test-sleep", {"seconds": 0.02}, None).id for _ in range(30)]
    RUNS.clear()
    workers = [
        threading.Thread(target=run_worker, args=(db, tmp_path / "project"), kwargs={"name": f"w{k}", "once": True})
        for k in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(RUNS) == ids
    with db.read() as session:
        jobs = session.scalars(select(Job).where(Job.id.in_(ids))).all()
        assert {job.status for job in jobs} == {JobStatus.done}
        assert {job.attempts for job in jobs} == {1}
        assert all(job.result == {"slept": 0.02} and job.progress == 1.0 for job in jobs)
        assert {job.worker for job in jobs} <= {"w0", "w1", "w2", "w3"}


def test_a_failing_job_fails_alone_with_one_line(client, tmp_path):
    db = client.app.state.db
    with db.write() as session:
        ours = queue.submit(session, "test-sleep", {"fail": "instaseg"}, None).id
        bug = queue.submit(session, "test-sleep", {"fail": "bug"}, None).id
        fine = queue.submit(session, "test-sleep", {}, None).id
    assert run_worker(db, tmp_path / "project", name="w", once=True) == 3
    jobs = {job["id"]: job for job in client.get("/api/jobs").json()}
    assert jobs[ours]["status"] == "failed" and jobs[ours]["error"] == "a.png: no such thing"
    assert jobs[bug]["status"] == "failed" and jobs[bug]["error"] == "unexpected RuntimeError: oops"
    assert jobs[fine]["status"] == "done" and jobs[fine]["error"] is None


def test_finish_refuses_a_job_another_worker_took_over(client):
    db = client.app.state.db
    with db.write() as session:
        job_id = queue.submit(session, "test-sleep", {}, None).id
    assert queue.claim(db, "old") is not None
    assert not queue.finish(db, job_id, result={}, worker_name="other")
    assert queue.finish(db, job_id, result={"ok": 1}, worker_name="old")
    assert not queue.finish(db, job_id, error="late")
    assert client.get(f"/api/jobs/{job_id}").json()["result"] == {"ok": 1}


def test_a_worker_refuses_a_stale_limit_its_heartbeat_cannot_meet(client, tmp_path):
    with pytest.raises(InstasegError, match="--stale-after"):
        run_worker(client.app.state.db, tmp_path / "project", name="w", stale_after_s=0.5, once=True)
