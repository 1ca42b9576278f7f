"""Images through the API: listing and filters, status and assignee with revisions, the file, thumbnails,
pyramid tiles of large images, and the project's statistics."""

from __future__ import annotations

import io as bytes_io

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from instaseg.app.db.schema import History, Image
from instaseg.app.routers.images import TILE_SIZE
from instaseg.app.server import image_root
from instaseg.app.transfer import scan_images
from instaseg.core import io
from tests.app.conftest import add_user, login
from tests.app.test_app_instances import add_class, database_rows, rectangle, saved


def test_images_are_listed_with_filters_counts_and_pages(client):
    cell, nucleus = add_class(client, "cell"), add_class(client, "nucleus")
    saved(client, 1, 1, [{"class_id": cell, "polygon": [rectangle(1, 1, 9, 9)]}])
    saved(client, 2, 1, [{"class_id": nucleus, "polygon": [rectangle(1, 1, 9, 9)]}] * 2)
    client.patch("/api/images/2", json={"revision": 2, "status": "done", "assignee_id": 1})
    everything = client.get("/api/images").json()
    assert everything["total"] == 3
    assert [(i["id"], i["instance_count"]) for i in everything["items"]] == [(1, 1), (2, 2), (3, 0)]
    assert everything["items"][0]["file_name"] == "image_000.png" and everything["items"][0]["width"] == 64

    def ids(**params) -> tuple[list[int], int]:
        body = client.get("/api/images", params=params).json()
        return [i["id"] for i in body["items"]], body["total"]

    assert ids(status="done") == ([2], 1)
    assert ids(status="new") == ([1, 3], 2)
    assert ids(assignee_id=1) == ([2], 1)
    assert ids(class_id=cell) == ([1], 1)
    assert ids(has_instances=True) == ([1, 2], 2)
    assert ids(has_instances=False) == ([3], 1)
    assert ids(has_instances=True, status="new") == ([1], 1)
    assert ids(limit=2, offset=1) == ([2, 3], 3)
    bad = client.get("/api/images", params={"status": "finished"})
    assert bad.status_code == 422 and bad.json()["field"] == "status"
    assert client.get("/api/images", params={"limit": 0}).json()["field"] == "limit"
    one = client.get("/api/images/2").json()
    assert one == everything["items"][1] | {
        "status": "done",
        "assignee_id": 1,
        "revision": 3,
        "updated_at": one["updated_at"],
    }
    assert client.get("/api/images/9").status_code == 404


def test_status_and_assignee_changes_need_the_revision_and_leave_history(client):
    db = client.app.state.db
    changed = client.patch("/api/images/1", json={"revision": 1, "status": "in_progress", "assignee_id": 1})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["status"], changed.json()["assignee_id"], changed.json()["revision"]) == (
        "in_progress",
        1,
        2,
    )
    before = database_rows(db)
    for body, status, field in [
        ({"revision": 1, "status": "done"}, 409, "revision"),
        ({"revision": 2, "status": "finished"}, 422, "status"),
        ({"revision": 2, "status": None}, 422, "status"),
        ({"revision": 2, "assignee_id": 999}, 422, "assignee_id"),
        ({"status": "done"}, 422, "revision"),
        ({"revision": 2, "file_name": "x.png"}, 422, "file_name"),
    ]:
        response = client.patch("/api/images/1", json=body)
        assert (response.status_code, response.json()["field"]) == (status, field), (body, response.text)
    assert client.patch("/api/images/9", json={"revision": 1, "status": "done"}).status_code == 404
    assert database_rows(db) == before
    unassigned = client.patch("/api/images/1", json={"revision": 2, "assignee_id": None}).json()
    assert unassigned["assignee_id"] is None and unassigned["status"] == "in_progress"
    with db.read() as session:
        rows = session.scalars(select(History).where(History.entity == "image").order_by(History.id)).all()
    assert [(r.before["assignee_id"], r.after["assignee_id"]) for r in rows] == [(None, 1), (1, None)]
    assert rows[0].before["status"] == "new" and rows[0].after["status"] == "in_progress"


