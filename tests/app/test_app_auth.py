"""Logging in and out: tokens, the read-only cookie, who ``/api/auth/me`` says one is, and the brute-force brake."""

from __future__ import annotations

from instaseg.app.auth import TOKEN_COOKIE
from instaseg.app.routers import auth as auth_router
from tests.app.conftest import add_user, login


def test_login_answers_a_token_and_sets_a_strict_http_only_cookie(secured_client):
    alice = add_user(secured_client.app.state.db, "alice", "reviewer")
    response = secured_client.post("/api/auth/login", json={"name": "alice", "password": "correct horse battery"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"] == {"id": alice, "name": "alice", "role": "reviewer"}
    cookie = response.headers["set-cookie"]
    assert f"{TOKEN_COOKIE}={body['token']}" in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    bearer = {"Authorization": f"Bearer {body['token']}"}
    secured_client.cookies.clear()
    me = secured_client.get("/api/auth/me", headers=bearer)
    assert me.json() == {"id": alice, "name": "alice", "role": "reviewer", "login_required": True}
    assert secured_client.get("/api/auth/me").status_code == 401
    # The cookie alone is a login for reads.
    secured_client.cookies.set(TOKEN_COOKIE, body["token"])
    assert secured_client.get("/api/auth/me").json()["name"] == "alice"


def test_a_wrong_password_and_an_unknown_user_get_the_same_401(secured_client):
    add_user(secured_client.app.state.db, "alice", "admin")
    wrong = secured_client.post("/api/auth/login", json={"name": "alice", "password": "not the password"})
    unknown = secured_client.post("/api/auth/login", json={"name": "nobody", "password": "correct horse battery"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert "set-cookie" not in wrong.headers
    missing = secured_client.post("/api/auth/login", json={"name": "alice"})
    assert missing.status_code == 422 and missing.json()["field"] == "password"


def test_the_local_user_needs_no_login_on_loopback_and_cannot_log_in(client):
    me = client.get("/api/auth/me").json()
    assert me["name"] == "local" and me["role"] == "admin" and me["login_required"] is False
    refused = client.post("/api/auth/login", json={"name": "local", "password": ""})
    assert refused.status_code == 422
    assert client.post("/api/auth/login", json={"name": "local", "password": "anything at all"}).status_code == 401


def test_a_deactivated_users_login_is_refused_like_a_wrong_password(secured_client):
    db = secured_client.app.state.db
    add_user(db, "alice", "admin")
    add_user(db, "bob", "annotator")
    bob = login(secured_client, "bob")
    admin = login(secured_client, "alice")
    bob_id = secured_client.get("/api/auth/me", headers=bob).json()["id"]
    assert secured_client.delete(f"/api/users/{bob_id}", headers=admin).status_code == 200
    assert secured_client.get("/api/auth/me", headers=bob).status_code == 401
    refused = secured_client.post("/api/auth/login", json={"name": "bob", "password": "correct horse battery"})
    assert refused.status_code == 401 and refused.json()["detail"] == "wrong user name or password"


def test_logout_ends_the_token_and_clears_the_cookie(secured_client):
    add_user(secured_client.app.state.db, "alice", "annotator")
    headers = login(secured_client, "alice")
    response = secured_client.post("/api/auth/logout", headers=headers)
    assert response.status_code == 204
    assert f'{TOKEN_COOKIE}=""' in response.headers["set-cookie"] and "Max-Age=0" in response.headers["set-cookie"]
    assert not secured_client.cookies
    assert secured_client.get("/api/auth/me", headers=headers).status_code == 401
    # Logging out is a write: the cookie alone cannot do it.
    headers = login(secured_client, "alice")
    assert secured_client.post("/api/auth/logout").status_code == 401
    assert secured_client.get("/api/auth/me", headers=headers).status_code == 200


def test_five_failed_logins_within_a_minute_make_the_name_wait(secured_client, monkeypatch):
    add_user(secured_client.app.state.db, "alice", "admin")
    clock = [1000.0]
    monkeypatch.setattr(auth_router.time, "monotonic", lambda: clock[0])
    for _ in range(auth_router.FAILED_LOGINS_ALLOWED):
        assert (
            secured_client.post("/api/auth/login", json={"name": "alice", "password": "guess guess"}).status_code == 401
        )
    right = {"name": "alice", "password": "correct horse battery"}
    refused = secured_client.post("/api/auth/login", json=right)
    assert refused.status_code == 429 and refused.json()["field"] == "name"
    # Other names are not held up.
    assert secured_client.post("/api/auth/login", json={"name": "bob", "password": "guess guess"}).status_code == 401
    clock[0] += auth_router.FAILED_LOGIN_WINDOW_S + 1
    assert secured_client.post("/api/auth/login", json=right).status_code == 200


def test_a_successful_login_forgets_the_earlier_failures(secured_client):
    add_user(secured_client.app.state.db, "alice", "admin")
    wrong = {"name": "alice", "password": "guess guess"}
    for _ in range(auth_router.FAILED_LOGINS_ALLOWED - 1):
        assert secured_client.post("/api/auth/login", json=wrong).status_code == 401
    login(secured_client, "alice")
    # Without the reset this would be the fifth failure in a row, and the next login would wait.
    assert secured_client.post("/api/auth/login", json=wrong).status_code == 401
    login(secured_client, "alice")
