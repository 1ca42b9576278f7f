"""The one place instances, classes and an image's workflow fields change, each change with its history.

Every function here runs inside the caller's transaction (``with db.write() as session:``) and
raises ``ApiError`` (4xx naming the field) before anything is written when the input is wrong, so
the transaction rolls back and nothing changes. Each change leaves one ``History`` row holding the
record's JSON before and after it; the rows of one call share a ``change_set``. Every change to an
image's instances raises the image's revision, which is what makes a stale whole-image save fail.

Public API:

- ``instance_json(instance) -> dict``: the API's InstanceOut dict; also what ``History.before`` /
  ``History.after`` hold for an instance.
- ``image_json(image, instance_count) -> dict``: the API's ImageOut dict.
- ``class_json(label_class) -> dict``: the API's ClassOut dict; also a class's history JSON.
- ``image_state(session, image) -> dict``: ``{"image": ImageOut, "instances": [InstanceOut]}`` as stored now.
- ``NewInstance`` (pydantic): an instance to create: ``class_id``, ``polygon`` | ``mask``, ``iscrowd``,
  ``provenance``, ``assistant``, ``model_version_id``, ``score``, ``extra``. ``InstanceIn`` adds
  ``id`` and ``revision`` for whole-image saves.
- ``change_instances(session, image, *, user_id, create=(), update=None, delete=(), change_set=None)
  -> list[AnnotatedInstance]``: create, update and delete instances of one image without checking
  the image's revision (pre-label jobs, accepted suggestions, moving a deleted class's instances);
  ``change_instances_if_any`` (same arguments) answers with the whole ``SaveResult``.
- ``save_image(session, image_id, expected_revision, instances, user_id, change_set=None) -> SaveResult``:
  the whole-image save, a compare-and-swap on the image's revision.
- ``add_instance(session, image_id, new, user_id) -> SaveResult``,
  ``edit_instance(session, instance_id, expected_revision, changes, user_id) -> SaveResult`` and
  ``delete_instance(session, instance_id, expected_revision, user_id) -> SaveResult``: one instance,
  a compare-and-swap on its revision.
- ``update_image(session, image_id, expected_revision, changes, user_id) -> Image``: status, assignee.
- ``create_class(session, *, user_id, name, color=None, hotkey=None, position=None, supercategory=None)
  -> LabelClass``, ``update_class(session, class_id, expected_revision, changes, user_id) -> LabelClass``,
  ``delete_class(session, class_id, expected_revision, user_id, *, reassign_to=None) -> str``.
- ``revert(session, history_id, expected_revision, user_id) -> RevertResult``: one history row undone
  as a new change.
- ``replay(rows) -> {instance_id: instance_json}``: an image's instances rebuilt from its history alone.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from instaseg.app.db.schema import (
    AnnotatedInstance,
    History,
    HistoryAction,
    Image,
    ImageStatus,
    LabelClass,
    Provenance,
    User,
    now,
)
from instaseg.app.errors import ApiError, bad_request, conflict, not_found
from instaseg.app.shapes import Shape, shape_from_input
from instaseg.viz import instance_color

# An instance's fields besides its shape; an update may set any of these.
INSTANCE_FIELDS = ("class_id", "iscrowd", "provenance", "assistant", "model_version_id", "score", "extra")
NOT_NULL_FIELDS = ("class_id", "iscrowd", "provenance", "extra")
CLASS_FIELDS = ("name", "color", "hotkey", "position", "supercategory")
IMAGE_FIELDS = ("status", "assignee_id")
COLOR_PATTERN = r"^#[0-9a-fA-F]{6}$"


# --- the API's JSON -------------------------------------------------------------------------------


class RleMask(BaseModel):
    size: list[int] = Field(min_length=2, max_length=2, description="[height, width]")
    counts: str | list[int] = Field(description="COCO compressed RLE (str) or uncompressed run lengths (list)")


class NewInstance(BaseModel):
    """An instance to create: its class and exactly one of ``polygon`` (rings filled even-odd: a ring
    inside another is a hole) and ``mask`` (a COCO RLE of the image's size)."""

    model_config = ConfigDict(extra="forbid")

    class_id: int
    polygon: list[list[float]] | None = None
    mask: RleMask | None = None
    iscrowd: bool = False
    provenance: Provenance = Provenance.human
    assistant: str | None = Field(default=None, max_length=100)
    model_version_id: int | None = None
    score: float | None = None
    extra: dict[str, Any] = Field(default_factory=dict, description="COCO fields kept for a lossless export")


class InstanceIn(NewInstance):
    """An instance of a whole-image save. With ``id``, an existing instance of the image: the fields
    sent are set, those not sent stay, and ``revision``, when sent, must be its current one. Without
    ``id``, a new instance."""

    id: int | None = None
    revision: int | None = None


class InstanceOut(BaseModel):
    id: int
    revision: int
    class_id: int
    mask: RleMask
    polygon: list[list[float]] | None
    bbox: list[float]
    area: int
    iscrowd: bool
    provenance: Provenance
    assistant: str | None
    model_version_id: int | None
    score: float | None
    author_id: int | None
    extra: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class ImageOut(BaseModel):
    id: int
    file_name: str
    width: int
    height: int
    sha1: str | None
    status: ImageStatus
    assignee_id: int | None
    revision: int
    instance_count: int
    created_at: datetime
    updated_at: datetime


class ImageInstances(BaseModel):
    image: ImageOut
    instances: list[InstanceOut]
    change_set: str | None = Field(
        default=None, description="the history change set of this write; null when it changed nothing"
    )


class ClassOut(BaseModel):
    id: int
    name: str
    color: str
    hotkey: str | None
    position: int
    supercategory: str | None
    revision: int


def _stamp(moment: datetime) -> str:
    # SQLite hands datetimes back without their zone; they were stored in UTC.
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    # Written as pydantic writes it, so a 409's ``current`` reads like any answer's body.
    return aware.isoformat().replace("+00:00", "Z")


def instance_json(instance: AnnotatedInstance) -> dict[str, Any]:
    """The instance as the API shows it (InstanceOut) and as its history rows hold it."""
    return {
        "id": instance.id,
        "revision": instance.revision,
        "class_id": instance.class_id,
        "mask": {"size": list(instance.rle["size"]), "counts": instance.rle["counts"]},
        "polygon": instance.polygon,
        "bbox": list(instance.bbox),
        "area": instance.area,
        "iscrowd": bool(instance.iscrowd),
        "provenance": Provenance(instance.provenance).value,
        "assistant": instance.assistant,
        "model_version_id": instance.model_version_id,
        "score": instance.score,
        "author_id": instance.author_id,
        "extra": instance.extra or {},
        "created_at": _stamp(instance.created_at),
        "updated_at": _stamp(instance.updated_at),
    }


def image_json(image: Image, instance_count: int) -> dict[str, Any]:
    """The image as the API shows it (ImageOut)."""
    return {
        "id": image.id,
        "file_name": image.file_name,
        "width": image.width,
        "height": image.height,
        "sha1": image.sha1,
        "status": ImageStatus(image.status).value,
        "assignee_id": image.assignee_id,
        "revision": image.revision,
        "instance_count": instance_count,
        "created_at": _stamp(image.created_at),
        "updated_at": _stamp(image.updated_at),
    }


def class_json(label_class: LabelClass) -> dict[str, Any]:
    """The class as the API shows it (ClassOut) and as its history rows hold it."""
    return {
        "id": label_class.id,
        "name": label_class.name,
        "color": label_class.color,
        "hotkey": label_class.hotkey,
        "position": label_class.position,
        "supercategory": label_class.supercategory,
        "revision": label_class.revision,
    }


def _workflow_json(image: Image) -> dict[str, Any]:
    # An image's own history holds only what users change about it; its instances have rows of their own.
    return {"status": ImageStatus(image.status).value, "assignee_id": image.assignee_id, "revision": image.revision}


def new_change_set() -> str:
    return uuid.uuid4().hex


def image_instances(session: Session, image_id: int) -> list[AnnotatedInstance]:
    """The image's instances as committed now, not as an earlier read in this session left them."""
    query = select(AnnotatedInstance).where(AnnotatedInstance.image_id == image_id).order_by(AnnotatedInstance.id)
    return list(session.scalars(query.execution_options(populate_existing=True)))


def image_state(session: Session, image: Image, instances: Sequence[AnnotatedInstance] | None = None) -> dict[str, Any]:
    """``{"image": ImageOut, "instances": [InstanceOut]}`` of ``image`` as stored now."""
    found = image_instances(session, image.id) if instances is None else instances
    return {"image": image_json(image, len(found)), "instances": [instance_json(i) for i in found]}


def fresh_image(session: Session, image_id: int, field: str = "image_id", *, lock: bool = False) -> Image:
    """The image as committed now (``lock``: and held until the transaction ends); 404 naming ``field``."""
    image = session.get(Image, image_id, populate_existing=True, with_for_update=lock)
    if image is None:
        raise not_found(field, f"no image {image_id}")
    return image


@dataclass(frozen=True)
class SaveResult:
    """What a write left: the image and its instances now, its change set (None when nothing changed)
    and the instances it created."""

    image: Image
    instances: list[AnnotatedInstance]
    change_set: str | None
    created: list[AnnotatedInstance] = dataclasses.field(default_factory=list)

    def json(self) -> dict[str, Any]:
        """The ImageInstances dict."""
        return {**image_state_of(self.image, self.instances), "change_set": self.change_set}


def image_state_of(image: Image, instances: Sequence[AnnotatedInstance]) -> dict[str, Any]:
    return {"image": image_json(image, len(instances)), "instances": [instance_json(i) for i in instances]}


# --- instances ------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """The checked changes to one image: new instances with their shapes, fields to set, instances to delete."""

    create: list[tuple[NewInstance, Shape]] = dataclasses.field(default_factory=list)
    update: list[tuple[AnnotatedInstance, dict[str, Any]]] = dataclasses.field(default_factory=list)
    delete: list[AnnotatedInstance] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.create or self.update or self.delete)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _shape(polygon: Any, mask: Any, image: Image, field: str) -> Shape:
    if isinstance(mask, BaseModel):
        mask = mask.model_dump()
    try:
        return shape_from_input(polygon, mask, image.width, image.height, field or "body")
    except ApiError as exc:
        # A single-instance request names its fields from the top ("polygon.0", not "body.polygon.0").
        if not field and exc.field and exc.field.startswith("body."):
            exc.field = exc.field[len("body.") :]
        raise


