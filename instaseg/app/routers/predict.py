"""Predictions of the project's current model version on an uploaded image: ``POST /api/predict``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from instaseg.app.auth import CurrentUser, current_user
from instaseg.app.serving import PREDICT_RESPONSES, ImageUpload, PredictionOut, PredictOptions, project_predictions

router = APIRouter(prefix="/api", tags=["predict"])


@router.post(
    "/predict",
    response_model=PredictionOut,
    responses={409: {"description": "No usable model yet."}, **PREDICT_RESPONSES},
)
def predict(
    request: Request,
    image: ImageUpload,
    options: Annotated[PredictOptions, Query()],
    user: Annotated[CurrentUser, Depends(current_user)],
) -> Any:
    """Instances (COCO RLE masks) the project's current model finds in an uploaded image; any logged-in user.

    Refuses with 409 (field ``model``) while the project has no current model version."""
    return project_predictions(request.app).answer(request, image, options)
