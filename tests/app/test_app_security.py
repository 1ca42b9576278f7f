"""The server's defences off loopback: every write asks for a role's right, cookies cannot write, no path leaves the
image root, uploads are checked, and logins expire. The route checks enumerate the app, so they cover routers added later."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from instaseg.app.auth import RIGHTS, TOKEN_COOKIE, Permission
from instaseg.app.db.schema import AuthToken, Image, Role
from instaseg.app.server import create_app, open_project
from instaseg.app.settings import AppSettings
from tests.app.conftest import add_user, login
from tests.app.test_app_uploads import image_bytes, stored, upload

WRITES = {"POST", "PUT", "PATCH", "DELETE"}
# Reachable without a login by design: logging in, and the load balancers' health check.
OPEN_ROUTES = {"/api/auth/login", "/api/health"}
# Reads that POST only to carry an upload: any logged-in user may, nobody else.
READS_BY_POST = {"/api/predict"}


@pytest.fixture
def team(secured_client) -> dict[Role, dict[str, str]]:
    """One logged-in user of each role: their request headers."""
    db = secured_client.app.state.db
    for role in Role:
        add_user(db, role.value, role.value)
    headers = {role: login(secured_client, role.value) for role in Role}
    secured_client.cookies.clear()
    return headers


@pytest.fixture
def admin(secured_client) -> dict[str, str]:
    """A logged-in admin's request headers."""
    add_user(secured_client.app.state.db, "admin", "admin")
    headers = login(secured_client, "admin")
    secured_client.cookies.clear()
    return headers


def _permissions(dependant) -> list[Permission]:
    """The permissions the ``require(...)`` dependencies of a route (at any depth) ask for."""
    found = []
    for dependency in dependant.dependencies:
        if hasattr(dependency.call, "permission"):
            found.append(dependency.call.permission)
        found += _permissions(dependency)
    return found


def _api_routes(app) -> list:
    """The app's API routes as served: FastAPI nests included routers, and flattens them (as for /docs) here."""
    return [
        route
        for route in iter_route_contexts(app.routes)
        if isinstance(route.original_route, APIRoute) and route.path.startswith("/api/")
    ]