def _shape_changes(current: AnnotatedInstance, sent: dict[str, Any], image: Image, field: str) -> dict[str, Any]:
    """The stored shape fields for the sent polygon or mask; {} when it is the shape stored already."""
    polygon, mask = sent.get("polygon"), sent.get("mask")
    if isinstance(mask, BaseModel):
        mask = mask.model_dump()
    # Comparing what was sent with what is stored first saves rasterising the shapes a save leaves alone.
    if mask is None and polygon is not None and current.polygon == polygon:
        return {}
    if polygon is None and mask is not None and current.polygon is None:
        if list(mask.get("size") or ()) == list(current.rle["size"]) and mask.get("counts") == current.rle["counts"]:
            return {}
    shape = _shape(polygon, mask, image, field)
    if shape.rle == current.rle and shape.polygon == current.polygon:
        return {}
    return {"rle": shape.rle, "polygon": shape.polygon, "bbox": shape.bbox, "area": shape.area}


def _field_changes(
    session: Session, image: Image, current: AnnotatedInstance, sent: dict[str, Any], field: str
) -> dict[str, Any]:
    """What ``sent`` changes of ``current`` (shape as stored fields), checked; {} when nothing."""
    unknown = set(sent) - {*INSTANCE_FIELDS, "polygon", "mask", "revision"}
    if unknown:
        raise bad_request(_join(field, sorted(unknown)[0]), "not a field of an instance")
    if sent.get("revision") is not None and sent["revision"] != current.revision:
        raise conflict(
            _join(field, "revision"),
            f"instance {current.id} is at revision {current.revision}, not {sent['revision']}; reload it and merge",
            image_state(session, image),
        )
    changes: dict[str, Any] = {}
    if sent.get("polygon") is not None or sent.get("mask") is not None:
        changes.update(_shape_changes(current, sent, image, field))
    for name in INSTANCE_FIELDS:
        if name not in sent:
            continue
        if sent[name] is None and name in NOT_NULL_FIELDS:
            raise bad_request(_join(field, name), f"{name} cannot be null")
        value = Provenance(sent[name]) if name == "provenance" else sent[name]
        if value != getattr(current, name):
            changes[name] = value
    return changes


