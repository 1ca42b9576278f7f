"""Users through the API and ``instaseg users``: roles, passwords, deactivation, and the rules that keep a project manageable."""

from __future__ import annotations

import getpass
import io
import sys
from typing import get_args

import pytest
from sqlalchemy import select

from instaseg.app.db.schema import AuthToken, Role, User
from instaseg.app.server import open_project
from instaseg.cli.users import RoleName
from tests.app.conftest import add_user, login

PASSWORD = "correct horse battery"


def _users(client, headers) -> dict[str, dict]:
    response = client.get("/api/users", headers=headers)
    assert response.status_code == 200, response.text
    return {user["name"]: user for user in response.json()}


def _can_log_in(client, name: str, password: str = PASSWORD) -> bool:
    return client.post("/api/auth/login", json={"name": name, "password": password}).status_code == 200


@pytest.fixture
def team(secured_client):
    """An admin and an annotator, logged in: {"alice": (id, headers), "ann": (id, headers)}."""
    db = secured_client.app.state.db
    people = {name: add_user(db, name, role) for name, role in (("alice", "admin"), ("ann", "annotator"))}
    return {name: (user_id, login(secured_client, name)) for name, user_id in people.items()}


def test_every_logged_in_user_sees_the_users_and_an_admin_adds_one(secured_client, team):
    _, admin = team["alice"]
    _, annotator = team["ann"]
    seen = _users(secured_client, annotator)
    assert seen["alice"] == {"id": team["alice"][0], "name": "alice", "role": "admin", "active": True}
    assert set(seen) == {"local", "alice", "ann"}
    added = secured_client.post(
        "/api/users", json={"name": "rex", "role": "reviewer", "password": "long enough"}, headers=admin
    )
    assert added.status_code == 201, added.text
    assert added.json() == {"id": added.json()["id"], "name": "rex", "role": "reviewer", "active": True}
    assert _can_log_in(secured_client, "rex", "long enough")
    with secured_client.app.state.db.read() as session:
        stored = session.scalar(select(User).where(User.name == "rex"))
        assert (
            stored is not None
            and stored.password_hash.startswith("$argon2")
            and "long enough" not in stored.password_hash
        )


BAD_NEW_USERS = [
    ({"name": "alice", "role": "admin", "password": "long enough"}, 409, "name"),
    ({"name": "local", "role": "admin", "password": "long enough"}, 422, "name"),
    ({"name": "rex", "role": "reviewer", "password": "short"}, 422, "password"),
    ({"name": "rex", "role": "boss", "password": "long enough"}, 422, "role"),
    ({"name": "  ", "role": "reviewer", "password": "long enough"}, 422, "name"),
    ({"name": "re\nx", "role": "reviewer", "password": "long enough"}, 422, "name"),
    ({"name": "rex", "role": "reviewer", "password": "long enough", "active": False}, 422, "active"),
]


def test_a_bad_new_user_is_refused_naming_the_field_and_nothing_is_added(secured_client, team):
    _, admin = team["alice"]
    before = _users(secured_client, admin)
    for body, status, field in BAD_NEW_USERS:
        response = secured_client.post("/api/users", json=body, headers=admin)
        assert (response.status_code, response.json()["field"]) == (status, field), (body, response.text)
    assert _users(secured_client, admin) == before


def test_an_admin_changes_roles_and_resets_passwords_which_ends_the_users_logins(secured_client, team):
    ann_id, ann = team["ann"]
    _, admin = team["alice"]
    promoted = secured_client.patch(f"/api/users/{ann_id}", json={"role": "reviewer"}, headers=admin)
    assert promoted.status_code == 200 and promoted.json()["role"] == "reviewer"
    assert secured_client.get("/api/auth/me", headers=ann).json()["role"] == "reviewer"
    reset = secured_client.patch(f"/api/users/{ann_id}", json={"password": "a new secret"}, headers=admin)
    assert reset.status_code == 200
    assert secured_client.get("/api/auth/me", headers=ann).status_code == 401
    assert not _can_log_in(secured_client, "ann") and _can_log_in(secured_client, "ann", "a new secret")
    assert secured_client.patch("/api/users/999", json={"role": "admin"}, headers=admin).json()["field"] == "user_id"
    renamed = secured_client.patch(f"/api/users/{ann_id}", json={"name": "anne"}, headers=admin)
    assert renamed.status_code == 422 and renamed.json()["field"] == "name"


def test_a_user_changes_only_their_own_password_and_only_with_the_current_one(secured_client, team):
    ann_id, ann = team["ann"]
    alice_id, _ = team["alice"]
    wrong = secured_client.patch(
        f"/api/users/{ann_id}", json={"password": "a new secret", "current_password": "nope nope"}, headers=ann
    )
    assert wrong.status_code == 422 and wrong.json()["field"] == "current_password"
    missing = secured_client.patch(f"/api/users/{ann_id}", json={"password": "a new secret"}, headers=ann)
    assert missing.status_code == 422 and missing.json()["field"] == "current_password"
    for other, body in (
        (alice_id, {"password": "a new secret", "current_password": PASSWORD}),
        (ann_id, {"role": "admin"}),
        (ann_id, {"active": False}),
    ):
        assert secured_client.patch(f"/api/users/{other}", json=body, headers=ann).status_code == 403, body
    changed = secured_client.patch(
        f"/api/users/{ann_id}", json={"password": "a new secret", "current_password": PASSWORD}, headers=ann
    )
    assert changed.status_code == 200, changed.text
    # One's own change keeps one logged in.
    assert secured_client.get("/api/auth/me", headers=ann).status_code == 200
    assert _can_log_in(secured_client, "ann", "a new secret") and not _can_log_in(secured_client, "ann")
    assert _users(secured_client, ann)["ann"]["role"] == "annotator"


