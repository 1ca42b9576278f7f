"""The ``prelabel`` job: the project's current model draws instances on images nobody has labelled yet.

Each image is predicted and then written in a transaction of its own (``edits.change_instances``,
so every instance made or removed has its history row): a cancel or a killed worker leaves whole
images done and the others untouched. Re-running it replaces only what a model drew and nobody
touched since; human and assistant instances, and model ones a person has edited, always stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from instaseg.app.db.schema import AnnotatedInstance, Image, ImageStatus, LabelClass, ModelVersion, Provenance
from instaseg.app.edits import NewInstance, RleMask, change_instances, fresh_image, image_instances
from instaseg.app.errors import bad_request
from instaseg.app.jobs.kinds import JobContext, job_kind
from instaseg.core import events, io
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.engine.predictor import load

# An instance's revision when it was created: a higher one means somebody changed it since.
UNTOUCHED_REVISION = 1


class PrelabelParams(BaseModel):
    """Which images to pre-label and how; ``image_ids`` and ``statuses`` both narrow the choice."""

    model_config = ConfigDict(extra="forbid")

    image_ids: list[int] | None = Field(None, description="only these images (all of the statuses when None)")
    statuses: list[ImageStatus] = Field(
        default_factory=lambda: [ImageStatus.new], min_length=1, description="only images of these statuses"
    )
    score_threshold: float = Field(0.5, ge=0, le=1, description="drop detections scoring below this")
    max_detections: int = Field(100, ge=1, le=1000, description="at most this many instances per image")
    replace: bool = Field(
        True, description="remove the image's earlier model instances that nobody has edited before adding the new"
    )


@dataclass(frozen=True)
class CurrentModel:
    version_id: int
    path: Path


def current_model(session: Session, project_dir: Path) -> CurrentModel:
    """The project's current model version and its checkpoint; refused when there is none yet."""
    version = session.scalar(
        select(ModelVersion).where(ModelVersion.current.is_(True)).order_by(ModelVersion.id.desc()).limit(1)
    )
    if version is None:
        raise InstasegError("no trained model yet: run a train job")
    return CurrentModel(version.id, io.safe_join(project_dir, version.path))


def refuse_unknown_images(session: Session, image_ids: list[int]) -> None:
    """Refuse (422 naming ``image_ids``) ids the project has no image of."""
    unknown = sorted(set(image_ids) - set(session.scalars(select(Image.id).where(Image.id.in_(image_ids)))))
    if unknown:
        raise bad_request("image_ids", f"no images {unknown}")


def replaceable(instance: AnnotatedInstance) -> bool:
    """Whether a new prediction may replace ``instance``: a model drew it and nobody changed it since.

    An edit keeps the provenance it is sent with, so a model instance a person corrected may
    still say "model"; its raised revision is what tells it apart.
    """
    return instance.provenance == Provenance.model and instance.revision == UNTOUCHED_REVISION


@job_kind("prelabel", params=PrelabelParams)
def prelabel(context: JobContext) -> dict[str, Any]:
    """Predict the chosen images with the current model and store the detections as model instances.

    Detections of a class the project has no class of that name for are left out (and reported).
    Refuses a project without a current model and ``image_ids`` the project does not have.
    """
    params = context.params
    assert isinstance(params, PrelabelParams)
    with context.db.read() as session:
        model = current_model(session, context.project_dir)
        query = select(Image.id, Image.file_name).where(Image.status.in_(params.statuses)).order_by(Image.id)
        if params.image_ids is not None:
            refuse_unknown_images(session, params.image_ids)
            query = query.where(Image.id.in_(params.image_ids))
        chosen = session.execute(query).all()
        class_ids = dict(session.execute(select(LabelClass.name, LabelClass.id)).all())
    predictor = load(model.path)
    unmatched = sorted(set(predictor.class_names) - set(class_ids))
    if unmatched:
        events.warn(f"the project has no class {', '.join(map(repr, unmatched))}: their detections are left out")
    created = removed = 0
    for image_id, file_name in events.track(chosen, "prelabel", unit="image"):
        found = predictor.predict(
            io.safe_join(context.image_root, file_name),
            score_threshold=params.score_threshold,
            max_detections=params.max_detections,
        )
        new = [
            NewInstance(
                class_id=class_ids[predictor.class_names[class_index]],
                mask=RleMask(**rle),
                provenance=Provenance.model,
                model_version_id=model.version_id,
                score=float(score),
            )
            for rle, class_index, score in zip(
                mask_ops.encode_many(found.masks), found.class_ids, found.scores, strict=True
            )
            if predictor.class_names[class_index] in class_ids and mask_ops.area(rle) > 0
        ]
        with context.db.write() as session:
            image = fresh_image(session, image_id)
            if (image.height, image.width) != found.masks.shape[1:]:
                raise InstasegError(
                    f"is {found.masks.shape[2]}x{found.masks.shape[1]} pixels, but the project has it as "
                    f"{image.width}x{image.height}; scan the images again",
                    file=file_name,
                )
            old = [i.id for i in image_instances(session, image_id) if replaceable(i)] if params.replace else []
            if new or old:
                change_instances(session, image, user_id=context.user_id, create=new, delete=old)
        created += len(new)
        removed += len(old)
    return {"images": len(chosen), "instances": created, "replaced": removed, "unmatched_classes": unmatched}