def _check_classes(session: Session, wanted: list[tuple[int, str]]) -> None:
    if not wanted:
        return
    known = set(session.scalars(select(LabelClass.id).where(LabelClass.id.in_({c for c, _ in wanted}))))
    for class_id, field in wanted:
        if class_id not in known:
            raise bad_request(field, f"no class {class_id}")


def _plan(
    session: Session,
    image: Image,
    current: Sequence[AnnotatedInstance],
    create: Sequence[tuple[NewInstance, str]],
    updates: Sequence[tuple[int, dict[str, Any], str]],
    delete: Sequence[tuple[int, str]],
) -> _Plan:
    """Check every requested change against the image's instances ``current``; refuse the first bad one."""
    by_id = {i.id: i for i in current}
    named: set[int] = set()
    for instance_id, field in [(i, f) for i, _, f in updates] + list(delete):
        if instance_id not in by_id:
            raise not_found(field, f"image {image.id} has no instance {instance_id}")
        if instance_id in named:
            raise bad_request(field, f"instance {instance_id} is named twice")
        named.add(instance_id)
    plan = _Plan(delete=[by_id[i] for i, _ in delete])
    class_ids: list[tuple[int, str]] = []
    for new, field in create:
        plan.create.append((new, _shape(new.polygon, new.mask, image, field)))
        class_ids.append((new.class_id, _join(field, "class_id")))
    for instance_id, sent, field in updates:
        changes = _field_changes(session, image, by_id[instance_id], sent, field)
        if "class_id" in changes:
            class_ids.append((changes["class_id"], _join(field, "class_id")))
        if changes:
            plan.update.append((by_id[instance_id], changes))
    _check_classes(session, class_ids)
    return plan


def _record(
    session: Session,
    entity: str,
    entity_id: int,
    image_id: int | None,
    action: HistoryAction,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    *,
    user_id: int | None,
    change_set: str,
    moment: datetime,
    reverts: int | None = None,
) -> None:
    session.add(
        History(
            at=moment,
            user_id=user_id,
            entity=entity,
            entity_id=entity_id,
            image_id=image_id,
            action=action,
            before=before,
            after=after,
            change_set=change_set,
            reverts=reverts,
        )
    )


