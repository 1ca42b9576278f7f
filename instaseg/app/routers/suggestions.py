"""The review queue: what the label review found (``review`` jobs), and a reviewer's decision on each finding.

Accepting a suggestion applies its fix in the same transaction as the decision, through
``edits.change_instances`` (so the fix has its history rows and can be reverted like any edit):
a wrong class is relabelled, an extra label or a duplicate is deleted, a missing label is added as
a model instance, a bad mask is replaced by the model's. A fix is refused (409 naming ``instance``)
when its instance changed or went since the review judged it: the finding may no longer hold.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from instaseg.app.auth import CurrentUser, Permission, current_user, get_db, require
from instaseg.app.db.database import Database
from instaseg.app.db.schema import AnnotatedInstance, DecisionStatus, Image, LabelClass, Provenance, Suggestion, now
from instaseg.app.edits import (
    ImageInstances,
    InstanceOut,
    NewInstance,
    change_instances_if_any,
    fresh_image,
    image_state,
    instance_json,
)
from instaseg.app.errors import conflict, not_found
from instaseg.app.jobs.review import SuggestionDetail
from instaseg.app.routers.jobs import UtcDatetime
from instaseg.review import SuggestionType

router = APIRouter(prefix="/api", tags=["suggestions"])

MAX_PAGE = 500


class SuggestionOut(BaseModel):
    id: int
    revision: int
    image_id: int
    file_name: str
    instance_id: int | None
    kind: SuggestionType
    score: float
    detail: SuggestionDetail
    job_id: int | None
    decision: DecisionStatus
    decided_by: int | None
    decided_at: UtcDatetime | None
    created_at: UtcDatetime
    instance: InstanceOut | None


class SuggestionPage(BaseModel):
    items: list[SuggestionOut]
    total: int


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: int
    decision: Literal["accepted", "rejected"]


class DecisionOut(BaseModel):
    suggestion: SuggestionOut
    change: ImageInstances | None


def _out(suggestion: Suggestion, file_name: str, instance: AnnotatedInstance | None) -> dict[str, Any]:
    return {
        "id": suggestion.id,
        "revision": suggestion.revision,
        "image_id": suggestion.image_id,
        "file_name": file_name,
        "instance_id": suggestion.instance_id,
        "kind": suggestion.kind,
        "score": suggestion.score,
        "detail": suggestion.detail,
        "job_id": suggestion.job_id,
        "decision": suggestion.decision,
        "decided_by": suggestion.decided_by,
        "decided_at": suggestion.decided_at,
        "created_at": suggestion.created_at,
        "instance": instance_json(instance) if instance is not None else None,
    }


def _outs(session: Session, rows: list[tuple[Suggestion, str]]) -> list[dict[str, Any]]:
    """The suggestions as the API shows them, each with its instance as it is now (None when deleted)."""
    wanted = {s.instance_id for s, _ in rows if s.instance_id is not None}
    instances = (
        {i.id: i for i in session.scalars(select(AnnotatedInstance).where(AnnotatedInstance.id.in_(wanted)))}
        if wanted
        else {}
    )
    return [_out(s, name, instances.get(s.instance_id) if s.instance_id else None) for s, name in rows]


def _suggestion(session: Session, suggestion_id: int, *, lock: bool = False) -> Suggestion:
    suggestion = session.get(Suggestion, suggestion_id, populate_existing=True, with_for_update=lock)
    if suggestion is None:
        raise not_found("suggestion_id", f"no suggestion {suggestion_id}")
    return suggestion


def _shown(session: Session, suggestion: Suggestion) -> dict[str, Any]:
    file_name = session.scalar(select(Image.file_name).where(Image.id == suggestion.image_id))
    assert file_name is not None, "a suggestion goes with its image"
    # JSON-ready, as a 409's ``current`` must be.
    return SuggestionOut.model_validate(_outs(session, [(suggestion, file_name)])[0]).model_dump(mode="json")


@router.get("/suggestions", response_model=SuggestionPage)
def list_suggestions(
    decision: Literal["open", "accepted", "rejected", "all"] = "open",
    kind: SuggestionType | None = None,
    image_id: int | None = None,
    limit: int = Query(default=100, ge=1, le=MAX_PAGE),
    offset: int = Query(default=0, ge=0),
    db: Database = Depends(get_db),
    _user: CurrentUser = Depends(current_user),
) -> dict[str, Any]:
    """The review queue, highest score first: open suggestions by default (``decision=all`` for every one)."""
    where: list[Any] = []
    if decision != "all":
        where.append(Suggestion.decision == DecisionStatus(decision))
    if kind is not None:
        where.append(Suggestion.kind == kind.value)
    if image_id is not None:
        where.append(Suggestion.image_id == image_id)
    with db.read() as session:
        total = session.scalar(select(func.count(Suggestion.id)).where(*where)) or 0
        rows = session.execute(
            select(Suggestion, Image.file_name)
            .join(Image, Image.id == Suggestion.image_id)
            .where(*where)
            .order_by(Suggestion.score.desc(), Suggestion.id)
            .limit(limit)
            .offset(offset)
        ).all()
        return {"items": _outs(session, [(s, name) for s, name in rows]), "total": total}


@router.get("/suggestions/{suggestion_id}", response_model=SuggestionOut)
def get_suggestion(
    suggestion_id: int, db: Database = Depends(get_db), _user: CurrentUser = Depends(current_user)
) -> dict[str, Any]:
    """One suggestion, with its instance as it is now; 404 naming ``suggestion_id``."""
    with db.read() as session:
        return _shown(session, _suggestion(session, suggestion_id))


@router.post("/suggestions/{suggestion_id}/decision", response_model=DecisionOut)
def decide(
    suggestion_id: int,
    body: DecisionIn,
    db: Database = Depends(get_db),
    user: CurrentUser = Depends(require(Permission.review)),
) -> dict[str, Any]:
    """Accept (and apply) or reject an open suggestion read at ``revision``.

    Refuses with 404 (``suggestion_id``), 409 (``revision``) when the suggestion changed since it was
    read, 409 (``decision``) when it was decided already, and 409 (``instance``, ``current`` the
    image's state) when accepting would fix an instance that changed or was deleted since the review;
    nothing is written then.
    """
    with db.write() as session:
        suggestion = _suggestion(session, suggestion_id, lock=True)
        if suggestion.revision != body.revision:
            raise conflict(
                "revision",
                f"suggestion {suggestion_id} is at revision {suggestion.revision}, not {body.revision}",
                _shown(session, suggestion),
            )
        if suggestion.decision != DecisionStatus.open:
            raise conflict(
                "decision",
                f"suggestion {suggestion_id} was {suggestion.decision.value} already",
                _shown(session, suggestion),
            )
        change = apply_fix(session, suggestion, user.id) if body.decision == "accepted" else None
        suggestion.decision = DecisionStatus(body.decision)
        suggestion.decided_by = user.id
        suggestion.decided_at = now()
        suggestion.revision += 1
        session.flush()
        return {"suggestion": _shown(session, suggestion), "change": change}


def apply_fix(session: Session, suggestion: Suggestion, user_id: int | None) -> dict[str, Any]:
    """Make the change ``suggestion`` proposes, in the caller's transaction; the image's state after it
    (``ImageInstances``). Refuses (409) as ``decide`` says, and a fix whose class was deleted since."""
    detail = SuggestionDetail.model_validate(suggestion.detail)
    kind = SuggestionType(suggestion.kind)  # type: ignore[call-arg]  # a lookup by value takes the value alone
    # Taking the image row first keeps other writers of this image out until the fix is written.
    image = fresh_image(session, suggestion.image_id, lock=True)
    if kind is SuggestionType.MISSING_LABEL:
        assert detail.mask is not None, "a missing label comes with the model's mask"
        new = NewInstance(
            class_id=_suggested_class(session, detail),
            mask=detail.mask,
            provenance=Provenance.model,
            model_version_id=detail.model_version_id,
            score=detail.confidence,
        )
        return change_instances_if_any(session, image, user_id=user_id, create=[new]).json()
    assert suggestion.instance_id is not None, "every other kind is about one instance"
    instance_id = suggestion.instance_id
    instance = session.get(AnnotatedInstance, instance_id, populate_existing=True)
    if instance is None or instance.image_id != image.id:
        raise conflict("instance", f"instance {instance_id} was deleted since the review", image_state(session, image))
    if instance.revision != detail.instance_revision:
        raise conflict(
            "instance",
            f"instance {instance_id} changed since the review (revision {instance.revision}, reviewed at "
            f"{detail.instance_revision}); review it again",
            image_state(session, image),
        )
    if kind is SuggestionType.WRONG_CLASS:
        fields: dict[str, Any] = {"class_id": _suggested_class(session, detail)}
    elif kind is SuggestionType.BAD_MASK:
        assert detail.mask is not None, "a bad mask comes with the model's mask"
        fields = {"mask": detail.mask.model_dump()}
    else:
        return change_instances_if_any(session, image, user_id=user_id, delete=[instance_id]).json()
    fields["revision"] = detail.instance_revision
    return change_instances_if_any(session, image, user_id=user_id, update={instance_id: fields}).json()


def _suggested_class(session: Session, detail: SuggestionDetail) -> int:
    if detail.suggested_class_id is None or session.get(LabelClass, detail.suggested_class_id) is None:
        raise conflict("class_id", f"the project has no class {detail.suggested_class!r} any more", None)
    return detail.suggested_class_id
