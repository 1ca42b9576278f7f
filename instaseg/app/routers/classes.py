"""The project's classes: list them; add, change and delete them (the manage permission), with history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from instaseg.app import edits
from instaseg.app.auth import CurrentUser, Permission, current_user, get_db, require
from instaseg.app.db.database import Database
from instaseg.app.db.schema import LabelClass
from instaseg.app.edits import COLOR_PATTERN, ClassOut

router = APIRouter(prefix="/api", tags=["classes"])


class ClassIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    color: str | None = Field(default=None, pattern=COLOR_PATTERN, description="#rrggbb; the palette's next if null")
    hotkey: str | None = Field(default=None, min_length=1, max_length=16)
    position: int | None = Field(default=None, description="the order in lists; after the last if null")
    supercategory: str | None = Field(default=None, max_length=200)


class ClassPatch(BaseModel):
    """The class's revision as read, and the fields to set."""

    model_config = ConfigDict(extra="forbid")

    revision: int
    name: str | None = Field(default=None, min_length=1, max_length=200)
    color: str | None = Field(default=None, pattern=COLOR_PATTERN)
    hotkey: str | None = Field(default=None, min_length=1, max_length=16)
    position: int | None = None
    supercategory: str | None = Field(default=None, max_length=200)


class ClassDeleted(BaseModel):
    id: int
    change_set: str


@router.get("/classes", response_model=list[ClassOut])
def list_classes(db: Database = Depends(get_db), _user: CurrentUser = Depends(current_user)) -> list[dict[str, Any]]:
    with db.read() as session:
        classes = session.scalars(select(LabelClass).order_by(LabelClass.position, LabelClass.id))
        return [edits.class_json(c) for c in classes]


@router.post("/classes", status_code=201, response_model=ClassOut)
def create_class(
    body: ClassIn, db: Database = Depends(get_db), user: CurrentUser = Depends(require(Permission.manage))
) -> dict[str, Any]:
    """A new class; 422 naming ``name`` or ``hotkey`` when another class has it."""
    with db.write() as session:
        return edits.class_json(edits.create_class(session, user_id=user.id, **body.model_dump()))


@router.patch("/classes/{class_id}", response_model=ClassOut)
def update_class(
    class_id: int,
    body: ClassPatch,
    db: Database = Depends(get_db),
    user: CurrentUser = Depends(require(Permission.manage)),
) -> dict[str, Any]:
    """Set the fields sent (``hotkey``/``supercategory`` null clears them), if the class is still at
    ``revision`` (409 with the current class otherwise)."""
    changes = body.model_dump(include=body.model_fields_set - {"revision"})
    with db.write() as session:
        return edits.class_json(edits.update_class(session, class_id, body.revision, changes, user.id))


@router.delete("/classes/{class_id}")
def delete_class(
    class_id: int,
    revision: int = Query(description="the class's revision as read"),
    reassign_to: int | None = Query(default=None, description="move the class's instances to this class first"),
    db: Database = Depends(get_db),
    user: CurrentUser = Depends(require(Permission.manage)),
) -> ClassDeleted:
    """Delete the class; 409 while instances have it, unless ``reassign_to`` names the class they move to."""
    with db.write() as session:
        change_set = edits.delete_class(session, class_id, revision, user.id, reassign_to=reassign_to)
    return ClassDeleted(id=class_id, change_set=change_set)
