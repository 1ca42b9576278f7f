"""The ``review`` job: the label review with the project's current model, its findings stored as suggestions.

The project holds five images of coloured discs, labelled correctly but for one injected error of
each kind the review knows; the colour model (see ``test_app_prelabel``) sees every disc as it is.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from instaseg.app.db.schema import DecisionStatus, ImageStatus, Job, Suggestion
from instaseg.app.edits import fresh_image
from instaseg.app.server import create_app
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from tests.app.test_app_prelabel import class_ids, disc, disc_project, instances, iou, label, mask_of, run_job

H, W = 48, 64
RED, GREEN, SMALL_RED, UNLABELLED = disc(12, 14, 7), disc(32, 44, 8), disc(34, 14, 6), disc(12, 50, 7)
SCENE = [(RED, "red"), (GREEN, "green"), (SMALL_RED, "red")]
CORRECT = SCENE
SCENES = {
    "a.png": SCENE,
    "b.png": [(RED, "red"), (GREEN, "green"), (UNLABELLED, "green")],
    "c.png": SCENE,
    "d.png": SCENE,
    "e.png": SCENE,
}


@pytest.fixture
def project(project_settings, tmp_path):
    """The project and the ids of its injected errors, by the kind of finding each should give."""
    db = disc_project(project_settings, SCENES, tmp_path)
    injected = {
        "wrong_class": label(db, 1, [(RED, "green"), (GREEN, "green"), (SMALL_RED, "red")])[0],
        "missing_label": None,
        "extra_label": label(db, 3, [*CORRECT, (disc(40, 56, 5), "green")])[3],
        "bad_mask": label(db, 5, [(RED, "red"), (np.roll(GREEN, 5, axis=1), "green"), (SMALL_RED, "red")])[1],
    }
    label(db, 2, [(RED, "red"), (GREEN, "green")])
    duplicated = label(db, 4, [*CORRECT, (GREEN, "green")])
    injected["duplicate"] = duplicated[3]
    with db.write() as session:
        for image_id in range(1, 6):
            fresh_image(session, image_id).status = ImageStatus.done
    yield db, injected, duplicated[1]
    db.close()


def suggestions(db, **where) -> list[Suggestion]:
    with db.read() as session:
        query = select(Suggestion).filter_by(**where).order_by(Suggestion.score.desc(), Suggestion.id)
        return list(session.scalars(query))


def injected_findings(db, injected) -> dict[str, Suggestion]:
    """The open suggestion about each injected error (the best-scored one of its kind and instance)."""
    found = {}
    for kind, instance_id in injected.items():
        matching = [s for s in suggestions(db, kind=kind, decision=DecisionStatus.open) if s.instance_id == instance_id]
        assert matching, f"no {kind} suggestion about instance {instance_id}"
        found[kind] = matching[0]
    return found


def test_the_review_finds_every_injected_error_and_accepting_each_applies_its_fix(project_settings, project):
    db, injected, kept_copy = project
    ids = class_ids(db)
    with pytest.warns(UserWarning, match="not trained on these images"):
        job_id, result = run_job(project_settings, db, "review", {})
    stored = suggestions(db)
    assert result["images"] == 5 and sum(result["suggestions"].values()) == len(stored)
    assert {s.kind for s in stored} == set(injected) and all(s.job_id == job_id for s in stored)
    found = injected_findings(db, injected)
    assert found["wrong_class"].detail["suggested_class_id"] == ids["red"]
    assert found["duplicate"].detail["other_instance_id"] == kept_copy
    missing = found["missing_label"]
    assert missing.image_id == 2 and missing.detail["suggested_class_id"] == ids["green"]
    assert iou(mask_ops.decode(missing.detail["mask"], H, W), UNLABELLED) > 0.9
    assert iou(mask_ops.decode(found["bad_mask"].detail["mask"], H, W), GREEN) > 0.9
    assert all(found[k].detail["instance_revision"] == 1 for k in injected if k != "missing_label")

    with TestClient(create_app(project_settings, db)) as client:
        for suggestion in found.values():
            response = client.post(
                f"/api/suggestions/{suggestion.id}/decision", json={"revision": 1, "decision": "accepted"}
            )
            assert response.status_code == 200, response.text
    by_id = {i.id: i for image_id in range(1, 6) for i in instances(db, image_id)}
    assert by_id[injected["wrong_class"]].class_id == ids["red"]
    assert injected["extra_label"] not in by_id and injected["duplicate"] not in by_id and kept_copy in by_id
    assert iou(mask_of(by_id[injected["bad_mask"]]), GREEN) > 0.9
    added = [i for i in instances(db, 2) if iou(mask_of(i), UNLABELLED) > 0.9]
    assert len(added) == 1 and added[0].provenance == "model" and added[0].class_id == ids["green"]


def test_a_new_review_replaces_the_open_suggestions_and_keeps_the_decided_ones(project_settings, project):
    db, injected, _ = project
    with pytest.warns(UserWarning):
        first_job, _ = run_job(project_settings, db, "review", {})
    first = injected_findings(db, injected)
    with TestClient(create_app(project_settings, db)) as client:
        for kind, decision in (("wrong_class", "rejected"), ("duplicate", "accepted")):
            response = client.post(
                f"/api/suggestions/{first[kind].id}/decision", json={"revision": 1, "decision": decision}
            )
            assert response.status_code == 200, response.text

    with pytest.warns(UserWarning):
        second_job, result = run_job(project_settings, db, "review", {})
    open_now = suggestions(db, decision=DecisionStatus.open)
    assert open_now and len(open_now) == sum(result["suggestions"].values())
    assert all(s.job_id == second_job for s in open_now) and not suggestions(db, job_id=first_job, decision="open")
    decided = {s.id: s.decision for s in suggestions(db) if s.decision != DecisionStatus.open}
    assert decided == {first["wrong_class"].id: "rejected", first["duplicate"].id: "accepted"}
    # A rejected finding stays rejected while its instance is unchanged; the accepted copy is gone.
    assert not [s for s in open_now if s.kind in ("wrong_class", "duplicate")]
    assert {s.kind for s in open_now} >= {"missing_label", "extra_label", "bad_mask"}


def test_the_review_refuses_a_project_with_nothing_labelled(project_settings, project):
    db, _, _ = project
    with pytest.raises(InstasegError, match="no labelled images to review"):
        run_job(project_settings, db, "review", {"statuses": ["reviewed"]})
    with db.read() as session:
        assert session.scalars(select(Suggestion)).all() == [] and session.scalars(select(Job)).all()