def test_removing_a_user_deactivates_them_and_keeps_the_row(secured_client, team):
    ann_id, ann = team["ann"]
    _, admin = team["alice"]
    removed = secured_client.delete(f"/api/users/{ann_id}", headers=admin)
    assert removed.status_code == 200 and removed.json()["active"] is False
    assert _users(secured_client, admin)["ann"]["active"] is False
    assert secured_client.get("/api/auth/me", headers=ann).status_code == 401
    with secured_client.app.state.db.read() as session:
        assert session.scalars(select(AuthToken).where(AuthToken.user_id == ann_id)).all() == []
    reactivated = secured_client.patch(f"/api/users/{ann_id}", json={"active": True}, headers=admin)
    assert reactivated.status_code == 200 and _can_log_in(secured_client, "ann")
    assert secured_client.delete("/api/users/999", headers=admin).status_code == 404


def test_the_local_user_gets_no_password_and_stays_an_active_admin(secured_client, team):
    _, admin = team["alice"]
    local = _users(secured_client, admin)["local"]["id"]
    for body, field in (
        ({"password": "long enough"}, "password"),
        ({"active": False}, "active"),
        ({"role": "annotator"}, "role"),
    ):
        response = secured_client.patch(f"/api/users/{local}", json=body, headers=admin)
        assert (response.status_code, response.json()["field"]) == (422, field), body
    response = secured_client.delete(f"/api/users/{local}", headers=admin)
    assert (response.status_code, response.json()["field"]) == (422, "user_id")
    assert _users(secured_client, admin)["local"] == {"id": local, "name": "local", "role": "admin", "active": True}
    assert not _can_log_in(secured_client, "local", "long enough")


def test_the_last_admin_who_can_log_in_cannot_be_demoted_or_removed(secured_client, team):
    alice_id, admin = team["alice"]
    for method, body, field in (
        ("patch", {"role": "reviewer"}, "role"),
        ("patch", {"active": False}, "active"),
        ("delete", None, "user_id"),
    ):
        response = secured_client.request(method.upper(), f"/api/users/{alice_id}", json=body, headers=admin)
        assert (response.status_code, response.json()["field"]) == (409, field), response.text
    assert _users(secured_client, admin)["alice"] == {"id": alice_id, "name": "alice", "role": "admin", "active": True}
    secured_client.post("/api/users", json={"name": "bea", "role": "admin", "password": "long enough"}, headers=admin)
    assert secured_client.patch(f"/api/users/{alice_id}", json={"role": "reviewer"}, headers=admin).status_code == 200


def _one_line_error(result, *culprits: str) -> None:
    assert result.code == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "unexpected" not in result.stderr
    for culprit in culprits:
        assert culprit in result.stderr, result.stderr


def test_the_cli_adds_lists_resets_and_removes_users(cli, project_settings, monkeypatch):
    project, url = project_settings.project_dir, project_settings.database_url
    monkeypatch.setattr(sys, "stdin", io.StringIO("long enough\n"))
    added = cli("users", "add", project, "alice", "--role", "admin", "--db", url, "--password-stdin")
    assert added.code == 0, added.stderr
    answers = iter(["another one", "another one"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    assert cli("users", "add", project, "ann", "--role", "annotator", "--db", url).code == 0
    listed = cli("users", "list", project, "--db", url)
    assert [line.split("\t")[1:] for line in listed.stdout.splitlines()] == [
        ["alice", "admin", "active"],
        ["ann", "annotator", "active"],
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("changed it\n"))
    assert cli("users", "password", project, "ann", "--db", url, "--password-stdin").code == 0
    assert cli("users", "remove", project, "ann", "--db", url).code == 0
    db = open_project(project_settings)
    with db.read() as session:
        users = {user.name: user for user in session.scalars(select(User))}
    db.close()
    assert users["alice"].role == Role.admin and users["alice"].active
    assert not users["ann"].active
    from instaseg.app.auth import password_matches

    assert password_matches(users["ann"].password_hash, "changed it")
    assert password_matches(users["alice"].password_hash, "long enough")


def test_the_cli_refuses_with_one_line(cli, project_settings, monkeypatch):
    project, url = project_settings.project_dir, project_settings.database_url
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    _one_line_error(
        cli("users", "add", project, "alice", "--role", "admin", "--db", url, "--password-stdin"), "password"
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO("long enough\n"))
    assert cli("users", "add", project, "alice", "--role", "admin", "--db", url, "--password-stdin").code == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("long enough\n"))
    _one_line_error(
        cli("users", "add", project, "alice", "--role", "admin", "--db", url, "--password-stdin"), "alice", "exists"
    )
    _one_line_error(cli("users", "remove", project, "alice", "--db", url), "last active admin")
    _one_line_error(cli("users", "remove", project, "nobody", "--db", url), "nobody")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    _one_line_error(cli("users", "password", project, "alice", "--db", url, "--password-stdin"), "stdin")
    _one_line_error(cli("users", "list", project.parent / "elsewhere"), "no project")


def test_the_clis_role_names_are_the_schemas():
    assert set(get_args(RoleName)) == {role.value for role in Role}
