"""The review queue's API: listing suggestions, and a reviewer's decision, which applies an accepted fix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from instaseg.app.auth import LOCAL_USER
from instaseg.app.db.schema import AnnotatedInstance, History, Image, Suggestion, User
from instaseg.app.edits import NewInstance, change_instances, create_class, fresh_image
from instaseg.app.jobs.review import SuggestionDetail
from instaseg.core import masks as mask_ops
from tests.app.conftest import add_user, login

H, W = 48, 64
SQUARE = [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]


def box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def setup_classes(db) -> dict[str, int]:
    with db.write() as session:
        return {name: create_class(session, user_id=None, name=name).id for name in ("cat", "dog")}


def add_instance(db, image_id: int, class_id: int, **shape: Any) -> int:
    new = NewInstance(class_id=class_id, **(shape or {"polygon": SQUARE}))
    with db.write() as session:
        image = fresh_image(session, image_id)
        before = {i.id for i in image.instances}
        return next(i.id for i in change_instances(session, image, user_id=None, create=[new]) if i.id not in before)


def suggest(db, image_id: int, kind: str, instance_id: int | None = None, score: float = 0.5, **detail: Any) -> int:
    """A suggestion as a review job stores it; the instance's revision is the current one unless given."""
    with db.write() as session:
        revision = session.get(AnnotatedInstance, instance_id).revision if instance_id is not None else None
        fields: dict[str, Any] = {
            "instance_revision": revision,
            "class_name": None,
            "suggested_class": None,
            "suggested_class_id": None,
            "mask": None,
            "bbox": None,
            "confidence": None,
            "other_instance_id": None,
            "model_version_id": 1,
            "fix": kind,
            "evidence": {},
            **detail,
        }
        suggestion = Suggestion(
            image_id=image_id,
            instance_id=instance_id,
            kind=kind,
            score=score,
            detail=SuggestionDetail(**fields).model_dump(mode="json"),
            job_id=None,
        )
        session.add(suggestion)
        session.flush()
        return suggestion.id