def _filled(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def test_every_write_route_asks_for_one_permission_and_refuses_without_it(secured_client, team):
    app = secured_client.app
    writes = [(method, route) for route in _api_routes(app) for method in sorted(route.methods & WRITES)]
    assert any(route.path == "/api/users" for _, route in writes), "the enumeration found none of the known routes"
    unguarded, refused_wrongly = [], []
    for method, route in writes:
        if route.path in OPEN_ROUTES:
            continue
        if route.path in READS_BY_POST:
            if secured_client.request(method, _filled(route.path)).status_code != 401:
                refused_wrongly.append(f"{method} {route.path} without a login: not 401")
            continue
        permissions = _permissions(route.dependant)
        if len(permissions) != 1:
            unguarded.append(f"{method} {route.path} asks for {len(permissions)} permissions")
            continue
        url = _filled(route.path)
        anonymous = secured_client.request(method, url, json={})
        if anonymous.status_code != 401:
            refused_wrongly.append(f"{method} {route.path} without a login: {anonymous.status_code}")
        for role in Role:
            if permissions[0] not in RIGHTS[role]:
                answer = secured_client.request(method, url, json={}, headers=team[role])
                if answer.status_code != 403:
                    refused_wrongly.append(f"{method} {route.path} as {role.value}: {answer.status_code}")
    problems = [f"{problem} (no require(...) or more than one)" for problem in unguarded] + refused_wrongly
    assert not problems, "; ".join(problems)


def test_every_read_route_needs_a_login(secured_client):
    reads = [
        route for route in _api_routes(secured_client.app) if "GET" in route.methods and route.path not in OPEN_ROUTES
    ]
    assert any(route.path == "/api/users" for route in reads)
    readable = [route.path for route in reads if secured_client.get(_filled(route.path)).status_code != 401]
    assert not readable, f"readable without a login: {readable}"


def test_a_cookie_reads_but_cannot_write(secured_client):
    add_user(secured_client.app.state.db, "admin", "admin")
    response = secured_client.post("/api/auth/login", json={"name": "admin", "password": "correct horse battery"})
    assert secured_client.cookies.get(TOKEN_COOKIE) == response.json()["token"]
    assert secured_client.get("/api/auth/me").json()["name"] == "admin"
    assert secured_client.get("/api/users").status_code == 200
    assert secured_client.get("/api/images/1/file").status_code == 200
    new_user = {"name": "eve", "role": "admin", "password": "long enough"}
    refused = [
        secured_client.post("/api/users", json=new_user),
        secured_client.patch("/api/users/1", json={"role": "annotator"}),
        secured_client.delete("/api/users/1"),
        upload(secured_client, ("cookie.png", image_bytes())),
        secured_client.post("/api/auth/logout"),
    ]
    assert [answer.status_code for answer in refused] == [401] * len(refused)
    assert "eve" not in {user["name"] for user in secured_client.get("/api/users").json()}
    assert stored(secured_client) == ([], [])
    # The same write with the token in the header is accepted: it was the cookie that was refused.
    bearer = {"Authorization": f"Bearer {response.json()['token']}"}
    assert secured_client.post("/api/users", json=new_user, headers=bearer).status_code == 201


def test_upload_names_cannot_leave_the_uploads_folder(secured_client, admin, tmp_path):
    for name in ("../x.png", "a/b.png", "/etc/x.png", "..\\x.png", "../../images/image_000.png"):
        response = upload(secured_client, (name, image_bytes()), headers=admin)
        assert response.status_code == 422, (name, response.text)
        assert response.json()["field"] == "files.0.filename", name
    assert stored(secured_client) == ([], [])
    assert not list(tmp_path.glob("x.png")) and not (tmp_path / "images" / "a").exists()
    with secured_client.app.state.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 3


def test_an_image_row_pointing_out_of_the_image_root_is_never_served(secured_client, admin, tmp_path):
    paths = {route.path for route in _api_routes(secured_client.app)}
    assert "/api/images/{image_id}/file" in paths, "GET /api/images/{image_id}/file is not there"
    secret = tmp_path / "secret.png"
    secret.write_bytes(image_bytes(seed=7))
    tampered = ["../../etc/passwd", "/etc/passwd", "../secret.png", str(secret), "uploads/../../secret.png"]
    with secured_client.app.state.db.write() as session:
        rows = [Image(file_name=name, width=48, height=64) for name in tampered]
        session.add_all(rows)
        session.flush()
        ids = [row.id for row in rows]
    headers = admin
    assert secured_client.get("/api/images/1/file", headers=headers).status_code == 200
    for image_id, name in zip(ids, tampered):
        for view in ("file", "thumbnail"):
            if f"/api/images/{{image_id}}/{view}" not in paths:
                continue
            response = secured_client.get(f"/api/images/{image_id}/{view}", headers=headers)
            assert 400 <= response.status_code < 500, (name, view, response.status_code)
            assert b"root:" not in response.content and secret.read_bytes() not in response.content


@pytest.fixture
def small_uploads(tmp_path, database_url):
    """A login-required client whose uploads may be 20,000 bytes at most, and an admin's headers."""
    settings = AppSettings(
        project_dir=tmp_path / "small", database_url=database_url, login_required=True, max_upload_bytes=20_000
    )
    db = open_project(settings)
    add_user(db, "admin", "admin")
    with TestClient(create_app(settings, db)) as client:
        yield client, login(client, "admin")
    db.close()


def test_an_upload_declaring_too_many_bytes_is_refused_with_413_and_nothing_is_written(small_uploads):
    client, headers = small_uploads
    big = image_bytes(100, 100)
    assert len(big) > client.app.state.settings.max_upload_bytes
    response = upload(client, ("big.png", big), headers=headers)
    assert response.status_code == 413 and response.json()["field"] == "body"
    assert stored(client) == ([], [])
    assert upload(client, ("small.png", image_bytes()), headers=headers).status_code == 201


def test_a_chunked_upload_is_counted_as_it_arrives_and_refused_with_413(small_uploads):
    client, headers = small_uploads
    body = (
        b'--limit\r\nContent-Disposition: form-data; name="files"; filename="chunked.png"\r\n\r\n'
        + image_bytes(100, 100)
        + b"\r\n--limit--\r\n"
    )
    # A generator body is sent chunked, without a Content-Length.
    response = client.post(
        "/api/images/upload",
        content=(body[i : i + 4096] for i in range(0, len(body), 4096)),
        headers={**headers, "content-type": "multipart/form-data; boundary=limit"},
    )
    assert response.status_code == 413, response.text
    assert stored(client) == ([], [])


def test_files_that_are_not_whole_images_are_refused(secured_client, admin):
    png = image_bytes()
    for name, data in (("x.png", b"#!/bin/sh\nrm -rf /\n"), ("cut.png", png[: len(png) // 2]), ("empty.png", b"")):
        response = upload(secured_client, ("fine.png", png), (name, data), headers=admin)
        assert response.status_code == 422, (name, response.text)
        assert response.json()["field"] == "files.1", name
    assert stored(secured_client) == ([], [])


def test_an_expired_login_is_refused(secured_client, admin):
    assert secured_client.get("/api/auth/me", headers=admin).status_code == 200
    with secured_client.app.state.db.write() as session:
        session.execute(update(AuthToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    me = secured_client.get("/api/auth/me", headers=admin)
    assert me.status_code == 401 and me.json()["field"] == "authorization"
    new_user = {"name": "eve", "role": "admin", "password": "long enough"}
    assert secured_client.post("/api/users", json=new_user, headers=admin).status_code == 401
