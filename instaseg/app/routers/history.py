"""Every change ever made (who, when, before, after), and reverting one as a new change."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from instaseg.app import edits
from instaseg.app.auth import CurrentUser, Permission, current_user, get_db, require
from instaseg.app.db.database import Database
from instaseg.app.db.schema import History, HistoryAction, ImageStatus, User
from instaseg.app.errors import ApiError, not_found

router = APIRouter(prefix="/api", tags=["history"])

MAX_PAGE = 500


class HistoryOut(BaseModel):
    id: int
    at: datetime
    user_id: int | None
    user_name: str | None
    entity: str
    entity_id: int
    image_id: int | None
    action: HistoryAction
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    change_set: str
    reverts: int | None


class HistoryPage(BaseModel):
    items: list[HistoryOut]
    total: int


class RevertIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: int


class RevertOut(BaseModel):
    change_set: str | None
    entity: str
    entity_id: int | None
    rows: list[HistoryOut]


def _page(session: Session, where: list[Any], limit: int, offset: int) -> dict[str, Any]:
    total = session.scalar(select(func.count(History.id)).where(*where)) or 0
    rows = session.execute(
        select(History, User.name)
        .outerjoin(User, User.id == History.user_id)
        .where(*where)
        .order_by(History.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return {"items": [_row_json(row, name) for row, name in rows], "total": total}


def _row_json(row: History, user_name: str | None) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at,
        "user_id": row.user_id,
        "user_name": user_name,
        "entity": row.entity,
        "entity_id": row.entity_id,
        "image_id": row.image_id,
        "action": row.action,
        "before": row.before,
        "after": row.after,
        "change_set": row.change_set,
        "reverts": row.reverts,
    }


@router.get("/images/{image_id}/history", response_model=HistoryPage)
def image_history(
    image_id: int,
    limit: int = Query(default=100, ge=1, le=MAX_PAGE),
    offset: int = Query(default=0, ge=0),
    db: Database = Depends(get_db),
    _user: CurrentUser = Depends(current_user),
) -> dict[str, Any]:
    """The image's changes (its own and its instances'), newest first."""
    with db.read() as session:
        edits.fresh_image(session, image_id)
        return _page(session, [History.image_id == image_id], limit, offset)


@router.get("/history", response_model=HistoryPage)
def history(
    entity: Literal["instance", "image", "class"] | None = None,
    entity_id: int | None = None,
    change_set: str | None = None,
    limit: int = Query(default=100, ge=1, le=MAX_PAGE),
    offset: int = Query(default=0, ge=0),
    db: Database = Depends(get_db),
    _user: CurrentUser = Depends(current_user),
) -> dict[str, Any]:
    """Changes, newest first: of one kind of record (``entity``), one record (and ``entity_id``), one save
    (``change_set``), or all."""
    where: list[Any] = []
    if entity is not None:
        where.append(History.entity == entity)
    if entity_id is not None:
        where.append(History.entity_id == entity_id)
    if change_set is not None:
        where.append(History.change_set == change_set)
    with db.read() as session:
        return _page(session, where, limit, offset)


@router.post("/history/{history_id}/revert", response_model=RevertOut)
def revert(
    history_id: int,
    body: RevertIn,
    db: Database = Depends(get_db),
    user: CurrentUser = Depends(require(Permission.annotate)),
) -> dict[str, Any]:
    """Put the record back as it was before change ``history_id``, as a new change (its rows' ``reverts``
    is ``history_id``). ``revision`` is the image's current revision (the class's for a class; for a
    deleted class the revision it was deleted at): 409 when stale. Reverting a create deletes the
    record; reverting a delete re-creates it, with its old id when that is free (``entity_id`` says)."""
    with db.write() as session:
        row = session.get(History, history_id)
        if row is None:
            raise not_found("history_id", f"no history row {history_id}")
        _check_may_revert(user, row)
        result = edits.revert(session, history_id, body.revision, user.id)
        rows = (
            _page(session, [History.change_set == result.change_set], MAX_PAGE, 0)["items"] if result.change_set else []
        )
        return {"change_set": result.change_set, "entity": result.entity, "entity_id": result.entity_id, "rows": rows}


def _check_may_revert(user: CurrentUser, row: History) -> None:
    if row.entity == "class" and not user.may(Permission.manage):
        raise ApiError(403, None, f"the {user.role.value} role may not manage classes")
    statuses = {(record or {}).get("status") for record in (row.before, row.after)}
    if row.entity == "image" and ImageStatus.reviewed.value in statuses and not user.may(Permission.review):
        raise ApiError(403, None, f"the {user.role.value} role may not review")
