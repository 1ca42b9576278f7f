"""The ``review`` job: the label review (``instaseg.review``) run on the project with its current model.

It judges the labelled images as ``instaseg review DATA --model M`` does and stores each finding as
an open ``Suggestion``, which reviewers then accept (the fix is applied) or reject through the API.
A new review replaces the open suggestions earlier reviews left on the images it judged; decided
ones stay, and a finding a reviewer rejected is not suggested again while its instance is unchanged.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from instaseg.app.db.schema import AnnotatedInstance, DecisionStatus, ImageStatus, Suggestion
from instaseg.app.edits import RleMask
from instaseg.app.jobs.kinds import JobContext, job_kind
from instaseg.app.jobs.prelabel import current_model, refuse_unknown_images
from instaseg.app.jobs.train import CHECKED, labelled_images
from instaseg.app.transfer import project_dataset
from instaseg.core import events
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.review import ReviewSettings, SuggestionType, review
from instaseg.review import Suggestion as Finding
from instaseg.review.sources import predict_with_model


class ReviewParams(BaseModel):
    """Which images to review (``image_ids`` and ``statuses`` both narrow the choice) and what to report."""

    model_config = ConfigDict(extra="forbid")

    image_ids: list[int] | None = Field(None, description="only these images (all labelled ones when None)")
    statuses: list[ImageStatus] = Field(
        default_factory=lambda: list(CHECKED),
        min_length=1,
        description="images of these statuses; new and in-progress ones only when they hold instances",
    )
    min_score: float = Field(ReviewSettings.min_score, ge=0, le=1, description="leave out findings scoring below this")


class SuggestionDetail(BaseModel):
    """What a review finding says and proposes (``Suggestion.detail``)."""

    instance_revision: int | None = Field(
        description="the revision of the instance concerned when it was reviewed; accepting refuses a later one"
    )
    class_name: str | None = Field(description="the class of the instance concerned")
    suggested_class: str | None = Field(description="the class the fix gives (missing_label, wrong_class, bad_mask)")
    suggested_class_id: int | None = Field(description="the project's class of that name")
    mask: RleMask | None = Field(description="the model's mask: what missing_label adds and bad_mask puts instead")
    bbox: list[float] | None = Field(description="[x, y, w, h] of that mask")
    confidence: float | None = Field(description="the model's score of its own instance")
    other_instance_id: int | None = Field(description="duplicate: the copy that stays")
    model_version_id: int = Field(description="the model version that judged")
    fix: str = Field(description="the fix in words")
    evidence: dict[str, float] = Field(description="the measurements the score comes from")


def finding_detail(
    finding: Finding, revisions: dict[int, int], class_ids: dict[str, int], model_version_id: int
) -> SuggestionDetail:
    """The stored detail of one finding of the review; ``revisions`` and ``class_ids`` map its ids and names."""
    rle = finding.suggested_segmentation
    return SuggestionDetail(
        instance_revision=revisions[finding.annotation_id] if finding.annotation_id is not None else None,
        class_name=finding.class_name,
        suggested_class=finding.suggested_class,
        suggested_class_id=class_ids.get(finding.suggested_class) if finding.suggested_class is not None else None,
        mask=RleMask(size=list(rle["size"]), counts=rle["counts"]) if rle is not None else None,
        bbox=mask_ops.bbox(rle) if rle is not None else None,
        confidence=finding.confidence,
        other_instance_id=finding.other_annotation_id,
        model_version_id=model_version_id,
        fix=finding.type.fix.format(suggested_class=finding.suggested_class),
        evidence=finding.evidence,
    )


@job_kind("review", params=ReviewParams)
def review_labels(context: JobContext) -> dict[str, Any]:
    """Review the chosen labelled images with the current model and store its findings as open suggestions.

    Refuses a project without a current model, without labelled images of the chosen statuses, and
    ``image_ids`` the project does not have.
    """
    params = context.params
    assert isinstance(params, ReviewParams)
    with context.db.read() as session:
        model = current_model(session, context.project_dir)
        image_ids = labelled_images(session, params.statuses)
        if params.image_ids is not None:
            refuse_unknown_images(session, params.image_ids)
            image_ids = [i for i in image_ids if i in set(params.image_ids)]
        if not image_ids:
            wanted = " or ".join(status.value for status in params.statuses)
            raise InstasegError(f"no labelled images to review (images of {wanted} with instances, or checked)")
        dataset = project_dataset(session, context.image_root, image_ids=image_ids)
        revisions = _revisions(session, image_ids)
    predictions, label_probs, warnings = predict_with_model(dataset, model.path)
    findings, info = review(
        dataset, predictions, ReviewSettings(min_score=params.min_score), label_probs, dataset.read_image
    )
    warnings += info["warnings"]
    for warning in warnings:
        events.warn(warning)
    class_ids = {name: category_id for name, category_id in zip(dataset.class_names, dataset.category_ids, strict=True)}
    with context.db.write() as session:
        stored = _store(session, context.job_id, image_ids, findings, revisions, class_ids, model.version_id)
    counts = {kind.value: sum(s.kind == kind.value for s in stored) for kind in SuggestionType}
    return {"images": len(image_ids), "suggestions": counts, "warnings": warnings}


def _revisions(session: Session, image_ids: list[int]) -> dict[int, int]:
    """Instance id -> revision of every instance of ``image_ids``."""
    query = select(AnnotatedInstance.id, AnnotatedInstance.revision).where(AnnotatedInstance.image_id.in_(image_ids))
    return dict(session.execute(query).all())


def _store(
    session: Session,
    job_id: int,
    image_ids: list[int],
    findings: list[Finding],
    revisions: dict[int, int],
    class_ids: dict[str, int],
    model_version_id: int,
) -> list[Suggestion]:
    """Replace the open review suggestions of ``image_ids`` with ``findings``; the suggestions added.

    Findings about an instance deleted since the review began are dropped (nobody can act on them),
    and so are findings a reviewer rejected before about the same instance at the same revision.
    """
    session.execute(
        delete(Suggestion).where(
            Suggestion.image_id.in_(image_ids),
            Suggestion.decision == DecisionStatus.open,
            Suggestion.job_id.is_not(None),
        )
    )
    rejected = {
        (kind, instance_id, detail.get("instance_revision"))
        for kind, instance_id, detail in session.execute(
            select(Suggestion.kind, Suggestion.instance_id, Suggestion.detail).where(
                Suggestion.image_id.in_(image_ids),
                Suggestion.decision == DecisionStatus.rejected,
                Suggestion.instance_id.is_not(None),
            )
        )
    }
    existing = set(_revisions(session, image_ids))
    stored = []
    for finding in findings:
        instance_id = finding.annotation_id
        if instance_id is not None:
            if instance_id not in existing or (finding.type.value, instance_id, revisions[instance_id]) in rejected:
                continue
        detail = finding_detail(finding, revisions, class_ids, model_version_id)
        suggestion = Suggestion(
            image_id=finding.image_id,
            instance_id=instance_id,
            kind=finding.type.value,
            score=float(finding.score),
            detail=detail.model_dump(mode="json"),
            job_id=job_id,
            decision=DecisionStatus.open,
            revision=1,
        )
        session.add(suggestion)
        stored.append(suggestion)
    session.flush()
    return stored