def _apply(
    session: Session,
    image: Image,
    plan: _Plan,
    *,
    user_id: int | None,
    change_set: str,
    moment: datetime,
    reverts: int | None = None,
    ids: Sequence[int | None] = (),
) -> list[AnnotatedInstance]:
    """Write ``plan`` with its history rows; the created instances (``ids``: the id each is to take, if any)."""
    record = functools.partial(_record, session, user_id=user_id, change_set=change_set, moment=moment, reverts=reverts)
    for instance in plan.delete:
        record("instance", instance.id, image.id, HistoryAction.delete, instance_json(instance), None)
        session.delete(instance)
    for instance, changes in plan.update:
        before = instance_json(instance)
        for name, value in changes.items():
            setattr(instance, name, value)
        instance.revision += 1
        instance.updated_at = moment
        record("instance", instance.id, image.id, HistoryAction.update, before, instance_json(instance))
    created = []
    for position, (new, shape) in enumerate(plan.create):
        instance = AnnotatedInstance(
            image_id=image.id,
            class_id=new.class_id,
            rle=shape.rle,
            polygon=shape.polygon,
            bbox=shape.bbox,
            area=shape.area,
            iscrowd=new.iscrowd,
            provenance=new.provenance,
            assistant=new.assistant,
            model_version_id=new.model_version_id,
            score=new.score,
            author_id=user_id,
            revision=1,
            extra=dict(new.extra),
            created_at=moment,
            updated_at=moment,
        )
        wanted_id = ids[position] if position < len(ids) else None
        if wanted_id is not None:
            instance.id = wanted_id
        session.add(instance)
        created.append(instance)
    # The deletes go first (a re-created instance may take a deleted one's id) and the new ids are needed below.
    session.flush()
    for instance in created:
        record("instance", instance.id, image.id, HistoryAction.create, None, instance_json(instance))
    session.flush()
    return created


def _after(
    current: Sequence[AnnotatedInstance], plan: _Plan, created: list[AnnotatedInstance]
) -> list[AnnotatedInstance]:
    """The image's instances once ``plan`` is written, without reading them again."""
    deleted = {id(i) for i in plan.delete}
    return sorted([i for i in current if id(i) not in deleted] + created, key=lambda i: i.id)


def _bump_image(session: Session, image: Image, moment: datetime, expected_revision: int | None = None) -> bool:
    """Raise the image's revision by one; with ``expected_revision``, only when it is still that one.

    The single UPDATE is the compare-and-swap: on PostgreSQL a concurrent writer of the row waits
    and then finds the new revision, on SQLite writers run one at a time, so two writes can never
    both pass the same revision.
    """
    statement = update(Image).where(Image.id == image.id)
    if expected_revision is not None:
        statement = statement.where(Image.revision == expected_revision)
    statement = statement.values(revision=Image.revision + 1, updated_at=moment).returning(Image.revision)
    new_revision = session.execute(statement.execution_options(synchronize_session=False)).scalar()
    if new_revision is None:
        return False
    set_committed_value(image, "revision", new_revision)
    set_committed_value(image, "updated_at", moment)
    return True


def _stale(session: Session, image: Image, expected_revision: int) -> ApiError:
    image = fresh_image(session, image.id)
    return conflict(
        "revision",
        f"image {image.id} is at revision {image.revision}, not {expected_revision}; reload it and merge",
        image_state(session, image),
    )


def _change(
    session: Session,
    image_id: int,
    *,
    user_id: int | None,
    create: Sequence[tuple[NewInstance, str]] = (),
    updates: Sequence[tuple[int, dict[str, Any], str]] = (),
    delete: Sequence[tuple[int, str]] = (),
    change_set: str | None = None,
    image_field: str = "image_id",
) -> SaveResult:
    # Holding the image row from the start makes a concurrent writer of this image wait before it reads.
    image = fresh_image(session, image_id, image_field, lock=True)
    current = image_instances(session, image.id)
    plan = _plan(session, image, current, create, updates, delete)
    if not plan:
        return SaveResult(image, current, None)
    moment = now()
    _bump_image(session, image, moment)
    change_set = change_set or new_change_set()
    created = _apply(session, image, plan, user_id=user_id, change_set=change_set, moment=moment)
    return SaveResult(image, _after(current, plan, created), change_set, created)


def change_instances(
    session: Session,
    image: Image,
    *,
    user_id: int | None,
    create: Sequence[NewInstance] = (),
    update: dict[int, dict[str, Any]] | None = None,
    delete: Sequence[int] = (),
    change_set: str | None = None,
) -> list[AnnotatedInstance]:
    """Create, update and delete instances of ``image``; the image's instances afterwards.

    ``update`` maps an instance id to the fields to set (``class_id``, ``polygon`` or ``mask``,
    ``iscrowd``, ``provenance``, ``assistant``, ``model_version_id``, ``score``, ``extra``), plus
    ``revision``: when given, the instance must still be at it (409). Refuses unknown classes,
    invalid shapes (422) and ids not of this image (404), naming ``create.K...``, ``update.ID...``
    or ``delete.K``. Each changed instance gets a history row and its revision raised; the image's
    revision is raised once, when anything changed. The image's revision is not checked: this is
    for changes that need not rest on what a user saw.
    """
    return change_instances_if_any(
        session, image, user_id=user_id, create=create, update=update, delete=delete, change_set=change_set
    ).instances


