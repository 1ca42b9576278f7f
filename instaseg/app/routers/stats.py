"""How far the labelling is: images per status, instances per class, provenance and author, and sizes."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from instaseg.app.auth import CurrentUser, current_user, get_db
from instaseg.app.db.database import Database
from instaseg.app.db.schema import AnnotatedInstance, Image, ImageStatus, LabelClass, Provenance, User

router = APIRouter(prefix="/api", tags=["stats"])

AREA_QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


class ClassCount(BaseModel):
    class_id: int
    name: str
    count: int


class AuthorCount(BaseModel):
    user_id: int | None
    name: str | None = Field(description="null for instances whose author was deleted or that have none")
    count: int


class AreaQuantile(BaseModel):
    quantile: float
    area: float


class Stats(BaseModel):
    images: int
    images_per_status: dict[ImageStatus, int]
    images_without_instances: int
    instances: int
    mean_instances_per_image: float
    instances_per_class: list[ClassCount]
    instances_per_provenance: dict[Provenance, int]
    instances_per_author: list[AuthorCount]
    area_quantiles: list[AreaQuantile] = Field(description="empty when there are no instances")


@router.get("/stats")
def stats(db: Database = Depends(get_db), _user: CurrentUser = Depends(current_user)) -> Stats:
    with db.read() as session:
        per_status = dict(session.execute(select(Image.status, func.count(Image.id)).group_by(Image.status)).all())
        images = sum(per_status.values())
        with_instances = session.scalar(select(func.count(func.distinct(AnnotatedInstance.image_id)))) or 0
        per_class = session.execute(
            select(LabelClass.id, LabelClass.name, func.count(AnnotatedInstance.id))
            .outerjoin(AnnotatedInstance, AnnotatedInstance.class_id == LabelClass.id)
            .group_by(LabelClass.id, LabelClass.name)
            .order_by(LabelClass.position, LabelClass.id)
        ).all()
        per_provenance = dict(
            session.execute(
                select(AnnotatedInstance.provenance, func.count(AnnotatedInstance.id)).group_by(
                    AnnotatedInstance.provenance
                )
            ).all()
        )
        per_author = session.execute(
            select(AnnotatedInstance.author_id, User.name, func.count(AnnotatedInstance.id))
            .outerjoin(User, User.id == AnnotatedInstance.author_id)
            .group_by(AnnotatedInstance.author_id, User.name)
            .order_by(func.count(AnnotatedInstance.id).desc())
        ).all()
        areas = np.fromiter(session.scalars(select(AnnotatedInstance.area)), np.float64)
    instances = len(areas)
    return Stats(
        images=images,
        images_per_status={status: per_status.get(status, 0) for status in ImageStatus},
        images_without_instances=images - with_instances,
        instances=instances,
        mean_instances_per_image=instances / images if images else 0.0,
        instances_per_class=[ClassCount(class_id=i, name=n, count=c) for i, n, c in per_class],
        instances_per_provenance={p: per_provenance.get(p, 0) for p in Provenance},
        instances_per_author=[AuthorCount(user_id=u, name=n, count=c) for u, n, c in per_author],
        area_quantiles=[
            AreaQuantile(quantile=q, area=float(a))
            for q, a in zip(AREA_QUANTILES, np.quantile(areas, AREA_QUANTILES), strict=True)
        ]
        if instances
        else [],
    )
