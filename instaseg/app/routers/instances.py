"""An image's instances: read them, save the whole image's edit at once, or change one instance.

Every write names the revision it read; a stale one gets 409 with the current state and changes
nothing (``instaseg.app.edits`` does the checking and keeps the history).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from instaseg.app import edits
from instaseg.app.auth import CurrentUser, Permission, current_user, get_db, require
from instaseg.app.db.database import Database
from instaseg.app.db.schema import Provenance
from instaseg.app.edits import ImageInstances, ImageOut, InstanceIn, InstanceOut, NewInstance, RleMask

router = APIRouter(prefix="/api", tags=["instances"])


class SaveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: int = Field(description="the image's revision the edit was made on")
    instances: list[InstanceIn] = Field(description="every instance the image is to have")


class ImageInstance(BaseModel):
    image: ImageOut
    instance: InstanceOut
    change_set: str | None


class InstancePatch(BaseModel):
    """The instance's revision as read, and the fields to set (at most one of ``polygon`` and ``mask``)."""

    model_config = ConfigDict(extra="forbid")

    revision: int
    class_id: int | None = None
    polygon: list[list[float]] | None = None
    mask: RleMask | None = None
    iscrowd: bool | None = None
    provenance: Provenance | None = None
    assistant: str | None = Field(default=None, max_length=100)
    model_version_id: int | None = None
    score: float | None = None


STALE: dict[int | str, dict[str, Any]] = {
    409: {"description": "a stale revision: nothing changed; the body's ``current`` is the stored state"}
}


@router.get("/images/{image_id}/instances", response_model=ImageInstances)
def list_instances(
    image_id: int, db: Database = Depends(get_db), _user: CurrentUser = Depends(current_user)
) -> dict[str, Any]:
    with db.read() as session:
        return edits.image_state(session, edits.fresh_image(session, image_id))


@router.put("/images/{image_id}/instances", response_model=ImageInstances, responses=STALE)
def save_instances(
    image_id: int,
    body: SaveRequest,
    db: Database = Depends(get_db),
    user: CurrentUser = Depends(require(Permission.annotate)),
) -> dict[str, Any]:
    """Make the image's instances exactly ``instances`` (those with an ``id`` kept, the others new,
    the missing deleted), if the image is still at ``revision``."""
    with db.write() as session:
        return edits.save_image(session, image_id, body.revision, body.instances, user.id).json()


@router.post("/images/{image_id}/instances", status_code=201)
def add_instance(
    image_id: int,
    body: NewInstance,
    db: Database = Depends(get_db),
    user: CurrentUser = Depends(require(Permission.annotate)),
) -> ImageInstance:
    with db.write() as session:
        result = edits.add_instance(session, image_id, body, user.id)
        return _one(result, result.created[0].id)


@router.patch("/instances/{instance_id}", responses=STALE)
def edit_instance(
    instance_id: int,
    body: InstancePatch,
    db: Database = Depends(get_db),
    user: CurrentUser = Depends(require(Permission.annotate)),
) -> ImageInstance:
    """Set the fields sent, if the instance is still at ``revision``; the image's revision is raised too."""
    changes: dict[str, Any] = body.model_dump(exclude={"revision"}, include=body.model_fields_set)
    with db.write() as session:
        result = edits.edit_instance(session, instance_id, body.revision, changes, user.id)
        return _one(result, instance_id)


@router.delete("/instances/{instance_id}", response_model=ImageInstances, responses=STALE)
def delete_instance(
    instance_id: int,
    revision: int = Query(description="the instance's revision as read"),
    db: Database = Depends(get_db),
    user: CurrentUser = Depends(require(Permission.annotate)),
) -> dict[str, Any]:
    """Delete the instance, if it is still at ``revision``; the image and its remaining instances."""
    with db.write() as session:
        return edits.delete_instance(session, instance_id, revision, user.id).json()


def _one(result: edits.SaveResult, instance_id: int) -> ImageInstance:
    instance = next(i for i in result.instances if i.id == instance_id)
    return ImageInstance(
        image=ImageOut.model_validate(edits.image_json(result.image, len(result.instances))),
        instance=InstanceOut.model_validate(edits.instance_json(instance)),
        change_set=result.change_set,
    )