def change_instances_if_any(
    session: Session,
    image: Image,
    *,
    user_id: int | None,
    create: Sequence[NewInstance] = (),
    update: dict[int, dict[str, Any]] | None = None,
    delete: Sequence[int] = (),
    change_set: str | None = None,
) -> SaveResult:
    """``change_instances``, answering with the whole ``SaveResult``: its change set is None (and the
    image's revision as it was) when nothing changed."""
    return _change(
        session,
        image.id,
        user_id=user_id,
        create=[(new, f"create.{k}") for k, new in enumerate(create)],
        updates=[(instance_id, fields, f"update.{instance_id}") for instance_id, fields in (update or {}).items()],
        delete=[(instance_id, f"delete.{k}") for k, instance_id in enumerate(delete)],
        change_set=change_set,
    )


def save_image(
    session: Session,
    image_id: int,
    expected_revision: int,
    instances: Sequence[InstanceIn],
    user_id: int | None,
    change_set: str | None = None,
) -> SaveResult:
    """The whole-image save: make ``image_id``'s instances exactly ``instances``.

    Sent instances with an ``id`` are kept (fields sent and different are set; a ``revision``, when
    sent, must be current), those without are created, the image's instances not sent are deleted;
    an instance that does not change is not rewritten and gets no history row. Refuses with 409
    (field ``revision``, ``current`` the stored state) when the image is no longer at
    ``expected_revision``, 404 for an unknown image or an ``id`` not of this image, 422 naming
    ``instances.K...`` for unknown classes and invalid shapes. A save that changes nothing leaves
    the revision as it is (and its change set is None).
    """
    # Held from here, so that the instances read next are those of the revision just checked.
    image = fresh_image(session, image_id, lock=True)
    if image.revision != expected_revision:
        raise _stale(session, image, expected_revision)
    current = image_instances(session, image.id)
    create: list[tuple[NewInstance, str]] = []
    updates: list[tuple[int, dict[str, Any], str]] = []
    for k, sent in enumerate(instances):
        if sent.id is None:
            create.append((sent, f"instances.{k}"))
        else:
            updates.append((sent.id, sent.model_dump(include=sent.model_fields_set - {"id"}), f"instances.{k}"))
    kept = {instance_id for instance_id, _, _ in updates}
    delete = [(i.id, "instances") for i in current if i.id not in kept]
    plan = _plan(session, image, current, create, updates, delete)
    if not plan:
        return SaveResult(image, current, None)
    moment = now()
    if not _bump_image(session, image, moment, expected_revision):
        raise _stale(session, image, expected_revision)
    change_set = change_set or new_change_set()
    created = _apply(session, image, plan, user_id=user_id, change_set=change_set, moment=moment)
    return SaveResult(image, _after(current, plan, created), change_set, created)


def _image_of(session: Session, instance_id: int) -> int:
    image_id = session.scalar(select(AnnotatedInstance.image_id).where(AnnotatedInstance.id == instance_id))
    if image_id is None:
        raise not_found("instance_id", f"no instance {instance_id}")
    return image_id


def edit_instance(
    session: Session, instance_id: int, expected_revision: int, changes: dict[str, Any], user_id: int | None
) -> SaveResult:
    """Set fields of one instance (as ``change_instances``'s ``update``), which must still be at
    ``expected_revision`` (409, field ``revision``, ``current`` the image's state); the image's
    revision is raised too. 404 (``instance_id``) when unknown, 422 naming the field."""
    return _change(
        session,
        _image_of(session, instance_id),
        user_id=user_id,
        updates=[(instance_id, {**changes, "revision": expected_revision}, "")],
        image_field="instance_id",
    )


def delete_instance(session: Session, instance_id: int, expected_revision: int, user_id: int | None) -> SaveResult:
    """Delete one instance, which must still be at ``expected_revision`` (409; 404 when unknown)."""
    image = fresh_image(session, _image_of(session, instance_id), "instance_id", lock=True)
    instance = session.get(AnnotatedInstance, instance_id, populate_existing=True)
    if instance is None:
        raise not_found("instance_id", f"no instance {instance_id}")
    if instance.revision != expected_revision:
        raise conflict(
            "revision",
            f"instance {instance_id} is at revision {instance.revision}, not {expected_revision}; reload it",
            image_state(session, image),
        )
    moment = now()
    _bump_image(session, image, moment)
    change_set = new_change_set()
    _apply(session, image, _Plan(delete=[instance]), user_id=user_id, change_set=change_set, moment=moment)
    return SaveResult(image, image_instances(session, image.id), change_set)


# --- images ---------------------------------------------------------------------------------------


