"""The project's users, their roles and passwords; also what ``instaseg users`` does.

A user is never deleted, only deactivated, so the history keeps its authors. The built-in
``local`` user (whom loopback requests act as) has no password and stays an active admin. The
last active admin who can log in cannot be deactivated or demoted, so a served project always
has someone who can manage it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from instaseg.app.auth import (
    LOCAL_USER,
    CurrentUser,
    Permission,
    current_user,
    get_db,
    hash_password,
    password_matches,
    require,
)
from instaseg.app.db.database import Database
from instaseg.app.db.schema import AuthToken, Role, User
from instaseg.app.errors import ApiError, bad_request, not_found

router = APIRouter(prefix="/api", tags=["users"])

UserName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
]
Password = Annotated[str, Field(min_length=8, max_length=1024)]


class UserOut(BaseModel):
    id: int
    name: str
    role: Role
    active: bool


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: UserName
    role: Role
    password: Password


class UserChange(BaseModel):
    """Only the fields given change; ``current_password`` is needed to change one's own password."""

    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    active: bool | None = None
    password: Password | None = None
    current_password: str | None = Field(default=None, max_length=1024)


def _out(user: User) -> UserOut:
    return UserOut(id=user.id, name=user.name, role=user.role, active=user.active)


def list_users(db: Database) -> list[UserOut]:
    with db.read() as session:
        return [_out(user) for user in session.scalars(select(User).order_by(User.id))]


def user_named(db: Database, name: str) -> UserOut:
    """The user called ``name``; 404 naming ``name`` when there is none."""
    with db.read() as session:
        user = session.scalar(select(User).where(User.name == name))
        if user is None:
            raise not_found("name", f"no user named {name!r}")
        return _out(user)


def create_user(db: Database, new: UserIn) -> UserOut:
    """Add a user who can log in; 409 when the name is taken, 422 for the built-in user's name."""
    if new.name == LOCAL_USER:
        raise bad_request("name", f"{LOCAL_USER!r} is the built-in local user's name")
    try:
        with db.write() as session:
            existing = session.scalar(select(User).where(User.name == new.name))
            if existing is not None:
                raise ApiError(409, "name", f"a user named {new.name!r} exists", current=_out(existing).model_dump())
            user = User(name=new.name, role=new.role, password_hash=hash_password(new.password), active=True)
            session.add(user)
            session.flush()
            return _out(user)
    except IntegrityError:  # another request added the name between the check and the insert
        raise ApiError(409, "name", f"a user named {new.name!r} exists") from None


def change_user(db: Database, user_id: int, change: UserChange, by: CurrentUser | None) -> UserOut:
    """Apply ``change`` to a user, as ``by`` (None: the project's owner at the command line).

    Refuses: a user who may not manage changing anything but their own password (403); one's own
    password without the right ``current_password`` (422); a password, demotion or deactivation of
    the built-in local user (422); leaving no active admin who can log in (409).
    """
    own = by is not None and by.id == user_id
    if by is not None and not by.may(Permission.manage):
        touched = change.model_fields_set - {"password", "current_password"}
        if not own or touched:
            raise ApiError(403, None, f"the {by.role.value} role may change only its own password")
    with db.write() as session:
        user = _user(session, user_id)
        if user.name == LOCAL_USER:
            _refuse_local_change(change)
        if (
            change.password is not None
            and own
            and not password_matches(user.password_hash, change.current_password or "")
        ):
            raise bad_request("current_password", "the current password is wrong")
        role = change.role if change.role is not None else user.role
        active = change.active if change.active is not None else user.active
        if role != Role.admin or not active:
            _keep_an_admin(session, user, "role" if role != Role.admin else "active")
        user.role, user.active = role, active
        if change.password is not None:
            user.password_hash = hash_password(change.password)
        # A reset by someone else or a deactivation ends the user's logins; one's own change keeps them.
        if not active or (change.password is not None and not own):
            session.execute(delete(AuthToken).where(AuthToken.user_id == user.id))
        return _out(user)


def deactivate_user(db: Database, user_id: int) -> UserOut:
    """Deactivate a user (they can no longer log in; their history stays theirs); refusals as ``change_user``."""
    with db.write() as session:
        user = _user(session, user_id)
        if user.name == LOCAL_USER:
            raise bad_request("user_id", "the built-in local user cannot be deactivated")
        _keep_an_admin(session, user, "user_id")
        user.active = False
        session.execute(delete(AuthToken).where(AuthToken.user_id == user.id))
        return _out(user)


def _user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise not_found("user_id", f"no user with id {user_id}")
    return user


def _refuse_local_change(change: UserChange) -> None:
    if change.password is not None:
        raise bad_request("password", "the built-in local user cannot have a password; add a user instead")
    if change.active is False:
        raise bad_request("active", "the built-in local user cannot be deactivated")
    if change.role not in (None, Role.admin):
        raise bad_request("role", "the built-in local user is always an admin")


def _keep_an_admin(session: Session, user: User, field: str) -> None:
    """Refuse (409 naming ``field``) taking ``user`` out of the admins who can log in when they are the last."""
    if not (user.role == Role.admin and user.active and user.password_hash):
        return
    others = session.scalar(
        select(func.count())
        .select_from(User)
        .where(User.role == Role.admin, User.active.is_(True), User.password_hash.is_not(None), User.id != user.id)
    )
    if not others:
        raise ApiError(409, field, f"{user.name!r} is the last active admin who can log in; add another admin first")


@router.get("/users", dependencies=[Depends(current_user)])
def get_users(db: Database = Depends(get_db)) -> list[UserOut]:
    """Every user, the deactivated ones too, by id."""
    return list_users(db)


@router.post("/users", status_code=201, dependencies=[Depends(require(Permission.manage))])
def post_user(body: UserIn, db: Database = Depends(get_db)) -> UserOut:
    return create_user(db, body)


# Any logged-in user may change their own password here; change_user refuses them anything else.
@router.patch("/users/{user_id}")
def patch_user(
    user_id: int,
    body: UserChange,
    db: Database = Depends(get_db),
    user: CurrentUser = Depends(require(Permission.annotate)),
) -> UserOut:
    return change_user(db, user_id, body, by=user)


@router.delete("/users/{user_id}", dependencies=[Depends(require(Permission.manage))])
def delete_user(user_id: int, db: Database = Depends(get_db)) -> UserOut:
    """Deactivate the user (users are never deleted, so their history keeps its author)."""
    return deactivate_user(db, user_id)
