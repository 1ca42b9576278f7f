"""The ``prelabel`` job: a model's instances written with history, human ones left alone, earlier ones replaced.

The model is the tiny test architecture with hand-set weights that find every coloured disc on a
black image and call red discs "red" and green ones "green", so what it must find is known exactly.
The helpers here also serve the review job's tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import select

import tests.tiny_architecture as tiny_architecture
from instaseg.app.auth import ensure_local_user
from instaseg.app.db.database import Database
from instaseg.app.db.schema import (
    AnnotatedInstance,
    History,
    HistoryAction,
    ImageStatus,
    Job,
    JobEvent,
    JobStatus,
    LabelClass,
    ModelVersion,
    Provenance,
)
from instaseg.app.edits import NewInstance, RleMask, change_instances, create_class, fresh_image
from instaseg.app.errors import ApiError
from instaseg.app.jobs import queue
from instaseg.app.jobs.catalog import JOB_KINDS
from instaseg.app.jobs.kinds import JobContext
from instaseg.app.jobs.worker import run_worker
from instaseg.app.server import image_root, open_project
from instaseg.app.settings import AppSettings
from instaseg.app.transfer import scan_images
from instaseg.core import io
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.engine.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint

H, W = 48, 64
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0)}
MODEL_PATH = "models/colours.pt"


def disc(cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def colour_model(path: Path, class_names: tuple[str, ...] = ("red", "green")) -> None:
    """A checkpoint of the tiny architecture that finds bright discs, red ones as class 0, green as 1."""
    model = tiny_architecture.tiny_test_segmenter(num_classes=len(class_names), **tiny_architecture.PRESET)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        features, logits = model.features, model.logits
        # Channel 0 is on wherever any colour is; 1 and 2 where red, respectively green, wins.
        features.weight[0, :, 1, 1], features.bias[0] = 1.0, 1.3
        features.weight[1, 0, 1, 1], features.weight[1, 1, 1, 1] = 1.0, -1.0
        features.weight[2, 1, 1, 1], features.weight[2, 0, 1, 1] = 1.0, -1.0
        logits.weight[0, 0], logits.bias[0] = 20.0, -5.0
        logits.weight[1, 1], logits.weight[2, 2] = 10.0, 10.0
    config = {
        "model": "tiny_test_segmenter",
        "kwargs": dict(tiny_architecture.PRESET),
        "class_names": list(class_names),
    }
    save_checkpoint(
        path,
        {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": config, "model": model.state_dict()},
    )


def paint(objects: list[tuple[np.ndarray, str]]) -> np.ndarray:
    pixels = np.zeros((H, W, 3), np.uint8)
    for mask, colour in objects:
        pixels[mask] = COLOURS[colour]
    return pixels


def disc_project(settings: AppSettings, images: dict[str, list[tuple[np.ndarray, str]]], tmp_path: Path) -> Database:
    """A project of the painted ``images`` (name -> discs and their colours), ids in name order, with the
    classes red and green and the colour model as its current model version."""
    root = tmp_path / "images"
    root.mkdir()
    for name, objects in images.items():
        io.write_image(root / name, paint(objects))
    db = open_project(settings, image_root=root)
    scan_images(db, root)
    with db.write() as session:
        for name in COLOURS:
            create_class(session, user_id=None, name=name)
    colour_model(Path(settings.project_dir) / MODEL_PATH)
    with db.write() as session:
        session.add(ModelVersion(name="colours", architecture="tiny_test_segmenter", path=MODEL_PATH, current=True))
    return db


def class_ids(db: Database) -> dict[str, int]:
    with db.read() as session:
        return dict(session.execute(select(LabelClass.name, LabelClass.id)).all())


def label(db: Database, image_id: int, objects: list[tuple[np.ndarray, str]], **fields: Any) -> list[int]:
    """Instances of ``image_id`` with the given masks and class names; their ids."""
    ids = class_ids(db)
    new = [NewInstance(class_id=ids[name], mask=RleMask(**mask_ops.encode(mask)), **fields) for mask, name in objects]
    with db.write() as session:
        before = {i.id for i in fresh_image(session, image_id).instances}
        after = change_instances(session, fresh_image(session, image_id), user_id=None, create=new)
        return [i.id for i in after if i.id not in before]


def run_job(settings: AppSettings, db: Database, kind: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Run a job of ``kind`` in this process as the local user (without a worker); its id and result."""
    user_id = ensure_local_user(db)
    with db.write() as session:
        job = Job(kind=kind, params=params, status=JobStatus.running, created_by=user_id)
        session.add(job)
        session.flush()
        job_id = job.id
    context = JobContext(
        db, job_id, JOB_KINDS[kind].params.model_validate(params), user_id, Path(settings.project_dir), image_root(db)
    )
    return job_id, JOB_KINDS[kind].run(context)


def instances(db: Database, image_id: int) -> list[AnnotatedInstance]:
    with db.read() as session:
        return list(
            session.scalars(
                select(AnnotatedInstance).where(AnnotatedInstance.image_id == image_id).order_by(AnnotatedInstance.id)
            )
        )


def mask_of(instance: AnnotatedInstance) -> np.ndarray:
    return mask_ops.decode(instance.rle, H, W)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