def test_marking_reviewed_needs_the_review_permission(secured_client):
    db = secured_client.app.state.db
    add_user(db, "ann", "annotator")
    add_user(db, "rev", "reviewer")
    ann, rev = login(secured_client, "ann"), login(secured_client, "rev")
    assert secured_client.patch("/api/images/1", json={"revision": 1, "status": "done"}, headers=ann).status_code == 200
    before = database_rows(db)
    refused = secured_client.patch("/api/images/1", json={"revision": 2, "status": "reviewed"}, headers=ann)
    assert refused.status_code == 403 and refused.json()["field"] == "status"
    assert database_rows(db) == before
    assert (
        secured_client.patch("/api/images/1", json={"revision": 2, "status": "reviewed"}, headers=rev).status_code
        == 200
    )
    undo = secured_client.patch("/api/images/1", json={"revision": 3, "status": "done"}, headers=ann)
    assert undo.status_code == 403


def test_the_file_is_served_with_its_sha1_as_etag(client, tmp_path):
    image = client.get("/api/images/1").json()
    response = client.get("/api/images/1/file")
    assert response.status_code == 200
    assert response.content == (tmp_path / "images" / "image_000.png").read_bytes()
    assert response.headers["etag"] == f'"{image["sha1"]}"' and response.headers["content-type"] == "image/png"
    assert "max-age" in response.headers["cache-control"]
    again = client.get("/api/images/1/file", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    (tmp_path / "images" / "image_000.png").unlink()
    gone = client.get("/api/images/1/file")
    assert gone.status_code == 404 and gone.json()["field"] == "image_id"
    assert client.get("/api/images/1/thumbnail").status_code == 404


def test_a_stored_name_climbing_out_of_the_image_root_serves_nothing(client, tmp_path):
    (tmp_path / "secret.png").write_bytes((tmp_path / "images" / "image_000.png").read_bytes())
    db = client.app.state.db
    with db.write() as session:
        session.add(Image(id=50, file_name="../secret.png", width=64, height=48))
        session.add(Image(id=51, file_name=str(tmp_path / "secret.png"), width=64, height=48))
    for image_id in (50, 51):
        for what in ("file", "thumbnail", "tiles/0/0/0"):
            response = client.get(f"/api/images/{image_id}/{what}")
            assert response.status_code == 404, (image_id, what)
            assert b"PNG" not in response.content and b"JFIF" not in response.content


def test_thumbnails_are_jpegs_cached_in_the_project(client, project_settings):
    response = client.get("/api/images/1/thumbnail", params={"size": 32})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    picture = PILImage.open(bytes_io.BytesIO(response.content))
    assert picture.format == "JPEG" and picture.size == (32, 24)
    cached = list((project_settings.project_dir / "cache").rglob("*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == response.content
    assert client.get("/api/images/1/thumbnail", params={"size": 32}).content == response.content
    not_enlarged = PILImage.open(bytes_io.BytesIO(client.get("/api/images/1/thumbnail").content))
    assert not_enlarged.size == (64, 48)
    assert client.get("/api/images/1/thumbnail", headers={"If-None-Match": response.headers["etag"]}).status_code == 200
    assert (
        client.get(
            "/api/images/1/thumbnail", params={"size": 32}, headers={"If-None-Match": response.headers["etag"]}
        ).status_code
        == 304
    )
    assert client.get("/api/images/1/thumbnail", params={"size": 4}).json()["field"] == "size"


@pytest.fixture
def large_image(client) -> tuple[int, np.ndarray]:
    """A 1300 x 1100 image added to the client's project: its id and pixels."""
    db = client.app.state.db
    rng = np.random.default_rng(1)
    # Smooth pixels, so that JPEG's loss stays small and the comparison below means something.
    pixels = np.zeros((1100, 1300, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, 1300)[None, :]
    pixels[..., 1] = np.linspace(0, 255, 1100)[:, None]
    pixels[..., 2] = rng.integers(100, 110)
    io.write_image(image_root(db) / "large.png", pixels)
    assert scan_images(db, image_root(db)) == 1
    with db.read() as session:
        return session.scalar(select(Image.id).where(Image.file_name == "large.png")), pixels


def test_a_large_image_comes_as_a_pyramid_of_tiles(client, large_image):
    image_id, pixels = large_image
    pyramid = client.get(f"/api/images/{image_id}/pyramid").json()
    assert pyramid["tile_size"] == TILE_SIZE == 512
    assert pyramid["levels"] == [
        {"level": 0, "scale": 1.0, "width": 1300, "height": 1100},
        {"level": 1, "scale": 0.5, "width": 650, "height": 550},
        {"level": 2, "scale": 0.25, "width": 325, "height": 275},
    ]
    corner = client.get(f"/api/images/{image_id}/tiles/0/2/2", params={"format": "png"})
    assert corner.status_code == 200 and corner.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(PILImage.open(bytes_io.BytesIO(corner.content))), pixels[1024:, 1024:])
    middle = client.get(f"/api/images/{image_id}/tiles/1/1/0")
    assert middle.headers["content-type"] == "image/jpeg"
    tile = np.asarray(PILImage.open(bytes_io.BytesIO(middle.content)), np.float64)
    assert tile.shape == (512, 650 - 512, 3)
    expected = pixels[:1024, 1024:1300].reshape(512, 2, 138, 2, 3).mean(axis=(1, 3))
    assert np.abs(tile - expected).mean() < 3
    top = client.get(f"/api/images/{image_id}/tiles/2/0/0")
    assert PILImage.open(bytes_io.BytesIO(top.content)).size == (325, 275)
    for path, field in [("3/0/0", "level"), ("0/3/0", "col"), ("0/0/3", "row"), ("2/1/0", "col"), ("-1/0/0", "level")]:
        response = client.get(f"/api/images/{image_id}/tiles/{path}")
        assert response.status_code in (404, 422) and response.json()["field"] == field, (path, response.text)
    assert client.get("/api/images/1/pyramid").json()["levels"] == [
        {"level": 0, "scale": 1.0, "width": 64, "height": 48}
    ]
    assert client.get("/api/images/77/pyramid").status_code == 404


def test_stats_count_images_and_instances(client):
    empty = client.get("/api/stats").json()
    assert empty["instances"] == 0 and empty["area_quantiles"] == [] and empty["images_without_instances"] == 3
    cell, nucleus = add_class(client, "cell"), add_class(client, "nucleus")
    saved(
        client,
        1,
        1,
        [
            {"class_id": cell, "polygon": [rectangle(0, 0, 2, 2)]},
            {"class_id": cell, "polygon": [rectangle(0, 0, 4, 4)]},
        ],
    )
    saved(client, 2, 1, [{"class_id": cell, "polygon": [rectangle(0, 0, 6, 6)], "provenance": "model", "score": 0.7}])
    client.patch("/api/images/2", json={"revision": 2, "status": "done"})
    stats = client.get("/api/stats").json()
    assert stats["images"] == 3 and stats["instances"] == 3
    assert stats["images_per_status"] == {"new": 2, "in_progress": 0, "done": 1, "reviewed": 0}
    assert stats["images_without_instances"] == 1 and stats["mean_instances_per_image"] == 1.0
    assert stats["instances_per_class"] == [
        {"class_id": cell, "name": "cell", "count": 3},
        {"class_id": nucleus, "name": "nucleus", "count": 0},
    ]
    assert stats["instances_per_provenance"] == {"human": 2, "assistant": 0, "model": 1}
    local = client.get("/api/auth/me").json()["name"]
    assert stats["instances_per_author"] == [{"user_id": 1, "name": local, "count": 3}]
    quantiles = {q["quantile"]: q["area"] for q in stats["area_quantiles"]}
    assert quantiles[0.0] == 4 and quantiles[0.5] == 16 and quantiles[1.0] == 36
