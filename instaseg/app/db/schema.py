"""The project database: every table as a typed SQLAlchemy 2 mapping.

One database holds one project. Revisions are integers bumped by every write; a write names the
revision it read and is refused (409) when that is no longer the current one, so no edit is ever
silently overwritten. Every change to an annotation leaves a ``History`` row holding the record
before and after it, which is what the API shows, reverts and replays.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Enum, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def now() -> datetime:
    return datetime.now(UTC)


# SQLite would give the id of a deleted last row to the next one: a history row or a client holding the old id
# would then name a different record.
NEVER_REUSED_IDS = {"sqlite_autoincrement": True}


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


def _enum(kind: type[enum.Enum]) -> Enum:
    # Stored as the value text with a CHECK constraint, so adding a member needs no PostgreSQL type change.
    return Enum(
        kind, native_enum=False, create_constraint=True, values_callable=lambda k: [m.value for m in k], length=32
    )


class Role(enum.StrEnum):
    admin = "admin"
    annotator = "annotator"
    reviewer = "reviewer"


class ImageStatus(enum.StrEnum):
    new = "new"
    in_progress = "in_progress"
    done = "done"
    reviewed = "reviewed"


class Provenance(enum.StrEnum):
    human = "human"
    assistant = "assistant"
    model = "model"


class Project(Base):
    """The one row that names the project and where its images are."""

    __tablename__ = "project"
    __table_args__ = NEVER_REUSED_IDS
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    image_root: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=now)


class User(Base):
    __tablename__ = "users"
    __table_args__ = NEVER_REUSED_IDS
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[Role] = mapped_column(_enum(Role))
    # None for the built-in local user, who never logs in.
    password_hash: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=now)


class AuthToken(Base):
    """A login: only the token's SHA-256 is stored, so a copy of the database logs nobody in."""

    __tablename__ = "auth_tokens"
    __table_args__ = NEVER_REUSED_IDS
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=now)
    expires_at: Mapped[datetime]

    user: Mapped[User] = relationship()


class LabelClass(Base):
    __tablename__ = "classes"
    __table_args__ = NEVER_REUSED_IDS
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    color: Mapped[str] = mapped_column(String(7))  # "#rrggbb"
    hotkey: Mapped[str | None] = mapped_column(String(16), unique=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    supercategory: Mapped[str | None] = mapped_column(String(200))
    revision: Mapped[int] = mapped_column(Integer, default=1)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = NEVER_REUSED_IDS
    id: Mapped[int] = mapped_column(primary_key=True)
    # Relative to the project's image root, with "/" separators; never absolute, never "..".
    file_name: Mapped[str] = mapped_column(Text, unique=True)
    width: Mapped[int]
    height: Mapped[int]
    sha1: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[ImageStatus] = mapped_column(_enum(ImageStatus), default=ImageStatus.new, index=True)
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    uploaded: Mapped[bool] = mapped_column(Boolean, default=False)
    # COCO fields the project does not use itself (license, coco_url, ...), kept for a lossless export.
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now, onupdate=now)

    instances: Mapped[list[AnnotatedInstance]] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True, order_by="AnnotatedInstance.id"
    )


class AnnotatedInstance(Base):
    """One object in one image: its class and its mask, the shape it was drawn as, and who made it."""

    __tablename__ = "instances"
    __table_args__ = NEVER_REUSED_IDS
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    class_id: Mapped[int] = mapped_column(ForeignKey("classes.id", ondelete="RESTRICT"), index=True)
    # COCO compressed RLE, {"size": [h, w], "counts": str}: the truth; box and area are derived from it.
    rle: Mapped[dict[str, Any]]
    # The rings it was drawn as when it was drawn as a polygon (even-odd: inner rings are holes).
    polygon: Mapped[list[Any] | None]
    bbox: Mapped[list[Any]]
    area: Mapped[int]
    iscrowd: Mapped[bool] = mapped_column(Boolean, default=False)
    provenance: Mapped[Provenance] = mapped_column(_enum(Provenance), default=Provenance.human)
    assistant: Mapped[str | None] = mapped_column(String(100))
    model_version_id: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    revision: Mapped[int] = mapped_column(Integer, default=1)
    # COCO annotation fields the project does not use itself, kept for a lossless export.
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now, onupdate=now)

    image: Mapped[Image] = relationship(back_populates="instances")


class HistoryAction(enum.StrEnum):
    create = "create"
    update = "update"
    delete = "delete"


class History(Base):
    """One change to one record: who, when, and the record before and after (None when it did not exist).

    ``entity`` is ``instance``, ``image`` or ``class``; ``entity_id`` has no foreign key so that the
    history of a deleted record stays. ``change_set`` groups the rows of one save.
    """

    __tablename__ = "history"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=now)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    entity: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[int]
    image_id: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[HistoryAction] = mapped_column(_enum(HistoryAction))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    change_set: Mapped[str] = mapped_column(String(32), index=True)
    reverts: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_history_image", "image_id", "id"),
        Index("ix_history_entity", "entity", "entity_id"),
        NEVER_REUSED_IDS,
    )


# --- added by the second migration: the machine's side of the project -----------------------------


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


class DecisionStatus(enum.StrEnum):
    open = "open"
    accepted = "accepted"
    rejected = "rejected"


class ModelVersion(Base):
    """A trained model of the project: its checkpoint file (relative to the project folder) and metrics."""

    __tablename__ = "model_versions"
    __table_args__ = NEVER_REUSED_IDS
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    architecture: Mapped[str] = mapped_column(String(100))
    path: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    train_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    job_id: Mapped[int | None] = mapped_column(Integer)
    current: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=now)


class Suggestion(Base):
    """One finding of the label review (``instaseg.review``) and what a reviewer decided about it."""

    __tablename__ = "suggestions"
    __table_args__ = NEVER_REUSED_IDS
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    job_id: Mapped[int | None] = mapped_column(Integer, index=True)
    decision: Mapped[DecisionStatus] = mapped_column(_enum(DecisionStatus), default=DecisionStatus.open, index=True)
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    decided_at: Mapped[datetime | None]
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=now)


class Job(Base):
    """Work done by a worker process, never inside a request: train, pre-label, review, export.

    A worker claims a queued job, keeps ``heartbeat_at`` fresh while it runs, and records the end.
    A running job whose heartbeat stopped (its worker died) is retried or failed by the next worker.
    """

    __tablename__ = "jobs"
    __table_args__ = NEVER_REUSED_IDS
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), default=JobStatus.queued, index=True)
    progress: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=now)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=1)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)


class JobEvent(Base):
    """A progress, metrics or message event of a job (``instaseg.core.events``), as streamed to clients."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=now)
    kind: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (Index("ix_job_events_job", "job_id", "id"), NEVER_REUSED_IDS)
