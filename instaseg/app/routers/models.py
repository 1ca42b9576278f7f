"""The project's trained model versions: their metrics, and which one is current (what predictions use)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from instaseg.app.auth import CurrentUser, Permission, current_user, get_db, require
from instaseg.app.db.database import Database
from instaseg.app.db.schema import ModelVersion
from instaseg.app.errors import not_found
from instaseg.app.jobs.train import make_current
from instaseg.app.routers.jobs import UtcDatetime

router = APIRouter(prefix="/api", tags=["models"])


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: int
    name: str
    architecture: str
    path: str = Field(description="the checkpoint, relative to the project folder")
    metrics: dict[str, Any] = Field(description="the validation of the checkpoint (mask_mAP, box_mAP, ...)")
    train_config: dict[str, Any]
    job_id: int | None = Field(description="the train job that made it")
    current: bool
    created_at: UtcDatetime


@router.get("/models")
def list_models(_user: CurrentUser = Depends(current_user), db: Database = Depends(get_db)) -> list[ModelOut]:
    """Every model version, the newest first."""
    with db.read() as session:
        return [
            ModelOut.model_validate(v) for v in session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc()))
        ]


@router.get("/models/{model_id}")
def get_model(model_id: int, _user: CurrentUser = Depends(current_user), db: Database = Depends(get_db)) -> ModelOut:
    with db.read() as session:
        return ModelOut.model_validate(_version(session, model_id))


@router.post("/models/{model_id}/current")
def set_current_model(
    model_id: int, _user: CurrentUser = Depends(require(Permission.manage)), db: Database = Depends(get_db)
) -> ModelOut:
    """Make this version the current model (the others stop being it)."""
    with db.write() as session:
        version = _version(session, model_id)
        make_current(session, version)
        return ModelOut.model_validate(version)


def _version(session: Session, model_id: int) -> ModelVersion:
    version = session.get(ModelVersion, model_id)
    if version is None:
        raise not_found("model_id", f"no model version {model_id}")
    return version