def _update_image(
    session: Session,
    image_id: int,
    expected_revision: int,
    changes: dict[str, Any],
    user_id: int | None,
    change_set: str,
    reverts: int | None = None,
) -> Image:
    image = fresh_image(session, image_id)
    if image.revision != expected_revision:
        raise _stale(session, image, expected_revision)
    if changes.get("assignee_id") is not None and session.get(User, changes["assignee_id"]) is None:
        raise bad_request("assignee_id", f"no user {changes['assignee_id']}")
    changed = {k: v for k, v in changes.items() if k in IMAGE_FIELDS and getattr(image, k) != v}
    if not changed:
        return image
    before = _workflow_json(image)
    moment = now()
    if not _bump_image(session, image, moment, expected_revision):
        raise _stale(session, image, expected_revision)
    for name, value in changed.items():
        setattr(image, name, value)
    session.flush()
    _record(
        session,
        "image",
        image.id,
        image.id,
        HistoryAction.update,
        before,
        _workflow_json(image),
        user_id=user_id,
        change_set=change_set,
        moment=moment,
        reverts=reverts,
    )
    session.flush()
    return image


def update_image(
    session: Session, image_id: int, expected_revision: int, changes: dict[str, Any], user_id: int | None
) -> Image:
    """Set an image's ``status`` and/or ``assignee_id`` (a compare-and-swap on its revision), with a history row.

    Refuses 404 for an unknown image, 409 (``revision``) when stale, 422 (``assignee_id``) for an
    unknown user. Who may set ``reviewed`` is the caller's to check.
    """
    return _update_image(session, image_id, expected_revision, changes, user_id, new_change_set())


# --- classes --------------------------------------------------------------------------------------


def default_color(session: Session) -> str:
    """The next colour of the palette, so classes added one after another look apart."""
    count = session.scalar(select(func.count(LabelClass.id))) or 0
    return "#{:02x}{:02x}{:02x}".format(*instance_color(count))


def _check_unique(session: Session, fields: dict[str, Any], class_id: int | None) -> None:
    for name in ("name", "hotkey"):
        value = fields.get(name)
        if value is None:
            continue
        other = session.scalar(select(LabelClass.id).where(getattr(LabelClass, name) == value))
        if other is not None and other != class_id:
            raise bad_request(name, f"class {other} already has the {name} {value!r}")


def _flush_unique(session: Session, fields: dict[str, Any]) -> None:
    # A concurrent writer may take the name between the check and the write (PostgreSQL).
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise bad_request(
            "hotkey" if "name" not in fields else "name", "another class has this name or hotkey"
        ) from exc


def _fresh_class(session: Session, class_id: int, field: str = "class_id") -> LabelClass:
    label_class = session.get(LabelClass, class_id, populate_existing=True)
    if label_class is None:
        raise not_found(field, f"no class {class_id}")
    return label_class


def _class_stale(session: Session, class_id: int, expected_revision: int) -> ApiError:
    label_class = _fresh_class(session, class_id)
    return conflict(
        "revision",
        f"class {class_id} is at revision {label_class.revision}, not {expected_revision}; reload it",
        class_json(label_class),
    )


def _bump_class(session: Session, label_class: LabelClass, expected_revision: int, values: dict[str, Any]) -> None:
    """Set ``values`` and raise the revision in one compare-and-swap UPDATE (409 when stale)."""
    statement = (
        update(LabelClass)
        .where(LabelClass.id == label_class.id, LabelClass.revision == expected_revision)
        .values(revision=LabelClass.revision + 1, **values)
        .returning(LabelClass.revision)
        .execution_options(synchronize_session=False)
    )
    try:
        with session.begin_nested():
            new_revision = session.execute(statement).scalar()
    except IntegrityError as exc:
        raise bad_request("name" if "name" in values else "hotkey", "another class has this name or hotkey") from exc
    if new_revision is None:
        raise _class_stale(session, label_class.id, expected_revision)
    for name, value in values.items():
        set_committed_value(label_class, name, value)
    set_committed_value(label_class, "revision", new_revision)


def create_class(
    session: Session,
    *,
    user_id: int | None,
    name: str,
    color: str | None = None,
    hotkey: str | None = None,
    position: int | None = None,
    supercategory: str | None = None,
    change_set: str | None = None,
) -> LabelClass:
    """A new class (its colour the palette's next when None, its position after the last when None);
    422 naming ``name`` or ``hotkey`` when another class has it."""
    fields = {"name": name, "hotkey": hotkey}
    _check_unique(session, fields, None)
    if position is None:
        last = session.scalar(select(func.max(LabelClass.position)))
        position = 0 if last is None else last + 1
    label_class = LabelClass(
        name=name,
        color=color or default_color(session),
        hotkey=hotkey,
        position=position,
        supercategory=supercategory,
        revision=1,
    )
    _insert_class(session, label_class, fields, user_id=user_id, change_set=change_set or new_change_set())
    return label_class


def _insert_class(
    session: Session,
    label_class: LabelClass,
    fields: dict[str, Any],
    *,
    user_id: int | None,
    change_set: str,
    reverts: int | None = None,
) -> None:
    session.add(label_class)
    _flush_unique(session, fields)
    _record(
        session,
        "class",
        label_class.id,
        None,
        HistoryAction.create,
        None,
        class_json(label_class),
        user_id=user_id,
        change_set=change_set,
        moment=now(),
        reverts=reverts,
    )
    session.flush()


