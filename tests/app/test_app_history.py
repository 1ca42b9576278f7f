"""The history: every change listed with who made it, reverting one as a new change, and the history
alone replaying to what is stored."""

from __future__ import annotations

import random

from sqlalchemy import select

from instaseg.app import edits
from instaseg.app.db.schema import History
from tests.app.conftest import add_user, login
from tests.app.test_app_instances import add_class, as_input, database_rows, rectangle, saved


def replayed_equals_stored(db, image_id: int) -> bool:
    with db.read() as session:
        rows = session.scalars(select(History).where(History.image_id == image_id)).all()
        stored = {i.id: edits.instance_json(i) for i in edits.image_instances(session, image_id)}
    return edits.replay(rows) == stored


def revert(client, history_id: int, revision: int):
    return client.post(f"/api/history/{history_id}/revert", json={"revision": revision})


def test_an_images_history_is_newest_first_paginated_and_names_the_user(client):
    cell = add_class(client)
    first = saved(client, 1, 1, [{"class_id": cell, "polygon": [rectangle(1, 1, 9, 9)]}])
    (instance,) = first["instances"]
    second = saved(client, 1, 2, [as_input(instance, polygon=[rectangle(2, 2, 9, 9)])])
    client.patch("/api/images/1", json={"revision": 3, "status": "done"})
    page = client.get("/api/images/1/history").json()
    assert page["total"] == 3
    assert [(r["entity"], r["action"]) for r in page["items"]] == [
        ("image", "update"),
        ("instance", "update"),
        ("instance", "create"),
    ]
    assert [r["change_set"] for r in page["items"][1:]] == [second["change_set"], first["change_set"]]
    assert {r["user_name"] for r in page["items"]} == {"local"}
    update = page["items"][1]
    assert update["before"]["polygon"] == [rectangle(1, 1, 9, 9)] and update["after"]["polygon"] == [
        rectangle(2, 2, 9, 9)
    ]
    assert update["after"] == second["instances"][0]
    assert client.get("/api/images/1/history", params={"limit": 1, "offset": 1}).json()["items"] == [update]
    assert client.get("/api/images/2/history").json() == {"items": [], "total": 0}
    assert client.get("/api/images/9/history").status_code == 404
    by_record = client.get("/api/history", params={"entity": "instance", "entity_id": instance["id"]}).json()
    assert [r["action"] for r in by_record["items"]] == ["update", "create"]
    classes = client.get("/api/history", params={"entity": "class"}).json()
    assert classes["total"] == 1 and classes["items"][0]["after"]["name"] == "cell"
    assert client.get("/api/history", params={"entity": "user"}).json()["field"] == "entity"
    assert client.get("/api/history", params={"change_set": first["change_set"]}).json()["total"] == 1


def test_reverting_an_update_a_create_and_a_delete(client):
    db = client.app.state.db
    cell, nucleus = add_class(client, "cell"), add_class(client, "nucleus")
    first = saved(
        client,
        1,
        1,
        [
            {"class_id": cell, "polygon": [rectangle(1, 1, 9, 9)]},
            {"class_id": cell, "polygon": [rectangle(20, 1, 29, 9)]},
        ],
    )
    kept, dropped = first["instances"]
    second = saved(client, 1, 2, [as_input(kept, class_id=nucleus, polygon=[rectangle(2, 2, 9, 9)])])
    rows = {(r["action"], r["entity_id"]): r for r in client.get("/api/images/1/history").json()["items"]}

    before = database_rows(db)
    stale = revert(client, rows[("update", kept["id"])]["id"], 2)
    assert (
        stale.status_code == 409
        and stale.json()["field"] == "revision"
        and stale.json()["current"]["image"]["revision"] == 3
    )
    assert revert(client, 9999, 3).json()["field"] == "history_id"
    assert database_rows(db) == before

    undone = revert(client, rows[("update", kept["id"])]["id"], 3)
    assert undone.status_code == 200, undone.text
    assert [(r["action"], r["reverts"]) for r in undone.json()["rows"]] == [
        ("update", rows[("update", kept["id"])]["id"])
    ]
    now = client.get("/api/images/1/instances").json()
    assert [i["class_id"] for i in now["instances"]] == [cell]
    assert now["instances"][0]["polygon"] == kept["polygon"] and now["instances"][0]["revision"] == 3

    back = revert(client, rows[("delete", dropped["id"])]["id"], now["image"]["revision"])
    assert back.status_code == 200, back.text
    assert back.json()["entity_id"] == dropped["id"], "the deleted instance's id was free, so it came back with it"
    restored = client.get("/api/images/1/instances").json()
    assert {k: v for k, v in restored["instances"][1].items() if k not in ("created_at", "updated_at")} == {
        k: v for k, v in dropped.items() if k not in ("created_at", "updated_at")
    }

    created = next(
        r
        for r in client.get("/api/images/1/history").json()["items"]
        if r["action"] == "create" and r["entity_id"] == kept["id"]
    )
    gone = revert(client, created["id"], restored["image"]["revision"])
    assert gone.status_code == 200 and gone.json()["entity_id"] is None
    assert [i["id"] for i in client.get("/api/images/1/instances").json()["instances"]] == [dropped["id"]]
    again = revert(client, created["id"], restored["image"]["revision"] + 1)
    assert again.status_code == 409 and again.json()["field"] == "history_id"
    assert second["change_set"] and replayed_equals_stored(db, 1)


