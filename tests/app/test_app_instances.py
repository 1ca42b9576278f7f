"""An image's instances through the API: shapes stored as drawn, whole-image saves, single-instance edits,
and every refusal leaving the database exactly as it was."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pytest
from sqlalchemy import select

from instaseg.app import edits
from instaseg.app.db.database import Database
from instaseg.app.db.schema import Base, History, Image
from instaseg.core import masks as mask_ops
from tests.app.conftest import add_user, login

HEIGHT, WIDTH = 48, 64  # the conftest images


def database_rows(db: Database) -> dict[str, list[str]]:
    """Every row of every table, comparable before and after a request."""
    with db.read() as session:
        return {
            table.name: sorted(repr(tuple(row)) for row in session.execute(table.select()))
            for table in Base.metadata.sorted_tables
        }


def add_class(client, name: str = "cell", **fields) -> int:
    response = client.post("/api/classes", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def rectangle(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def boxes_mask(*boxes: tuple[int, int, int, int], xor: bool = True) -> np.ndarray:
    """The pixels of integer rectangles (x0, y0, x1, y1), drawn by slicing: pixel (x, y) is in when
    x0 <= x < x1 and y0 <= y < y1, and rings combine even-odd."""
    mask = np.zeros((HEIGHT, WIDTH), bool)
    for x0, y0, x1, y1 in boxes:
        box = np.zeros_like(mask)
        box[y0:y1, x0:x1] = True
        mask = mask ^ box if xor else mask | box
    return mask


def as_input(instance: dict, **changes) -> dict:
    """An InstanceOut as the InstanceIn that keeps it (its shape as drawn), with ``changes``."""
    shape = {"polygon": instance["polygon"]} if instance["polygon"] is not None else {"mask": instance["mask"]}
    return {
        "id": instance["id"],
        "revision": instance["revision"],
        "class_id": instance["class_id"],
        **shape,
        **changes,
    }


def save(client, image_id: int, revision: int, instances: list[dict]):
    return client.put(f"/api/images/{image_id}/instances", json={"revision": revision, "instances": instances})


def saved(client, image_id: int, revision: int, instances: list[dict]) -> dict:
    response = save(client, image_id, revision, instances)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_polygon_with_a_hole_and_a_second_part_is_stored_as_drawn_and_rasterised_even_odd(client):
    cell = add_class(client)
    rings = [rectangle(4, 4, 30, 30), rectangle(10, 10, 20, 20), rectangle(40, 5, 60, 40)]
    body = saved(client, 1, 1, [{"class_id": cell, "polygon": rings}])
    (instance,) = body["instances"]
    assert instance["polygon"] == rings
    expected = boxes_mask((4, 4, 30, 30), (10, 10, 20, 20), (40, 5, 60, 40))
    stored = mask_ops.decode(instance["mask"], HEIGHT, WIDTH)
    assert instance["mask"]["size"] == [HEIGHT, WIDTH]
    assert np.array_equal(stored, expected)
    assert instance["area"] == expected.sum() == 26 * 26 - 10 * 10 + 20 * 35
    assert instance["bbox"] == [4.0, 4.0, 56.0, 36.0]
    assert body["image"]["revision"] == 2 and body["image"]["instance_count"] == 1
    assert client.get("/api/images/1/instances").json()["instances"] == body["instances"]


def test_a_triangle_covers_about_its_area(client):
    import shapely

    cell = add_class(client)
    triangle = [3.5, 2.0, 60.0, 10.25, 20.0, 45.0]
    (instance,) = saved(client, 1, 1, [{"class_id": cell, "polygon": [triangle]}])["instances"]
    exact = shapely.Polygon(np.reshape(triangle, (-1, 2))).area
    perimeter = shapely.Polygon(np.reshape(triangle, (-1, 2))).length
    assert abs(instance["area"] - exact) < perimeter / 2


@pytest.mark.parametrize("compressed", [True, False])
def test_a_mask_is_stored_as_compressed_rle_of_the_same_pixels(client, compressed):
    cell = add_class(client)
    pixels = np.zeros((HEIGHT, WIDTH), bool)
    pixels[5:9, 3:50] = True
    pixels[30:44, 20:22] = True
    rle = mask_ops.encode(pixels)
    if not compressed:
        flat = pixels.flatten(order="F").astype(int)
        changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
        rle = {"size": [HEIGHT, WIDTH], "counts": np.diff(np.concatenate([[0], changes])).tolist()}
    (instance,) = saved(client, 2, 1, [{"class_id": cell, "mask": rle, "iscrowd": True}])["instances"]
    assert isinstance(instance["mask"]["counts"], str) and instance["polygon"] is None
    assert np.array_equal(mask_ops.decode(instance["mask"], HEIGHT, WIDTH), pixels)
    assert instance["iscrowd"] is True and instance["area"] == pixels.sum()


def test_a_whole_image_save_keeps_updates_creates_and_deletes_and_leaves_unchanged_ones_alone(client):
    db = client.app.state.db
    cell, nucleus = add_class(client, "cell"), add_class(client, "nucleus")
    first = saved(
        client,
        1,
        1,
        [
            {"class_id": cell, "polygon": [rectangle(1, 1, 10, 10)]},
            {"class_id": cell, "polygon": [rectangle(20, 1, 30, 10)]},
            {"class_id": cell, "polygon": [rectangle(40, 1, 50, 10)]},
        ],
    )
    keep, change, drop = first["instances"]
    second = saved(
        client,
        1,
        first["image"]["revision"],
        [
            {"id": keep["id"], "class_id": cell, "polygon": keep["polygon"]},
            {"id": change["id"], "revision": change["revision"], "class_id": nucleus, "polygon": change["polygon"]},
            {"class_id": nucleus, "polygon": [rectangle(1, 30, 10, 40)]},
        ],
    )
    assert second["image"]["revision"] == first["image"]["revision"] + 1
    by_id = {i["id"]: i for i in second["instances"]}
    assert set(by_id) == {keep["id"], change["id"], max(by_id)} and drop["id"] not in by_id
    assert by_id[keep["id"]] == keep, "an unchanged instance is not rewritten"
    assert by_id[change["id"]]["class_id"] == nucleus and by_id[change["id"]]["revision"] == 2
    with db.read() as session:
        rows = session.scalars(select(History).where(History.change_set == second["change_set"])).all()
    assert sorted((r.action.value, r.entity_id) for r in rows) == sorted(
        [("update", change["id"]), ("delete", drop["id"]), ("create", max(by_id))]
    )
    # Saving what is stored changes nothing: no new revision, no history.
    again = saved(
        client,
        1,
        second["image"]["revision"],
        [{"id": i["id"], "class_id": i["class_id"]} for i in second["instances"]],
    )
    assert again["change_set"] is None and again["image"]["revision"] == second["image"]["revision"]
    assert again["instances"] == second["instances"]


def test_an_instance_sent_with_a_mask_equal_to_the_stored_one_is_not_rewritten(client):
    cell = add_class(client)
    (instance,) = saved(client, 1, 1, [{"class_id": cell, "mask": mask_ops.encode(boxes_mask((2, 2, 9, 9)))}])[
        "instances"
    ]
    again = saved(client, 1, 2, [{"id": instance["id"], "class_id": cell, "mask": instance["mask"]}])
    assert again["change_set"] is None and again["instances"] == [instance]


def test_a_stale_save_gets_409_with_the_current_state_and_changes_nothing(client):
    cell = add_class(client)
    current = saved(client, 1, 1, [{"class_id": cell, "polygon": [rectangle(1, 1, 10, 10)]}])
    before = database_rows(client.app.state.db)
    stale = save(client, 1, 1, [])
    assert stale.status_code == 409
    body = stale.json()
    assert body["field"] == "revision"
    assert body["current"]["image"] == current["image"] and body["current"]["instances"] == current["instances"]
    assert database_rows(client.app.state.db) == before


def _refusals(cell: int, other_image_instance: int, instance: dict) -> list[tuple[object, int, str]]:
    """(request body, status, field) of saves of image 1 at revision 2 that must be refused."""
    square = [rectangle(1, 1, 10, 10)]
    bowtie = [[1, 1, 20, 20, 20, 1, 1, 20]]
    return [
        ({"revision": 2, "instances": [{"class_id": 999, "polygon": square}]}, 422, "instances.0.class_id"),
        (
            {"revision": 2, "instances": [{"class_id": cell, "polygon": [rectangle(1, 1, 70, 10)]}]},
            422,
            "instances.0.polygon.0",
        ),
        (
            {"revision": 2, "instances": [{"class_id": cell, "polygon": [[-1, 1, 10, 1, 10, 10]]}]},
            422,
            "instances.0.polygon.0",
        ),
        ({"revision": 2, "instances": [{"class_id": cell, "polygon": bowtie}]}, 422, "instances.0.polygon.0"),
        ({"revision": 2, "instances": [{"class_id": cell, "polygon": [[1, 1, 5, 5]]}]}, 422, "instances.0.polygon.0"),
        ({"revision": 2, "instances": [{"class_id": cell, "polygon": []}]}, 422, "instances.0.polygon"),
        (
            {
                "revision": 2,
                "instances": [{"class_id": cell, "mask": mask_ops.encode(np.ones((HEIGHT, WIDTH + 1), bool))}],
            },
            422,
            "instances.0.mask",
        ),
        (
            {"revision": 2, "instances": [{"class_id": cell, "mask": {"size": [HEIGHT, WIDTH], "counts": [5, 3]}}]},
            422,
            "instances.0.mask",
        ),
        (
            {
                "revision": 2,
                "instances": [{"class_id": cell, "mask": mask_ops.encode(np.zeros((HEIGHT, WIDTH), bool))}],
            },
            422,
            "instances.0.mask",
        ),
        ({"revision": 2, "instances": [{"class_id": cell}]}, 422, "instances.0"),
        (
            {"revision": 2, "instances": [{"class_id": cell, "polygon": square, "mask": instance["mask"]}]},
            422,
            "instances.0",
        ),
        (
            {"revision": 2, "instances": [{"class_id": cell, "polygon": [[1, 1, "x", 1, 10, 10]]}]},
            422,
            "instances.0.polygon.0.2",
        ),
        (
            {"revision": 2, "instances": [{"class_id": cell, "polygon": square, "colour": "red"}]},
            422,
            "instances.0.colour",
        ),
        (
            {"revision": 2, "instances": [{"class_id": cell, "polygon": square, "provenance": "guess"}]},
            422,
            "instances.0.provenance",
        ),
        ({"revision": 2, "instances": [{"id": other_image_instance, "class_id": cell}]}, 404, "instances.0"),
        ({"revision": 2, "instances": [{"id": 12345, "class_id": cell}]}, 404, "instances.0"),
        ({"revision": 2, "instances": [instance | {"revision": 7}]}, 409, "instances.0.revision"),
        ({"revision": 2, "instances": [{"id": instance["id"], "class_id": 999}]}, 422, "instances.0.class_id"),
        (
            {
                "revision": 2,
                "instances": [{"id": instance["id"], "class_id": cell}, {"id": instance["id"], "class_id": cell}],
            },
            422,
            "instances.1",
        ),
        ({"revision": "two", "instances": []}, 422, "revision"),
        ({"instances": []}, 422, "revision"),
        ({"revision": 2}, 422, "instances"),
        ([1, 2], 422, "body"),
    ]


def test_every_bad_save_is_refused_naming_the_field_and_writes_nothing(client):
    db = client.app.state.db
    cell = add_class(client)
    (other,) = saved(client, 2, 1, [{"class_id": cell, "polygon": [rectangle(1, 1, 10, 10)]}])["instances"]
    (instance,) = saved(client, 1, 1, [{"class_id": cell, "polygon": [rectangle(1, 1, 10, 10)]}])["instances"]
    instance = {k: instance[k] for k in ("id", "revision", "class_id", "mask")}
    before = database_rows(db)
    for body, status, field in _refusals(cell, other["id"], instance):
        response = client.put("/api/images/1/instances", json=body)
        assert (response.status_code, response.json().get("field")) == (status, field), (body, response.text)
        assert response.json()["detail"]
        assert database_rows(db) == before, body
    for raw in (b'{"revision": 2, "instances": [', b"not json", b""):
        response = client.put("/api/images/1/instances", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422 and response.json()["detail"], raw
        assert database_rows(db) == before
    assert save(client, 99, 1, []).status_code == 404
    assert save(client, 99, 1, []).json()["field"] == "image_id"
    assert database_rows(db) == before


def test_adding_one_instance_needs_no_revision_and_raises_the_images(client):
    cell = add_class(client)
    response = client.post("/api/images/3/instances", json={"class_id": cell, "polygon": [rectangle(2, 2, 6, 6)]})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["instance"]["area"] == 16 and body["image"]["revision"] == 2 and body["change_set"]
    before = database_rows(client.app.state.db)
    refused = client.post("/api/images/3/instances", json={"class_id": cell, "polygon": [rectangle(2, 2, 6, 60)]})
    assert refused.status_code == 422 and refused.json()["field"] == "polygon.0"
    refused = client.post("/api/images/3/instances", json={"class_id": 5, "polygon": [rectangle(2, 2, 6, 6)]})
    assert refused.status_code == 422 and refused.json()["field"] == "class_id"
    assert (
        client.post("/api/images/9/instances", json={"class_id": cell, "polygon": [rectangle(2, 2, 6, 6)]}).status_code
        == 404
    )
    assert database_rows(client.app.state.db) == before


def test_patching_an_instance_is_a_compare_and_swap_on_its_revision(client):
    db = client.app.state.db
    cell, nucleus = add_class(client, "cell"), add_class(client, "nucleus")
    (instance,) = saved(client, 1, 1, [{"class_id": cell, "polygon": [rectangle(1, 1, 10, 10)]}])["instances"]
    patched = client.patch(f"/api/instances/{instance['id']}", json={"revision": 1, "class_id": nucleus, "score": 0.5})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["instance"]["class_id"] == nucleus and body["instance"]["score"] == 0.5
    assert body["instance"]["revision"] == 2 and body["image"]["revision"] == 3
    assert body["instance"]["polygon"] == instance["polygon"], "fields not sent stay"
    before = database_rows(db)
    stale = client.patch(f"/api/instances/{instance['id']}", json={"revision": 1, "class_id": cell})
    assert stale.status_code == 409 and stale.json()["field"] == "revision"
    assert stale.json()["current"]["instances"][0]["revision"] == 2
    for body, field in [
        ({"revision": 2, "polygon": [rectangle(1, 1, 100, 10)]}, "polygon.0"),
        ({"revision": 2, "class_id": 77}, "class_id"),
        ({"revision": 2, "class_id": None}, "class_id"),
        ({"revision": 2, "polygon": [rectangle(1, 1, 5, 5)], "mask": instance["mask"]}, "body"),
        ({"revision": 2, "mask": {"size": [3, 3], "counts": "0"}}, "mask"),
        ({"class_id": cell}, "revision"),
    ]:
        response = client.patch(f"/api/instances/{instance['id']}", json=body)
        assert (response.status_code, response.json()["field"]) == (422, field), (body, response.text)
    assert client.patch("/api/instances/999", json={"revision": 1, "class_id": cell}).status_code == 404
    assert database_rows(db) == before
    shape = client.patch(f"/api/instances/{instance['id']}", json={"revision": 2, "polygon": [rectangle(0, 0, 4, 4)]})
    assert shape.json()["instance"]["area"] == 16 and shape.json()["instance"]["bbox"] == [0.0, 0.0, 4.0, 4.0]
    nothing = client.patch(f"/api/instances/{instance['id']}", json={"revision": 3, "class_id": nucleus})
    assert nothing.status_code == 200 and nothing.json()["change_set"] is None
    assert nothing.json()["image"]["revision"] == 4


def test_deleting_an_instance_needs_its_current_revision(client):
    db = client.app.state.db
    cell = add_class(client)
    first, second = saved(
        client,
        1,
        1,
        [
            {"class_id": cell, "polygon": [rectangle(1, 1, 10, 10)]},
            {"class_id": cell, "polygon": [rectangle(20, 1, 30, 10)]},
        ],
    )["instances"]
    before = database_rows(db)
    stale = client.delete(f"/api/instances/{first['id']}", params={"revision": 5})
    assert stale.status_code == 409 and stale.json()["field"] == "revision"
    assert client.delete("/api/instances/999", params={"revision": 1}).json()["field"] == "instance_id"
    assert client.delete(f"/api/instances/{first['id']}").json()["field"] == "revision"
    assert database_rows(db) == before
    deleted = client.delete(f"/api/instances/{first['id']}", params={"revision": 1})
    assert deleted.status_code == 200
    assert deleted.json()["instances"] == [second] and deleted.json()["image"]["revision"] == 3


def test_listing_an_unknown_images_instances_is_404(client):
    response = client.get("/api/images/42/instances")
    assert response.status_code == 404 and response.json()["field"] == "image_id"


def test_change_instances_writes_model_instances_with_history_and_one_image_revision(client):
    db = client.app.state.db
    cell = add_class(client)
    new = [
        edits.NewInstance(
            class_id=cell, polygon=[rectangle(1, 1, 8, 8)], provenance="model", model_version_id=3, score=0.9
        ),
        edits.NewInstance(
            class_id=cell, mask=mask_ops.encode(boxes_mask((30, 30, 40, 40))), provenance="assistant", assistant="sam"
        ),
    ]
    with db.write() as session:
        image = session.get(Image, 2)
        instances = edits.change_instances(session, image, user_id=None, create=new, change_set="prelabel-1")
        assert [i.provenance.value for i in instances] == ["model", "assistant"]
    with db.read() as session:
        assert session.get(Image, 2).revision == 2
        rows = session.scalars(select(History).where(History.change_set == "prelabel-1")).all()
        assert [r.action.value for r in rows] == ["create", "create"]
        assert edits.replay(rows) == {i.id: edits.instance_json(i) for i in edits.image_instances(session, 2)}
    with pytest.raises(Exception) as refused, db.write() as session:
        edits.change_instances(session, session.get(Image, 2), user_id=None, update={instances[0].id: {"class_id": 5}})
    assert getattr(refused.value, "field", None) == f"update.{instances[0].id}.class_id"


def test_saves_need_a_login_and_record_the_author(secured_client):
    db = secured_client.app.state.db
    add_user(db, "admin", "admin")
    annotator_id = add_user(db, "ann", "annotator")
    admin, annotator = login(secured_client, "admin"), login(secured_client, "ann")
    cell = secured_client.post("/api/classes", json={"name": "cell"}, headers=admin).json()["id"]
    body = {"revision": 1, "instances": [{"class_id": cell, "polygon": [rectangle(1, 1, 9, 9)]}]}
    before = database_rows(db)
    secured_client.cookies.clear()  # the logins set cookies, which count for reads
    assert secured_client.put("/api/images/1/instances", json=body).status_code == 401
    assert secured_client.get("/api/images/1/instances").status_code == 401
    assert database_rows(db) == before
    response = secured_client.put("/api/images/1/instances", json=body, headers=annotator)
    assert response.status_code == 200, response.text
    assert response.json()["instances"][0]["author_id"] == annotator_id


def test_an_instance_round_trips_through_its_json_and_the_history(client):
    cell = add_class(client)
    body = saved(client, 1, 1, [{"class_id": cell, "polygon": [rectangle(1, 1, 9, 9)], "extra": {"coco": 1}}])
    with client.app.state.db.read() as session:
        (row,) = session.scalars(select(History).where(History.change_set == body["change_set"])).all()
        stored = edits.instance_json(edits.image_instances(session, 1)[0])
    assert row.after == stored
    assert json.loads(json.dumps(stored)) == stored
    shown = body["instances"][0]
    for stamp in ("created_at", "updated_at"):
        assert datetime.fromisoformat(shown.pop(stamp)) == datetime.fromisoformat(stored.pop(stamp))
    assert shown == stored and stored["extra"] == {"coco": 1}
