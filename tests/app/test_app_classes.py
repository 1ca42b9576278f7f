"""The classes through the API: palette colours, unique names and hotkeys, revisions, deleting one
that is in use, and the history of it all."""

from __future__ import annotations

from sqlalchemy import select

from instaseg.app.db.schema import History
from instaseg.viz import instance_color
from tests.app.conftest import add_user, login
from tests.app.test_app_instances import add_class, database_rows, rectangle, saved


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def test_new_classes_take_the_palettes_colours_and_come_in_position_order(client):
    first = client.post("/api/classes", json={"name": "cell", "hotkey": "1"}).json()
    second = client.post(
        "/api/classes", json={"name": "nucleus", "color": "#00FF00", "supercategory": "organelle"}
    ).json()
    early = client.post("/api/classes", json={"name": "debris", "position": -1}).json()
    assert first == {
        "id": first["id"],
        "name": "cell",
        "color": _hex(instance_color(0)),
        "hotkey": "1",
        "position": 0,
        "supercategory": None,
        "revision": 1,
    }
    assert second["color"] == "#00FF00" and second["position"] == 1 and second["supercategory"] == "organelle"
    assert early["color"] == _hex(instance_color(2))
    assert [c["name"] for c in client.get("/api/classes").json()] == ["debris", "cell", "nucleus"]


def test_bad_or_duplicate_classes_are_refused_naming_the_field(client):
    db = client.app.state.db
    add_class(client, "cell", hotkey="c")
    before = database_rows(db)
    for body, field in [
        ({"name": "cell"}, "name"),
        ({"name": "other", "hotkey": "c"}, "hotkey"),
        ({"name": "other", "color": "red"}, "color"),
        ({"name": "other", "color": "#12345"}, "color"),
        ({"name": ""}, "name"),
        ({"color": "#123456"}, "name"),
        ({"name": "other", "shape": "round"}, "shape"),
    ]:
        response = client.post("/api/classes", json=body)
        assert (response.status_code, response.json()["field"]) == (422, field), (body, response.text)
    assert database_rows(db) == before


def test_patching_a_class_needs_its_revision_and_keeps_names_unique(client):
    db = client.app.state.db
    cell, nucleus = add_class(client, "cell", hotkey="c"), add_class(client, "nucleus")
    renamed = client.patch(f"/api/classes/{cell}", json={"revision": 1, "name": "cytoplasm", "hotkey": None})
    assert renamed.status_code == 200, renamed.text
    assert (
        renamed.json()["name"] == "cytoplasm" and renamed.json()["hotkey"] is None and renamed.json()["revision"] == 2
    )
    before = database_rows(db)
    stale = client.patch(f"/api/classes/{cell}", json={"revision": 1, "color": "#000000"})
    assert stale.status_code == 409 and stale.json()["field"] == "revision" and stale.json()["current"]["revision"] == 2
    taken = client.patch(f"/api/classes/{nucleus}", json={"revision": 1, "name": "cytoplasm"})
    assert taken.status_code == 422 and taken.json()["field"] == "name"
    assert client.patch(f"/api/classes/{nucleus}", json={"revision": 1, "name": None}).json()["field"] == "name"
    assert client.patch(f"/api/classes/{nucleus}", json={"name": "x"}).json()["field"] == "revision"
    assert client.patch("/api/classes/99", json={"revision": 1, "name": "x"}).status_code == 404
    assert database_rows(db) == before
    with db.read() as session:
        rows = session.scalars(select(History).where(History.entity == "class", History.entity_id == cell)).all()
    assert [r.action.value for r in rows] == ["create", "update"]
    assert rows[1].before["name"] == "cell" and rows[1].after["name"] == "cytoplasm"


def test_a_class_in_use_is_deleted_only_by_moving_its_instances(client):
    db = client.app.state.db
    cell, nucleus = add_class(client, "cell"), add_class(client, "nucleus")
    on_one = saved(client, 1, 1, [{"class_id": cell, "polygon": [rectangle(1, 1, 9, 9)]}])
    on_two = saved(
        client,
        2,
        1,
        [
            {"class_id": cell, "polygon": [rectangle(1, 1, 9, 9)]},
            {"class_id": nucleus, "polygon": [rectangle(20, 1, 29, 9)]},
        ],
    )
    before = database_rows(db)
    in_use = client.delete(f"/api/classes/{cell}", params={"revision": 1})
    assert in_use.status_code == 409 and in_use.json()["field"] == "class_id"
    assert client.delete(f"/api/classes/{cell}", params={"revision": 3}).json()["field"] == "revision"
    assert (
        client.delete(f"/api/classes/{cell}", params={"revision": 1, "reassign_to": cell}).json()["field"]
        == "reassign_to"
    )
    assert (
        client.delete(f"/api/classes/{cell}", params={"revision": 1, "reassign_to": 77}).json()["field"]
        == "reassign_to"
    )
    assert database_rows(db) == before
    moved = client.delete(f"/api/classes/{cell}", params={"revision": 1, "reassign_to": nucleus})
    assert moved.status_code == 200, moved.text
    assert [c["name"] for c in client.get("/api/classes").json()] == ["nucleus"]
    one = client.get("/api/images/1/instances").json()
    two = client.get("/api/images/2/instances").json()
    assert [i["class_id"] for i in one["instances"] + two["instances"]] == [nucleus] * 3
    assert one["image"]["revision"] == on_one["image"]["revision"] + 1
    assert two["image"]["revision"] == on_two["image"]["revision"] + 1
    with db.read() as session:
        rows = session.scalars(select(History).where(History.change_set == moved.json()["change_set"])).all()
    assert sorted((r.entity, r.action.value) for r in rows) == [
        ("class", "delete"),
        ("instance", "update"),
        ("instance", "update"),
    ]
    unused = client.post("/api/classes", json={"name": "spare"}).json()
    assert client.delete(f"/api/classes/{unused['id']}", params={"revision": 1}).status_code == 200


def test_only_managers_change_classes(secured_client):
    db = secured_client.app.state.db
    add_user(db, "boss", "admin")
    add_user(db, "ann", "annotator")
    boss, ann = login(secured_client, "boss"), login(secured_client, "ann")
    cell = secured_client.post("/api/classes", json={"name": "cell"}, headers=boss).json()
    before = database_rows(db)
    assert secured_client.post("/api/classes", json={"name": "x"}, headers=ann).status_code == 403
    assert (
        secured_client.patch(f"/api/classes/{cell['id']}", json={"revision": 1, "name": "y"}, headers=ann).status_code
        == 403
    )
    assert secured_client.delete(f"/api/classes/{cell['id']}", params={"revision": 1}, headers=ann).status_code == 403
    assert database_rows(db) == before
    assert [c["name"] for c in secured_client.get("/api/classes", headers=ann).json()] == ["cell"]
