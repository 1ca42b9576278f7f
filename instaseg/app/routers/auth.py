"""Logging in and out, and who the server takes a request to be.

A login answers with a bearer token and sets it as an HttpOnly, SameSite=Strict cookie too, so
that ``<img>`` tags can load images; the cookie counts for reads only (``instaseg.app.auth``).
Five failed logins for one name within a minute make further tries wait (429), whatever the password.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from instaseg.app import auth
from instaseg.app.auth import CurrentUser, Permission, current_user, get_db, require
from instaseg.app.db.database import Database
from instaseg.app.db.schema import Role, User
from instaseg.app.errors import ApiError

router = APIRouter(prefix="/api", tags=["auth"])

FAILED_LOGINS_ALLOWED = 5
FAILED_LOGIN_WINDOW_S = 60.0


class LoginIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=1024)


class UserRef(BaseModel):
    id: int
    name: str
    role: Role


class LoginOut(BaseModel):
    token: str
    user: UserRef


class Me(UserRef):
    login_required: bool


class LoginThrottle:
    """Failed logins per user name over the last window, kept in memory (a restart forgets them)."""

    def __init__(self, allowed: int = FAILED_LOGINS_ALLOWED, window_s: float = FAILED_LOGIN_WINDOW_S):
        self.allowed = allowed
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check(self, name: str) -> None:
        """Refuse (429) a login for ``name`` while it has ``allowed`` failures within the window."""
        with self._lock:
            self._forget_old(time.monotonic())
            if len(self._failures.get(name, ())) >= self.allowed:
                raise ApiError(429, "name", "too many failed logins; wait a minute and try again")

    def failed(self, name: str) -> None:
        with self._lock:
            self._failures.setdefault(name, deque()).append(time.monotonic())

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)

    def _forget_old(self, now: float) -> None:
        # Every name tried is pruned here, so names an attacker makes up do not pile up.
        for name in list(self._failures):
            failures = self._failures[name]
            while failures and now - failures[0] > self.window_s:
                failures.popleft()
            if not failures:
                del self._failures[name]


_throttle_created = threading.Lock()


def login_throttle(request: Request) -> LoginThrottle:
    """The app's login throttle, made on first use so every app (and test) has its own."""
    state = request.app.state
    with _throttle_created:
        if not hasattr(state, "login_throttle"):
            state.login_throttle = LoginThrottle()
    return state.login_throttle


@router.post("/auth/login")
def login(
    body: LoginIn,
    request: Request,
    response: Response,
    db: Database = Depends(get_db),
    throttle: LoginThrottle = Depends(login_throttle),
) -> LoginOut:
    """A token for the user: 401 for a wrong name or password alike, 429 after too many failures."""
    throttle.check(body.name)
    try:
        token = auth.log_in(db, body.name, body.password)
    except ApiError:
        throttle.failed(body.name)
        raise
    throttle.succeeded(body.name)
    with db.read() as session:
        user = session.scalars(select(User).where(User.name == body.name)).one()
    response.set_cookie(
        auth.TOKEN_COOKIE,
        token,
        max_age=int(auth.TOKEN_LIFETIME.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return LoginOut(token=token, user=UserRef(id=user.id, name=user.name, role=user.role))


# Every role may log out; the dependency still makes the route refuse requests without a bearer token.
@router.post("/auth/logout", status_code=204, dependencies=[Depends(require(Permission.annotate))])
def logout(request: Request, response: Response, db: Database = Depends(get_db)) -> None:
    """End the login the request carries (its token stops working) and clear the cookie."""
    token = auth.request_token(request)
    if token is not None:
        auth.log_out(db, token)
    response.delete_cookie(auth.TOKEN_COOKIE, httponly=True, samesite="strict")


@router.get("/auth/me")
def me(request: Request, user: CurrentUser = Depends(current_user)) -> Me:
    """The user the server takes the request to be (the local admin on a loopback server)."""
    return Me(id=user.id, name=user.name, role=user.role, login_required=not request.app.state.settings.local)
