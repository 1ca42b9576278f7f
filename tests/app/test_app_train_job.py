"""The train job end to end: a worker trains a tiny model on the project's labels, the model becomes
current, its events are stored and streamed; cancelled or refused runs leave no model version."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from sqlalchemy import select

from instaseg.app.db.database import Database
from instaseg.app.db.schema import AnnotatedInstance, Image, ImageStatus, JobEvent, LabelClass, ModelVersion
from instaseg.app.jobs.train import split
from instaseg.app.jobs.worker import run_worker
from instaseg.core import masks
from tests.app.conftest import add_user, login

# A Mask R-CNN that trains a step on these 48x64 images in a fraction of a second.
TINY_TRAIN = {
    "preset": "small",
    "batch_size": 2,
    "model_kwargs": {
        "min_size": 64,
        "max_size": 64,
        "train_scales": [1.0],
        "box_detections_per_img": 10,
        "rpn_post_nms_top_n_test": 50,
    },
}


def label_images(db: Database, status: ImageStatus = ImageStatus.done) -> None:
    """One class, a box-shaped instance on each of the project's images, and the images marked ``status``."""
    with db.write() as session:
        blob = LabelClass(name="blob", color="#ff0000")
        session.add(blob)
        session.flush()
        for image in session.scalars(select(Image)):
            mask = np.zeros((image.height, image.width), bool)
            mask[8:30, 10:40] = True
            rle = masks.encode(mask)
            session.add(
                AnnotatedInstance(
                    image_id=image.id,
                    class_id=blob.id,
                    rle=rle,
                    polygon=None,
                    bbox=masks.bbox(rle),
                    area=masks.area(rle),
                )
            )
            image.status = status


def read_stream(client, url: str, **kwargs) -> list[dict]:
    """The server-sent events of ``url`` as dicts of their fields (``data`` parsed), up to the end of the stream."""
    received, fields = [], {}
    with client.stream("GET", url, **kwargs) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if fields:
                    received.append(fields)
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = json.loads(value) if name == "data" else value
    return received


def wait_for(condition, timeout_s: float = 60, what: str = "the condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def training_steps(db: Database, job_id: int) -> int:
    """The training iterations the job's stored events report so far."""
    with db.read() as session:
        rows = session.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.kind == "progress"))
        return max((row["done"] for row in rows if row["task"] == "train"), default=0)