def _update_class(
    session: Session,
    class_id: int,
    expected_revision: int,
    changes: dict[str, Any],
    user_id: int | None,
    change_set: str,
    reverts: int | None = None,
) -> LabelClass:
    label_class = _fresh_class(session, class_id)
    if label_class.revision != expected_revision:
        raise _class_stale(session, class_id, expected_revision)
    changed = {k: v for k, v in changes.items() if k in CLASS_FIELDS and getattr(label_class, k) != v}
    if not changed:
        return label_class
    for name in ("name", "color", "position"):
        if name in changed and changed[name] is None:
            raise bad_request(name, f"a class's {name} cannot be null")
    _check_unique(session, changed, class_id)
    before = class_json(label_class)
    _bump_class(session, label_class, expected_revision, changed)
    _record(
        session,
        "class",
        class_id,
        None,
        HistoryAction.update,
        before,
        class_json(label_class),
        user_id=user_id,
        change_set=change_set,
        moment=now(),
        reverts=reverts,
    )
    session.flush()
    return label_class


def update_class(
    session: Session, class_id: int, expected_revision: int, changes: dict[str, Any], user_id: int | None
) -> LabelClass:
    """Set a class's ``name``, ``color``, ``hotkey``, ``position``, ``supercategory``; 409 (``revision``)
    when stale, 404 when unknown, 422 naming ``name`` or ``hotkey`` when another class has it."""
    return _update_class(session, class_id, expected_revision, changes, user_id, new_change_set())


def _delete_class(
    session: Session,
    class_id: int,
    expected_revision: int,
    user_id: int | None,
    reassign_to: int | None,
    change_set: str,
    reverts: int | None = None,
) -> None:
    label_class = _fresh_class(session, class_id)
    if label_class.revision != expected_revision:
        raise _class_stale(session, class_id, expected_revision)
    if reassign_to == class_id:
        raise bad_request("reassign_to", "a class cannot be reassigned to itself")
    if reassign_to is not None and session.get(LabelClass, reassign_to) is None:
        raise bad_request("reassign_to", f"no class {reassign_to}")
    used = session.execute(
        select(AnnotatedInstance.image_id, AnnotatedInstance.id)
        .where(AnnotatedInstance.class_id == class_id)
        .order_by(AnnotatedInstance.image_id, AnnotatedInstance.id)
    ).all()
    if used and reassign_to is None:
        raise conflict(
            "class_id",
            f"{len(used)} instances have class {label_class.name!r}; pass reassign_to to move them first",
            class_json(label_class),
        )
    by_image: dict[int, list[int]] = {}
    for image_id, instance_id in used:
        by_image.setdefault(image_id, []).append(instance_id)
    for image_id, instance_ids in by_image.items():
        _change(
            session,
            image_id,
            user_id=user_id,
            updates=[(i, {"class_id": reassign_to}, f"reassign_to.{i}") for i in instance_ids],
            change_set=change_set,
        )
    _record(
        session,
        "class",
        class_id,
        None,
        HistoryAction.delete,
        class_json(label_class),
        None,
        user_id=user_id,
        change_set=change_set,
        moment=now(),
        reverts=reverts,
    )
    session.delete(label_class)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise conflict("class_id", "instances of this class were added meanwhile; try again", None) from exc


def delete_class(
    session: Session, class_id: int, expected_revision: int, user_id: int | None, *, reassign_to: int | None = None
) -> str:
    """Delete a class; the change set. Refuses with 409 (``class_id``) while instances have it, unless
    ``reassign_to`` names another class: they move there first, each with a history row and its
    image's revision raised. 409 (``revision``) when stale, 404 / 422 (``reassign_to``) for unknown ids."""
    change_set = new_change_set()
    _delete_class(session, class_id, expected_revision, user_id, reassign_to, change_set)
    return change_set


# --- history --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevertResult:
    """The revert's change set (None when the record was as it had been already) and the record's id
    now (None when the revert deleted it; a re-created instance may have a new id)."""

    change_set: str | None
    entity: str
    entity_id: int | None


def _restored(record: dict[str, Any]) -> NewInstance:
    polygon = record["polygon"]
    return NewInstance(
        class_id=record["class_id"],
        polygon=polygon,
        mask=None if polygon is not None else RleMask(**record["mask"]),
        iscrowd=record["iscrowd"],
        provenance=record["provenance"],
        assistant=record["assistant"],
        model_version_id=record["model_version_id"],
        score=record["score"],
        extra=record.get("extra") or {},
    )