def proposed(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_ops.encode(mask)
    return {"mask": rle, "bbox": mask_ops.bbox(rle)}


def decide(client, suggestion_id: int, decision: str = "accepted", revision: int = 1, headers=None):
    return client.post(
        f"/api/suggestions/{suggestion_id}/decision",
        json={"revision": revision, "decision": decision},
        headers=headers or {},
    )


def written(db) -> tuple[int, int, list[tuple[Any, ...]]]:
    """What a refused or rejected decision must leave alone: history rows, image revisions, instances."""
    with db.read() as session:
        history = session.scalar(select(func.count(History.id))) or 0
        revisions = sum(session.scalars(select(Image.revision)))
        rows = session.execute(
            select(AnnotatedInstance.id, AnnotatedInstance.class_id, AnnotatedInstance.revision).order_by(
                AnnotatedInstance.id
            )
        ).all()
        return history, revisions, [tuple(row) for row in rows]


def local_user_id(db) -> int:
    with db.read() as session:
        return session.scalar(select(User.id).where(User.name == LOCAL_USER))


def test_the_queue_lists_open_suggestions_best_first_with_their_image_and_instance(client):
    db = client.app.state.db
    classes = setup_classes(db)
    cat = add_instance(db, 1, classes["cat"])
    dog = add_instance(db, 2, classes["dog"])
    low = suggest(db, 1, "wrong_class", cat, 0.3, suggested_class="dog", suggested_class_id=classes["dog"])
    high = suggest(db, 2, "extra_label", dog, 0.9)
    missing = suggest(
        db, 3, "missing_label", None, 0.6, suggested_class_id=classes["cat"], **proposed(box_mask(1, 1, 9, 9))
    )
    rejected = suggest(db, 2, "duplicate", dog, 0.95, other_instance_id=cat)
    assert decide(client, rejected, "rejected").status_code == 200

    page = client.get("/api/suggestions").json()
    assert page["total"] == 3 and [s["id"] for s in page["items"]] == [high, missing, low]
    first = page["items"][0]
    assert first["file_name"] == "image_001.png" and first["kind"] == "extra_label" and first["decision"] == "open"
    current = client.get("/api/images/2/instances").json()["instances"][0]
    assert first["instance"] == current and first["detail"]["instance_revision"] == current["revision"]
    assert page["items"][1]["instance"] is None and page["items"][1]["detail"]["mask"]["size"] == [H, W]

    assert [s["id"] for s in client.get("/api/suggestions?kind=wrong_class").json()["items"]] == [low]
    assert [s["id"] for s in client.get("/api/suggestions?image_id=2&decision=all").json()["items"]] == [rejected, high]
    assert [s["id"] for s in client.get("/api/suggestions?decision=rejected").json()["items"]] == [rejected]
    paged = client.get("/api/suggestions?limit=1&offset=1").json()
    assert paged["total"] == 3 and [s["id"] for s in paged["items"]] == [missing]
    assert client.get(f"/api/suggestions/{low}").json()["detail"]["suggested_class"] == "dog"

    for query, field in (("kind=typo", "kind"), ("decision=maybe", "decision"), ("limit=0", "limit")):
        response = client.get(f"/api/suggestions?{query}")
        assert response.status_code == 422 and response.json()["field"] == field, response.text
    response = client.get("/api/suggestions/999")
    assert response.status_code == 404 and response.json()["field"] == "suggestion_id"


def test_accepting_a_wrong_class_relabels_with_history_and_the_change_can_be_reverted(client):
    db = client.app.state.db
    classes = setup_classes(db)
    cat = add_instance(db, 1, classes["cat"])
    suggestion = suggest(db, 1, "wrong_class", cat, suggested_class="dog", suggested_class_id=classes["dog"])

    response = decide(client, suggestion)
    assert response.status_code == 200, response.text
    body = response.json()
    decided = body["suggestion"]
    assert decided["decision"] == "accepted" and decided["revision"] == 2 and decided["decided_at"] is not None
    assert decided["decided_by"] == local_user_id(db)
    assert decided["instance"]["class_id"] == classes["dog"] and decided["instance"]["revision"] == 2
    assert body["change"]["instances"] == [decided["instance"]]

    rows = client.get(f"/api/history?change_set={body['change']['change_set']}").json()["items"]
    assert [(r["action"], r["entity_id"], r["user_id"]) for r in rows] == [("update", cat, local_user_id(db))]
    assert rows[0]["before"]["class_id"] == classes["cat"] and rows[0]["after"]["class_id"] == classes["dog"]
    image_revision = body["change"]["image"]["revision"]
    reverted = client.post(f"/api/history/{rows[0]['id']}/revert", json={"revision": image_revision})
    assert reverted.status_code == 200, reverted.text
    assert client.get("/api/images/1/instances").json()["instances"][0]["class_id"] == classes["cat"]


def test_accepting_each_other_kind_applies_its_fix(client):
    db = client.app.state.db
    classes = setup_classes(db)
    extra = add_instance(db, 1, classes["cat"])
    original = add_instance(db, 2, classes["dog"])
    copy = add_instance(db, 2, classes["dog"])
    drawn = add_instance(db, 3, classes["cat"])
    better = box_mask(12, 12, 34, 30)
    new_object = box_mask(40, 30, 60, 44)
    fixes = {
        "extra_label": suggest(db, 1, "extra_label", extra),
        "duplicate": suggest(db, 2, "duplicate", copy, other_instance_id=original),
        "bad_mask": suggest(db, 3, "bad_mask", drawn, suggested_class_id=classes["cat"], **proposed(better)),
        "missing_label": suggest(
            db, 3, "missing_label", None, suggested_class_id=classes["dog"], confidence=0.8, **proposed(new_object)
        ),
    }
    for kind, suggestion in fixes.items():
        response = decide(client, suggestion)
        assert response.status_code == 200, (kind, response.text)
        assert response.json()["change"]["change_set"] is not None

    assert client.get("/api/images/1/instances").json()["instances"] == []
    assert [i["id"] for i in client.get("/api/images/2/instances").json()["instances"]] == [original]
    redrawn, added = client.get("/api/images/3/instances").json()["instances"]
    assert redrawn["id"] == drawn and redrawn["polygon"] is None and redrawn["provenance"] == "human"
    assert np.array_equal(mask_ops.decode(redrawn["mask"], H, W), better)
    assert added["class_id"] == classes["dog"] and added["provenance"] == "model"
    assert added["model_version_id"] == 1 and added["score"] == 0.8
    assert np.array_equal(mask_ops.decode(added["mask"], H, W), new_object)
    with db.read() as session:
        actions = session.execute(select(History.entity_id, History.action).where(History.user_id.is_not(None))).all()
    assert {(e, a) for e, a in actions} == {
        (extra, "delete"),
        (copy, "delete"),
        (drawn, "update"),
        (added["id"], "create"),
    }


def test_rejecting_changes_nothing_but_the_decision(client):
    db = client.app.state.db
    classes = setup_classes(db)
    cat = add_instance(db, 1, classes["cat"])
    suggestion = suggest(db, 1, "extra_label", cat)
    before = written(db)
    response = decide(client, suggestion, "rejected")
    assert response.status_code == 200, response.text
    assert response.json()["change"] is None and response.json()["suggestion"]["decision"] == "rejected"
    assert written(db) == before


def test_stale_and_decided_suggestions_are_refused_and_nothing_is_written(client):
    db = client.app.state.db
    classes = setup_classes(db)
    cat = add_instance(db, 1, classes["cat"])
    suggestion = suggest(db, 1, "extra_label", cat)
    before = written(db)
    stale = decide(client, suggestion, revision=7)
    assert stale.status_code == 409 and stale.json()["field"] == "revision"
    assert stale.json()["current"]["revision"] == 1 and stale.json()["current"]["decision"] == "open"
    assert written(db) == before

    assert decide(client, suggestion, "rejected").status_code == 200
    again = decide(client, suggestion, revision=2)
    assert again.status_code == 409 and again.json()["field"] == "decision" and "rejected" in again.json()["detail"]
    assert written(db) == before

    bad = client.post(f"/api/suggestions/{suggestion}/decision", json={"revision": 2, "decision": "maybe"})
    assert bad.status_code == 422 and bad.json()["field"] == "decision"


def test_a_fix_for_an_instance_changed_or_deleted_since_the_review_is_refused(client):
    db = client.app.state.db
    classes = setup_classes(db)
    changed = add_instance(db, 1, classes["cat"])
    deleted = add_instance(db, 2, classes["cat"])
    relabel = suggest(db, 1, "wrong_class", changed, suggested_class_id=classes["dog"])
    remove = suggest(db, 2, "extra_label", deleted)
    with db.write() as session:
        change_instances(session, fresh_image(session, 1), user_id=None, update={changed: {"iscrowd": True}})
        change_instances(session, fresh_image(session, 2), user_id=None, delete=[deleted])
    before = written(db)

    for suggestion, word in ((relabel, "changed"), (remove, "deleted")):
        response = decide(client, suggestion)
        assert response.status_code == 409 and response.json()["field"] == "instance", response.text
        assert word in response.json()["detail"] and "instances" in response.json()["current"]
        assert client.get(f"/api/suggestions/{suggestion}").json()["decision"] == "open"
    assert written(db) == before


@pytest.mark.parametrize("role, allowed", [("annotator", False), ("reviewer", True)])
def test_only_reviewers_decide(secured_client, role, allowed):
    db = secured_client.app.state.db
    classes = setup_classes(db)
    cat = add_instance(db, 1, classes["cat"])
    suggestion = suggest(db, 1, "extra_label", cat)
    add_user(db, "someone", role)
    assert secured_client.get("/api/suggestions").status_code == 401
    headers = login(secured_client, "someone")
    assert secured_client.get("/api/suggestions", headers=headers).json()["total"] == 1
    response = decide(secured_client, suggestion, "rejected", headers=headers)
    assert response.status_code == (200 if allowed else 403), response.text


def test_a_missing_label_whose_class_is_gone_is_refused(client):
    db = client.app.state.db
    classes = setup_classes(db)
    suggestion = suggest(
        db, 1, "missing_label", None, suggested_class_id=classes["dog"], **proposed(box_mask(1, 1, 9, 9))
    )
    assert client.delete(f"/api/classes/{classes['dog']}", params={"revision": 1}).status_code == 200
    response = decide(client, suggestion)
    assert response.status_code == 409 and response.json()["field"] == "class_id", response.text
    assert client.get("/api/images/1/instances").json()["instances"] == []
