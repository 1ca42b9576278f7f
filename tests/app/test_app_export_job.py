"""The ``export`` job and ``GET /api/exports/{job_id}``: the file is what ``transfer.export_project`` writes."""

from __future__ import annotations

import io as bytes_io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from instaseg.app.db.schema import Job, JobStatus
from instaseg.app.edits import NewInstance, RleMask, change_instances, create_class, fresh_image
from instaseg.app.jobs.worker import run_worker
from instaseg.app.transfer import export_project
from instaseg.core import masks as mask_ops
from tests.app.conftest import add_user, login

H, W = 48, 64


def label_project(db) -> None:
    """Two classes; image 1 with two instances (a polygon, a mask), image 2 with one, image 3 with none."""
    mask = np.zeros((H, W), bool)
    mask[20:40, 30:60] = True
    with db.write() as session:
        cat = create_class(session, user_id=None, name="cat").id
        dog = create_class(session, user_id=None, name="dog").id
        change_instances(
            session,
            fresh_image(session, 1),
            user_id=None,
            create=[
                NewInstance(class_id=cat, polygon=[[5.0, 5.0, 20.0, 5.0, 12.0, 18.0]]),
                NewInstance(class_id=dog, mask=RleMask(**mask_ops.encode(mask))),
            ],
        )
        change_instances(
            session,
            fresh_image(session, 2),
            user_id=None,
            create=[NewInstance(class_id=dog, mask=RleMask(**mask_ops.encode(mask)))],
        )


def run_export(client, params: dict, headers: dict | None = None) -> dict:
    """Submit an export through the API and let a worker run it; the finished job."""
    response = client.post("/api/jobs", json={"kind": "export", "params": params}, headers=headers or {})
    assert response.status_code == 201, response.text
    db = client.app.state.db
    assert run_worker(db, client.app.state.settings.project_dir, name="test", once=True) == 1
    job = client.get(f"/api/jobs/{response.json()['id']}", headers=headers or {}).json()
    assert job["status"] == "done", job["error"]
    return job


def test_a_coco_export_is_export_projects_file_and_is_served(client, tmp_path):
    db = client.app.state.db
    label_project(db)
    job = run_export(client, {})
    project_dir = Path(client.app.state.settings.project_dir)
    assert job["result"] == {"path": f"exports/job-{job['id']}.json", "format": "coco", "images": 3, "instances": 3}
    written = project_dir / job["result"]["path"]
    reference = export_project(db, tmp_path / "reference.json", "coco")
    ours, theirs = json.loads(written.read_text()), json.loads(reference.read_text())
    # The image root is recorded relative to where each file lies.
    roots = [
        (path.parent / coco.pop("info")["image_root"]).resolve()
        for path, coco in ((written, ours), (reference, theirs))
    ]
    assert ours == theirs and roots[0] == roots[1]

    response = client.get(f"/api/exports/{job['id']}")
    assert response.status_code == 200 and response.content == written.read_bytes()
    assert response.headers["content-type"].startswith("application/json")
    assert f"export-{job['id']}.json" in response.headers["content-disposition"]


def test_an_export_of_some_images_holds_only_theirs(client):
    label_project(client.app.state.db)
    job = run_export(client, {"image_ids": [2]})
    assert job["result"]["images"] == 1 and job["result"]["instances"] == 1
    coco = json.loads(client.get(f"/api/exports/{job['id']}").content)
    assert [image["id"] for image in coco["images"]] == [2]
    assert {a["image_id"] for a in coco["annotations"]} == {2}


def test_a_folder_format_is_served_zipped(client, tmp_path):
    db = client.app.state.db
    label_project(db)
    job = run_export(client, {"format": "labelme"})
    assert job["result"]["path"] == f"exports/job-{job['id']}.zip"
    reference = export_project(db, tmp_path / "reference", "labelme")
    expected = {p.relative_to(reference).as_posix(): p.read_bytes() for p in reference.rglob("*") if p.is_file()}
    response = client.get(f"/api/exports/{job['id']}")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(bytes_io.BytesIO(response.content)) as archive:
        served = {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}
    assert served == expected and expected


def test_bad_export_params_are_refused_when_submitted(client):
    for params, field in (({"format": "nope"}, "params.format"), ({"colour": "red"}, "params.colour")):
        response = client.post("/api/jobs", json={"kind": "export", "params": params})
        assert response.status_code == 422 and response.json()["field"] == field, response.text
    with client.app.state.db.read() as session:
        assert session.scalars(select(Job)).all() == []


def test_unknown_image_ids_fail_the_job(client):
    response = client.post("/api/jobs", json={"kind": "export", "params": {"image_ids": [1, 42]}})
    run_worker(client.app.state.db, client.app.state.settings.project_dir, name="test", once=True)
    job = client.get(f"/api/jobs/{response.json()['id']}").json()
    assert job["status"] == "failed" and "42" in job["error"] and "image_ids" in job["error"]


def test_only_finished_export_jobs_are_served(client):
    db = client.app.state.db
    queued = client.post("/api/jobs", json={"kind": "export", "params": {}}).json()["id"]
    with db.write() as session:
        other = Job(kind="prelabel", status=JobStatus.done, result={"path": "project.db"})
        session.add(other)
        session.flush()
        other_id = other.id
    for job_id in (queued, other_id, 999):
        response = client.get(f"/api/exports/{job_id}")
        assert response.status_code == 404 and response.json()["field"] == "job_id", response.text
        assert str(job_id) in response.json()["detail"]


@pytest.mark.parametrize("role, status", [("annotator", 403), ("reviewer", 403), ("admin", 200)])
def test_downloading_an_export_needs_the_manage_right(secured_client, role, status):
    db = secured_client.app.state.db
    add_user(db, "boss", "admin")
    add_user(db, "someone", role)
    job = run_export(secured_client, {}, login(secured_client, "boss"))
    response = secured_client.get(f"/api/exports/{job['id']}", headers=login(secured_client, "someone"))
    assert response.status_code == status, response.text
