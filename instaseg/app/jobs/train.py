"""The ``train`` job: a model trained on the project's labelled images becomes its current model version.

The run writes into ``PROJECT_DIR/models/job-<id>`` (the engine writes every checkpoint atomically);
only a run that ended well adds a ``ModelVersion``, in the one transaction that also makes it the
current one. A failed, cancelled or killed run leaves the earlier current model, its row and its
file as they were.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import exists, or_, select, update
from sqlalchemy.orm import Session

from instaseg.app.db.schema import AnnotatedInstance, Image, ImageStatus, ModelVersion, Project
from instaseg.app.jobs.kinds import JobContext, job_kind
from instaseg.app.transfer import project_dataset
from instaseg.core.errors import InstasegError
from instaseg.engine.config import TrainConfig
from instaseg.engine.train import train
from instaseg.models import DEFAULT_MODEL, list_models

# Images checked by a person: they count as labelled even when they hold no object.
CHECKED = (ImageStatus.done, ImageStatus.reviewed)


class TrainJobParams(BaseModel):
    """What to train and on which images; unset values take ``TrainConfig``'s defaults."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(DEFAULT_MODEL, description="an architecture of `instaseg models`")
    preset: str | None = Field(None, description='model preset ("cpu", "gpu", "small"); by default for the device')
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="builder arguments over the preset's")
    epochs: int | None = Field(None, ge=1, description="passes over the training images (or give minutes)")
    minutes: float | None = Field(None, gt=0, description="time budget of the run (or give epochs)")
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    seed: int | None = Field(None, description="seeds the model, the shuffling and the train/validation split")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="share of the images held out to validate on")
    statuses: list[ImageStatus] = Field(
        default_factory=lambda: list(CHECKED),
        min_length=1,
        description='train on images of these statuses ("all": any); new and in-progress ones only with instances',
    )

    @field_validator("statuses", mode="before")
    @classmethod
    def _all_statuses(cls, value: Any) -> Any:
        return list(ImageStatus) if value == "all" else value

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        if name not in list_models():
            raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
        return name

    @model_validator(mode="after")
    def _valid_recipe(self) -> TrainJobParams:
        if self.epochs is None and self.minutes is None:
            raise ValueError("give a training length: epochs or minutes")
        try:
            self.train_config()
        except InstasegError as exc:
            raise ValueError(str(exc)) from None
        return self

    def train_config(self) -> TrainConfig:
        """The engine's recipe for these parameters (its own checks refuse bad values)."""
        given = {name: getattr(self, name) for name in ("epochs", "minutes", "batch_size", "lr", "seed")}
        return TrainConfig(
            model=self.model,
            preset=self.preset,
            model_kwargs=self.model_kwargs,
            **{name: value for name, value in given.items() if value is not None},
        )


@job_kind("train", params=TrainJobParams, max_attempts=1)
def train_model(context: JobContext) -> dict[str, Any]:
    """Train on the labelled images, validate on a held-out share, and make the result the current model.

    Refuses a project without labelled images of the chosen statuses; the engine refuses data it
    cannot train on (no classes, no instances).
    """
    params = context.params
    assert isinstance(params, TrainJobParams)
    config = params.train_config()
    with context.db.read() as session:
        image_ids = labelled_images(session, params.statuses)
        if not image_ids:
            wanted = " or ".join(status.value for status in params.statuses)
            raise InstasegError(f"no labelled images to train on (images of {wanted} with instances, or checked)")
        dataset = project_dataset(session, context.image_root, image_ids=image_ids)
    context.check_cancelled()
    train_ids, val_ids = split(image_ids, params.val_fraction, config.seed)
    out = context.project_dir / "models" / f"job-{context.job_id}"
    best = train(
        config, dataset.subset(train_ids), dataset.subset(val_ids) if val_ids else None, out=out, overwrite=True
    )
    metrics = {**best_validation(out / "metrics.jsonl"), "train_images": len(train_ids), "val_images": len(val_ids)}
    with context.db.write() as session:
        version = ModelVersion(
            name=f"{config.model}, job {context.job_id}",
            architecture=config.model,
            path=best.relative_to(context.project_dir).as_posix(),
            metrics=metrics,
            train_config=config.to_dict(),
            job_id=context.job_id,
        )
        session.add(version)
        session.flush()
        make_current(session, version)
        return {"model_version_id": version.id, "path": version.path, "metrics": metrics}


def make_current(session: Session, version: ModelVersion) -> None:
    """Make ``version`` the project's one current model version (in the caller's transaction)."""
    # The project row serialises every change of the current model, so that a version being added
    # by a training and one chosen by a user cannot both end up current.
    session.scalars(select(Project).with_for_update()).first()
    others = update(ModelVersion).where(ModelVersion.current.is_(True), ModelVersion.id != version.id)
    session.execute(others.values(current=False))
    version.current = True
    session.flush()


def labelled_images(session: Session, statuses: list[ImageStatus]) -> list[int]:
    """Ids of the images of ``statuses`` that hold an instance or were checked (done, reviewed), in order."""
    holds_instances = exists().where(AnnotatedInstance.image_id == Image.id)
    query = select(Image.id).where(Image.status.in_(statuses), or_(holds_instances, Image.status.in_(CHECKED)))
    return list(session.scalars(query.order_by(Image.id)))


def split(image_ids: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``image_ids`` as (train, validation), shuffled by ``seed``: the same ids always split the same way.

    Validation gets ``val_fraction`` of them, at least one when that is above 0 and two or more
    images are there, and never all.
    """
    shuffled = sorted(image_ids)
    random.Random(seed).shuffle(shuffled)
    count = round(len(shuffled) * val_fraction)
    if val_fraction > 0 and len(shuffled) >= 2:
        count = min(max(count, 1), len(shuffled) - 1)
    else:
        count = 0
    return sorted(shuffled[count:]), sorted(shuffled[:count])


def best_validation(metrics_file: Path) -> dict[str, Any]:
    """The validation of the run's best.pt (the first with the highest mask mAP) from its metrics.jsonl:
    mask_mAP, mask_mAP50, box_mAP and the iteration; empty for a run without validation."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    validations = [row for row in rows if "val_mask_mAP" in row]
    if not validations:
        return {}
    best = max(validations, key=lambda row: row["val_mask_mAP"])
    return {"iteration": best["iteration"], **{k[4:]: v for k, v in best.items() if k.startswith("val_")}}