def test_reverting_a_status_change_and_class_changes(client):
    cell = add_class(client, "cell")
    client.patch("/api/images/2", json={"revision": 1, "status": "done"})
    (status_row,) = client.get("/api/images/2/history").json()["items"]
    assert revert(client, status_row["id"], 2).json()["entity_id"] == 2
    assert client.get("/api/images/2").json()["status"] == "new"

    client.patch(f"/api/classes/{cell}", json={"revision": 1, "name": "cytoplasm"})
    rename = client.get("/api/history", params={"entity": "class", "entity_id": cell}).json()["items"][0]
    assert revert(client, rename["id"], 1).status_code == 409
    assert revert(client, rename["id"], 2).status_code == 200
    assert client.get("/api/classes").json()[0]["name"] == "cell"

    deleted = client.delete(f"/api/classes/{cell}", params={"revision": 3}).json()
    delete_row = client.get("/api/history", params={"change_set": deleted["change_set"]}).json()["items"][0]
    recreated = revert(client, delete_row["id"], 3)
    assert recreated.status_code == 200, recreated.text
    assert client.get("/api/classes").json()[0] | {"revision": 0} == {
        "id": cell,
        "name": "cell",
        "color": delete_row["before"]["color"],
        "hotkey": None,
        "position": 0,
        "supercategory": None,
        "revision": 0,
    }


def test_a_revert_needs_the_permission_of_the_change(secured_client):
    db = secured_client.app.state.db
    add_user(db, "boss", "admin")
    add_user(db, "ann", "annotator")
    boss, ann = login(secured_client, "boss"), login(secured_client, "ann")
    cell = secured_client.post("/api/classes", json={"name": "cell"}, headers=boss).json()["id"]
    (row,) = secured_client.get("/api/history", headers=boss).json()["items"]
    before = database_rows(db)
    secured_client.cookies.clear()
    assert secured_client.post(f"/api/history/{row['id']}/revert", json={"revision": 1}, headers=ann).status_code == 403
    assert secured_client.post(f"/api/history/{row['id']}/revert", json={"revision": 1}).status_code == 401
    assert database_rows(db) == before
    assert (
        secured_client.post(f"/api/history/{row['id']}/revert", json={"revision": 1}, headers=boss).status_code == 200
    )
    assert secured_client.get("/api/classes", headers=boss).json() == []
    assert cell


def test_the_history_replays_to_the_stored_state_after_random_edits_and_reverts(client):
    db = client.app.state.db
    rng = random.Random(7)
    classes = [add_class(client, "a"), add_class(client, "b")]
    reverted = 0
    for _step in range(40):
        state = client.get("/api/images/1/instances").json()
        revision, instances = state["image"]["revision"], state["instances"]
        action = rng.choice(["save", "save", "patch", "delete", "revert"])
        if action == "save":
            sent = [{"id": i["id"], "class_id": rng.choice(classes)} for i in instances if rng.random() < 0.7]
            for _ in range(rng.randint(0, 2)):
                x, y = rng.randint(0, 50), rng.randint(0, 35)
                sent.append(
                    {
                        "class_id": rng.choice(classes),
                        "polygon": [rectangle(x, y, x + rng.randint(2, 13), y + rng.randint(2, 12))],
                    }
                )
            saved(client, 1, revision, sent)
        elif action == "patch" and instances:
            target = rng.choice(instances)
            x = rng.randint(0, 40)
            response = client.patch(
                f"/api/instances/{target['id']}",
                json={"revision": target["revision"], "polygon": [rectangle(x, 1, x + 5, 9)]},
            )
            assert response.status_code == 200, response.text
        elif action == "delete" and instances:
            target = rng.choice(instances)
            assert (
                client.delete(f"/api/instances/{target['id']}", params={"revision": target["revision"]}).status_code
                == 200
            )
        elif action == "revert":
            rows = client.get("/api/images/1/history").json()["items"]
            if rows:
                response = revert(client, rng.choice(rows)["id"], revision)
                assert response.status_code in (200, 409), response.text
                reverted += response.status_code == 200
        assert replayed_equals_stored(db, 1)
    assert reverted >= 3
