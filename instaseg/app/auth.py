"""Who is asking, and may they: logins, tokens and the roles' rights.

A login returns a bearer token (kept only as its SHA-256). Writes must carry it in the
``Authorization`` header; a browser's cookie is accepted for reads (GET, HEAD) only, so another
site cannot make a logged-in browser change anything (no CSRF through cookies alone). On a
loopback-bound server without ``login_required`` every request is the built-in local admin.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from fastapi import Depends, Request
from sqlalchemy import select

from instaseg.app.db.database import Database
from instaseg.app.db.schema import AuthToken, Role, User
from instaseg.app.errors import ApiError

LOCAL_USER = "local"
TOKEN_COOKIE = "instaseg_token"
TOKEN_LIFETIME = timedelta(days=30)
_hasher = PasswordHasher()


class Permission(enum.StrEnum):
    annotate = "annotate"  # draw and edit instances, set an image's status up to done
    review = "review"  # decide review suggestions, mark images reviewed
    manage = "manage"  # classes, users, uploads, import and export, jobs and models


RIGHTS: dict[Role, frozenset[Permission]] = {
    Role.admin: frozenset(Permission),
    Role.reviewer: frozenset({Permission.annotate, Permission.review}),
    Role.annotator: frozenset({Permission.annotate}),
}


@dataclass(frozen=True)
class CurrentUser:
    id: int
    name: str
    role: Role

    def may(self, permission: Permission) -> bool:
        return permission in RIGHTS[self.role]


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(password_hash: str | None, password: str) -> bool:
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, InvalidHashError):
        return False


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_local_user(db: Database) -> int:
    """The built-in admin that loopback requests act as (it has no password, so it cannot log in)."""
    with db.write() as session:
        user = session.scalar(select(User).where(User.name == LOCAL_USER))
        if user is None:
            user = User(name=LOCAL_USER, role=Role.admin, password_hash=None)
            session.add(user)
            session.flush()
        return user.id


def users_who_can_log_in(db: Database) -> int:
    with db.read() as session:
        users = session.scalars(select(User).where(User.active.is_(True), User.password_hash.is_not(None))).all()
        return len(users)


def log_in(db: Database, name: str, password: str) -> str:
    """A new token for ``name``; 401 naming no field when the name or the password is wrong."""
    with db.write() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None or not user.active or not password_matches(user.password_hash, password):
            raise ApiError(401, "password", "wrong user name or password")
        token = secrets.token_urlsafe(32)
        session.add(
            AuthToken(user_id=user.id, token_sha256=_sha256(token), expires_at=datetime.now(UTC) + TOKEN_LIFETIME)
        )
        return token


def log_out(db: Database, token: str) -> None:
    with db.write() as session:
        stored = session.scalar(select(AuthToken).where(AuthToken.token_sha256 == _sha256(token)))
        if stored is not None:
            session.delete(stored)


def request_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    if request.method in ("GET", "HEAD"):
        return request.cookies.get(TOKEN_COOKIE)
    return None


def get_db(request: Request) -> Database:
    return request.app.state.db


def current_user(request: Request) -> CurrentUser:
    """The user making ``request``: 401 when it carries no valid token and the server is not local."""
    db: Database = request.app.state.db
    token = request_token(request)
    if token is not None:
        with db.read() as session:
            stored = session.scalar(select(AuthToken).where(AuthToken.token_sha256 == _sha256(token)))
            if stored is not None and _aware(stored.expires_at) > datetime.now(UTC) and stored.user.active:
                return CurrentUser(stored.user.id, stored.user.name, stored.user.role)
        raise ApiError(401, "authorization", "the login has expired or is not valid; log in again")
    if request.app.state.settings.local:
        return request.app.state.local_user
    raise ApiError(401, "authorization", "log in first: POST /api/auth/login")


def require(permission: Permission):
    """A dependency refusing (403) users whose role lacks ``permission``; it returns the user."""

    def dependency(user: CurrentUser = Depends(current_user)) -> CurrentUser:
        if not user.may(permission):
            raise ApiError(403, None, f"the {user.role.value} role may not {permission.value}")
        return user

    # Lets a test find the permission each route asks for, and any write route that asks for none.
    dependency.permission = permission  # type: ignore[attr-defined]
    return dependency


def _aware(moment: datetime) -> datetime:
    # SQLite hands datetimes back without their zone; they were stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
