"""Whether the server is up and its database answers: for load balancers and ``instaseg app``'s start-up."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from sqlalchemy import text

from instaseg.app.auth import get_db
from instaseg.app.db.database import Database

router = APIRouter(prefix="/api", tags=["health"])


class Health(BaseModel):
    status: str
    schema_revision: str | None


@router.get("/health")
def health(db: Database = Depends(get_db)) -> Health:
    with db.read() as session:
        session.execute(text("SELECT 1"))
    return Health(status="ok", schema_revision=db.schema_revision())