def test_a_train_job_makes_the_current_model_and_streams_its_events(client, tmp_path):
    db, project = client.app.state.db, tmp_path / "project"
    label_images(db)
    job = client.post("/api/jobs", json={"kind": "train", "params": {"epochs": 2, **TINY_TRAIN}}).json()
    worker = threading.Thread(target=run_worker, args=(db, project), kwargs={"name": "w", "once": True})
    worker.start()
    streamed = read_stream(client, f"/api/jobs/{job['id']}/events")
    worker.join(timeout=120)

    *events, end = streamed
    assert end["event"] == "end" and end["data"]["status"] == "done", end
    assert [e["event"] for e in events] == [e["data"]["kind"] for e in events]
    assert (
        [int(e["id"]) for e in events] == [e["data"]["id"] for e in events] == sorted(e["data"]["id"] for e in events)
    )
    train_progress = [
        e["data"]["data"] for e in events if e["event"] == "progress" and e["data"]["data"]["task"] == "train"
    ]
    assert train_progress[0]["done"] == 0 and train_progress[-1]["finished"] and train_progress[-1]["done"] == 2
    validations = [
        e["data"]["data"] for e in events if e["event"] == "metrics" and e["data"]["data"]["task"] == "validation"
    ]
    assert len(validations) == 2 and "mask_mAP" in validations[0]["values"]
    assert any(e["event"] == "message" and "validation after" in e["data"]["data"]["text"] for e in events)

    finished = client.get(f"/api/jobs/{job['id']}").json()
    assert finished["progress"] == 1.0 and finished["error"] is None
    models = client.get("/api/models").json()
    assert len(models) == 1
    model = models[0]
    assert model["current"] and model["job_id"] == job["id"] and model["id"] == finished["result"]["model_version_id"]
    assert model["path"] == f"models/job-{job['id']}/best.pt" and (project / model["path"]).stat().st_size > 0
    assert model["architecture"] == "maskrcnn_resnet18_fpn" and model["train_config"]["epochs"] == 2
    assert model["metrics"]["train_images"] == 2 and model["metrics"]["val_images"] == 1
    assert model["metrics"]["mask_mAP"] == max(v["values"]["mask_mAP"] for v in validations)

    # The stored events, as the jobs page reads them, and from where a reconnecting client left off.
    stored = client.get(f"/api/jobs/{job['id']}/events", params={"stream": "false"}).json()
    assert [e["id"] for e in stored] == [e["data"]["id"] for e in events]
    middle = stored[len(stored) // 2]["id"]
    assert [e["id"] for e in client.get(f"/api/jobs/{job['id']}/events?stream=false&after={middle}").json()] == [
        e["id"] for e in stored if e["id"] > middle
    ]
    resumed = read_stream(client, f"/api/jobs/{job['id']}/events", headers={"Last-Event-ID": str(middle)})
    assert [e["data"]["id"] for e in resumed[:-1]] == [e["id"] for e in stored if e["id"] > middle]
    assert resumed[-1]["event"] == "end"
    metrics_only = client.get(f"/api/jobs/{job['id']}/events?stream=false&kind=metrics").json()
    assert metrics_only and {e["kind"] for e in metrics_only} == {"metrics"}
    bad = client.get(f"/api/jobs/{job['id']}/events", headers={"Last-Event-ID": "soon"})
    assert bad.status_code == 422 and bad.json()["field"] == "last-event-id"
    assert client.get("/api/jobs/999/events").json()["field"] == "job_id"

    # Another version made current by hand: the trained one stops being current.
    with db.write() as session:
        other = ModelVersion(name="older", architecture="maskrcnn_resnet18_fpn", path="models/old.pt")
        session.add(other)
        session.flush()
        other_id = other.id
    assert client.post(f"/api/models/{other_id}/current").json()["current"] is True
    assert [(m["id"], m["current"]) for m in client.get("/api/models").json()] == [
        (other_id, True),
        (model["id"], False),
    ]
    assert client.get(f"/api/models/{model['id']}").json()["current"] is False
    assert client.get("/api/models/999").json()["field"] == "model_id"
    assert client.post("/api/models/999/current").status_code == 404


def test_cancelling_a_running_training_stops_it_and_adds_no_model(client, tmp_path):
    db = client.app.state.db
    label_images(db)
    job = client.post("/api/jobs", json={"kind": "train", "params": {"epochs": 1000, **TINY_TRAIN}}).json()
    stop = threading.Event()
    worker = threading.Thread(target=run_worker, args=(db, tmp_path / "project"), kwargs={"name": "w", "stop": stop})
    worker.start()
    try:
        wait_for(lambda: training_steps(db, job["id"]) >= 1, what="the first training step")
        assert client.post(f"/api/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
        ended = wait_for(
            lambda: (j := client.get(f"/api/jobs/{job['id']}").json())["status"] != "running" and j,
            timeout_s=20,
            what="the job to stop",
        )
    finally:
        stop.set()
        worker.join(timeout=60)
    assert ended["status"] == "cancelled" and ended["finished_at"] is not None
    assert training_steps(db, job["id"]) < 1000
    assert client.get("/api/models").json() == []


def test_a_project_without_labelled_images_fails_the_job_clearly(client, tmp_path):
    db = client.app.state.db
    job = client.post("/api/jobs", json={"kind": "train", "params": {"epochs": 1, **TINY_TRAIN}}).json()
    run_worker(db, tmp_path / "project", name="w", once=True)
    failed = client.get(f"/api/jobs/{job['id']}").json()
    assert failed["status"] == "failed"
    assert failed["error"] == "no labelled images to train on (images of done or reviewed with instances, or checked)"
    # Labelled, but still "in progress": the default statuses leave them out.
    label_images(db, ImageStatus.in_progress)
    again = client.post("/api/jobs", json={"kind": "train", "params": {"epochs": 1, **TINY_TRAIN}}).json()
    run_worker(db, tmp_path / "project", name="w", once=True)
    assert "no labelled images" in client.get(f"/api/jobs/{again['id']}").json()["error"]
    assert client.get("/api/models").json() == []


def test_the_split_is_deterministic_and_never_empty():
    ids = list(range(1, 11))
    train, val = split(ids, 0.2, seed=3)
    assert (train, val) == split(list(reversed(ids)), 0.2, seed=3)
    assert len(val) == 2 and sorted(train + val) == ids
    assert split([4, 7], 0.2, seed=0)[1] in ([4], [7])
    assert split([4], 0.2, seed=0) == ([4], [])
    assert split(ids, 0.0, seed=0) == (ids, [])
    assert len(split(ids, 0.99, seed=0)[0]) == 1


def test_only_managers_change_the_current_model(secured_client):
    db = secured_client.app.state.db
    add_user(db, "ann", "annotator")
    with db.write() as session:
        version = ModelVersion(name="v", architecture="maskrcnn_resnet18_fpn", path="models/v.pt")
        session.add(version)
        session.flush()
        version_id = version.id
    annotator = login(secured_client, "ann")
    assert secured_client.get("/api/models", headers=annotator).json()[0]["current"] is False
    refused = secured_client.post(f"/api/models/{version_id}/current", headers=annotator)
    assert refused.status_code == 403
    assert secured_client.get(f"/api/models/{version_id}", headers=annotator).json()["current"] is False