def revert(session: Session, history_id: int, expected_revision: int, user_id: int | None) -> RevertResult:
    """Put the record of history row ``history_id`` back as it was before that change, as a new change
    whose rows have ``reverts = history_id``.

    ``expected_revision`` is the current revision of the image (instance and image rows) or of the
    class (class rows; of a deleted class, the revision it was deleted at): 409 (``revision``) when
    stale. Reverting a create deletes, reverting a delete re-creates (with the old id when it is
    free, a new one otherwise: the new history row's ``entity_id`` is the id), reverting an update
    sets the fields back. 404 (``history_id``) for an unknown row; 409 (``history_id``) when the
    record cannot be put back (its class is gone, the instance to delete is gone already, a deleted
    class's name is taken).
    """
    row = session.get(History, history_id)
    if row is None:
        raise not_found("history_id", f"no history row {history_id}")
    change_set = new_change_set()
    if row.entity == "class":
        return _revert_class(session, row, expected_revision, user_id, change_set)
    assert row.image_id is not None, "instance and image rows name their image"
    image = fresh_image(session, row.image_id, "history_id", lock=True)
    if image.revision != expected_revision:
        raise _stale(session, image, expected_revision)
    if row.entity == "image":
        assert row.before is not None
        before = {k: row.before[k] for k in IMAGE_FIELDS}
        changed = any(getattr(image, k) != v for k, v in before.items())
        _update_image(session, image.id, expected_revision, before, user_id, change_set, reverts=history_id)
        return RevertResult(change_set if changed else None, "image", image.id)
    current = session.get(AnnotatedInstance, row.entity_id, populate_existing=True)
    if current is not None and current.image_id != image.id:
        current = None
    plan = _Plan()
    ids: list[int | None] = []
    if row.action == HistoryAction.create:
        if current is None:
            raise conflict("history_id", f"instance {row.entity_id} is deleted already", image_state(session, image))
        plan.delete.append(current)
    else:
        assert row.before is not None
        before = row.before
        if session.get(LabelClass, before["class_id"]) is None:
            raise conflict(
                "history_id",
                f"class {before['class_id']} no longer exists; restore it first",
                image_state(session, image),
            )
        if current is None:
            new = _restored(before)
            plan.create.append((new, _shape(new.polygon, new.mask, image, "history_id")))
            taken = session.get(AnnotatedInstance, row.entity_id) is not None
            ids.append(None if taken else row.entity_id)
        else:
            stored = {
                "rle": {"size": list(before["mask"]["size"]), "counts": before["mask"]["counts"]},
                "polygon": before["polygon"],
                "bbox": before["bbox"],
                "area": before["area"],
                **{name: before[name] for name in INSTANCE_FIELDS if name != "extra"},
                "extra": before.get("extra") or {},
            }
            changes = {k: v for k, v in stored.items() if getattr(current, k) != v}
            if changes:
                plan.update.append((current, changes))
    if not plan:
        return RevertResult(None, "instance", row.entity_id)
    moment = now()
    _bump_image(session, image, moment)
    created = _apply(
        session, image, plan, user_id=user_id, change_set=change_set, moment=moment, reverts=history_id, ids=ids
    )
    entity_id = created[0].id if created else (None if plan.delete else row.entity_id)
    return RevertResult(change_set, "instance", entity_id)


def _revert_class(
    session: Session, row: History, expected_revision: int, user_id: int | None, change_set: str
) -> RevertResult:
    current = session.get(LabelClass, row.entity_id, populate_existing=True)
    if row.action == HistoryAction.delete:
        assert row.before is not None
        if current is not None:
            raise conflict("history_id", f"class {row.entity_id} exists again", class_json(current))
        if row.before["revision"] != expected_revision:
            raise conflict(
                "revision", f"class {row.entity_id} was deleted at revision {row.before['revision']}", row.before
            )
        fields = {k: row.before[k] for k in CLASS_FIELDS}
        _check_unique(session, fields, None)
        label_class = LabelClass(id=row.entity_id, revision=row.before["revision"] + 1, **fields)
        _insert_class(session, label_class, fields, user_id=user_id, change_set=change_set, reverts=row.id)
        return RevertResult(change_set, "class", label_class.id)
    if current is None:
        raise conflict("history_id", f"class {row.entity_id} is deleted; revert its deletion first", None)
    if current.revision != expected_revision:
        raise _class_stale(session, current.id, expected_revision)
    if row.action == HistoryAction.create:
        _delete_class(session, current.id, expected_revision, user_id, None, change_set, reverts=row.id)
        return RevertResult(change_set, "class", None)
    assert row.before is not None
    before = {k: row.before[k] for k in CLASS_FIELDS}
    changed = any(getattr(current, k) != v for k, v in before.items())
    _update_class(session, current.id, expected_revision, before, user_id, change_set, reverts=row.id)
    return RevertResult(change_set if changed else None, "class", current.id)


def replay(rows: Iterable[History]) -> dict[int, dict[str, Any]]:
    """The instances that ``rows`` (an image's history, in any order) leave: ``{id: instance_json}``.

    Only the history is read, so comparing this with the stored instances proves the history complete.
    """
    state: dict[int, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: r.id):
        if row.entity != "instance":
            continue
        if row.action == HistoryAction.delete:
            state.pop(row.entity_id, None)
        else:
            assert row.after is not None
            state[row.entity_id] = row.after
    return state


def add_instance(session: Session, image_id: int, new: NewInstance, user_id: int | None) -> SaveResult:
    """Add one instance to ``image_id`` (no revision check: adding cannot overwrite anybody's edit);
    404 for an unknown image, 422 naming ``class_id`` or the shape's field."""
    return _change(session, image_id, user_id=user_id, create=[(new, "")])