RED, GREEN, OTHER = disc(12, 14, 7), disc(32, 44, 8), disc(34, 14, 6)
SCENES = {"a.png": [(RED, "red"), (GREEN, "green")], "b.png": [(OTHER, "green")]}


@pytest.fixture
def project(project_settings, tmp_path):
    db = disc_project(project_settings, SCENES, tmp_path)
    yield db
    db.close()


def test_prelabel_writes_the_models_instances_with_history_and_leaves_human_ones_alone(project_settings, project):
    ids = class_ids(project)
    human = label(project, 1, [(disc(40, 58, 5), "red")])
    job_id, result = run_job(project_settings, project, "prelabel", {})
    assert result["images"] == 2 and result["instances"] == 3 and result["unmatched_classes"] == []
    with project.read() as session:
        version_id = session.scalar(select(ModelVersion.id))
    found = [i for i in instances(project, 1) if i.provenance == Provenance.model]
    assert [i.id for i in instances(project, 1) if i.provenance == Provenance.human] == human
    assert sorted(i.class_id for i in found) == sorted([ids["red"], ids["green"]])
    for instance in found:
        truth = RED if instance.class_id == ids["red"] else GREEN
        assert iou(mask_of(instance), truth) > 0.9
        assert instance.model_version_id == version_id and instance.score is not None and instance.score >= 0.5
        assert instance.author_id == ensure_local_user(project) and instance.revision == 1
    [other] = instances(project, 2)
    assert other.class_id == ids["green"] and iou(mask_of(other), OTHER) > 0.9
    with project.read() as session:
        rows = session.scalars(select(History).where(History.entity == "instance", History.action == "create")).all()
        made = {row.entity_id: row for row in rows}
    for instance in [*found, other]:
        row = made[instance.id]
        assert row.after is not None and row.after["provenance"] == "model" and row.after["score"] == instance.score
        assert row.user_id == ensure_local_user(project)


def test_a_second_run_replaces_only_untouched_model_instances(project_settings, project):
    ids = class_ids(project)
    run_job(project_settings, project, "prelabel", {})
    first = {i.id for i in instances(project, 1)}
    corrected, untouched = instances(project, 1)
    other_class = ids["green"] if corrected.class_id == ids["red"] else ids["red"]
    with project.write() as session:
        change_instances(
            session, fresh_image(session, 1), user_id=None, update={corrected.id: {"class_id": other_class}}
        )
    assert next(i for i in instances(project, 1) if i.id == corrected.id).provenance == Provenance.model

    _, result = run_job(project_settings, project, "prelabel", {})
    assert result["replaced"] == 2  # the untouched one of a.png and the one of b.png
    now = instances(project, 1)
    assert corrected.id in {i.id for i in now} and untouched.id not in {i.id for i in now}
    assert len(now) == 3 and len(first & {i.id for i in now}) == 1
    with project.read() as session:
        deleted = session.scalar(
            select(History).where(History.entity_id == untouched.id, History.action == HistoryAction.delete)
        )
    assert deleted is not None and deleted.before is not None and deleted.before["provenance"] == "model"

    _, kept = run_job(project_settings, project, "prelabel", {"replace": False})
    assert kept["replaced"] == 0 and len(instances(project, 1)) == 5


def test_prelabel_takes_the_chosen_images_and_statuses(project_settings, project):
    with project.write() as session:
        fresh_image(session, 2).status = ImageStatus.done
    _, result = run_job(project_settings, project, "prelabel", {})
    assert result["images"] == 1 and instances(project, 2) == []
    _, result = run_job(project_settings, project, "prelabel", {"image_ids": [2], "statuses": ["done"]})
    assert result == {**result, "images": 1, "instances": 1} and len(instances(project, 2)) == 1
    with pytest.raises(ApiError) as refused:
        run_job(project_settings, project, "prelabel", {"image_ids": [2, 99]})
    assert refused.value.field == "image_ids" and "99" in refused.value.detail


def test_detections_of_a_class_the_project_lacks_are_left_out(project_settings, project):
    ids = class_ids(project)
    with project.write() as session:
        session.get(LabelClass, ids["green"]).name = "lime"
    with pytest.warns(UserWarning, match="no class 'green'"):
        _, result = run_job(project_settings, project, "prelabel", {})
    assert result["unmatched_classes"] == ["green"] and result["instances"] == 1
    assert [i.class_id for i in instances(project, 1)] == [ids["red"]]


def test_without_a_current_model_the_job_fails(project_settings, project):
    with project.write() as session:
        session.scalars(select(ModelVersion)).one().current = False
    with pytest.raises(InstasegError, match="no trained model yet: run a train job"):
        run_job(project_settings, project, "prelabel", {})
    assert instances(project, 1) == []


def test_the_worker_runs_it_and_stores_progress_per_image(project_settings, project):
    with project.write() as session:
        job_id = queue.submit(session, "prelabel", {"score_threshold": 0.9}, ensure_local_user(project)).id
    assert run_worker(project, project_settings.project_dir, name="test", once=True) == 1
    with project.read() as session:
        job = session.get(Job, job_id)
        progress = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "progress")).all()
    assert job is not None and job.status == JobStatus.done, job.error if job else None
    assert job.result is not None and job.result["instances"] == 3
    steps = [(e.data["done"], e.data["total"]) for e in progress if e.data["task"] == "prelabel"]
    assert steps[0] == (0, 2) and steps[-1] == (2, 2)
