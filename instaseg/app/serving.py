"""Predictions over HTTP: one loaded model shared by every request, the project's current model, rate limits.

``POST /api/predict`` of ``instaseg app`` (the project's current model version) and of ``instaseg serve
MODEL.pt`` (one checkpoint, ``create_serve_app``) run the same handling, ``Predictions.answer``: the
client's rate limit, then the model, then the upload decoded and predicted on. The ``Predictor`` is
stateless, so one loaded copy of the weights serves every concurrent request; the endpoints are plain
``def`` functions, run in FastAPI's thread pool, where torch releases the GIL while it computes.
"""

from __future__ import annotations

import math
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, File, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image as PILImage
from pydantic import BaseModel, Field
from sqlalchemy import select

from instaseg.app import errors
from instaseg.app.db.database import Database
from instaseg.app.db.schema import LabelClass, ModelVersion
from instaseg.app.errors import ApiError, bad_request
from instaseg.app.limits import BodyLimit
from instaseg.app.settings import AppSettings, is_loopback
from instaseg.core import io
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.engine.predict import check_classes
from instaseg.engine.predictor import Predictor, load

# The model's proposals grow with the detections asked for, so an unbounded request could exhaust memory.
MAX_DETECTIONS = 1000
# ``instaseg serve`` has no endpoint taking a body but the upload.
SERVE_MAX_REQUEST_BYTES = 1024 * 1024
# Per-client buckets are forgotten once full again, checked when this many clients are remembered.
RATE_LIMIT_CLIENTS = 10_000
SERVE_TOKEN_ENV = "INSTASEG_SERVE_TOKEN"


class RleMask(BaseModel):
    """A COCO compressed RLE mask of the whole image."""

    size: list[int] = Field(description="[height, width]")
    counts: str


class PredictedInstance(BaseModel):
    class_id: int | None = Field(
        description="The project's class of that name (None when it has none); for `instaseg serve`, the index "
        "into the model's classes."
    )
    class_name: str
    score: float
    bbox: list[float] = Field(description="The detection's box, [x, y, width, height] in pixels.")
    mask: RleMask
    area: int = Field(description="Pixels in the mask.")


class PredictionOut(BaseModel):
    width: int
    height: int
    model_version_id: int | None = Field(description="The project's model version that predicted; None in `serve`.")
    instances: list[PredictedInstance] = Field(description="Best score first.")


class PredictOptions(BaseModel):
    score_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Leave out detections scoring below this.")
    max_detections: int = Field(100, ge=1, le=MAX_DETECTIONS, description="Return at most this many, best first.")
    classes: list[str] | None = Field(None, description="Keep only these class names (repeat the parameter).")


class InputSizesOut(BaseModel):
    short_side: int
    max_side: int
    train_short_sides: list[int]


ImageUpload = Annotated[bytes, File(description="The image file (any format Pillow reads).")]
PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"description": "The upload, or its pixel count, is too large."},
    422: {"description": "Not an image, a truncated one, or bad options (the body's `field` says which)."},
    429: {"description": "The client is over its rate; `Retry-After` says when to retry."},
}


class ServeHealth(BaseModel):
    status: str
    model: str = Field(description="The architecture.")
    preset: str | None
    classes: list[str]
    input_sizes: InputSizesOut


def read_upload(data: bytes) -> np.ndarray:
    """An uploaded image file as (H, W, 3) uint8 RGB, read as ``io.read_image`` reads a file (EXIF rotation
    applied, any mode).

    Refuses with 422 (field ``image``) an empty upload, one that is not an image, or a corrupt or
    truncated one, and with 413 one of more than ``io.MAX_IMAGE_PIXELS`` pixels, judged by its header
    before any pixel is decoded.
    """
    if not data:
        raise bad_request("image", "the upload is empty")
    # io.read_image reads files, so the conventions of every other verb apply to uploads unchanged.
    with tempfile.NamedTemporaryFile(prefix="instaseg-upload-") as file:
        file.write(data)
        file.flush()
        _refuse_decompression_bombs(file.name)
        try:
            return io.read_image(file.name)
        except InstasegError as exc:
            raise bad_request("image", str(exc).removeprefix(f"{exc.file}: ")) from None


def _refuse_decompression_bombs(path: str) -> None:
    """413 when the image's header claims more than ``io.MAX_IMAGE_PIXELS`` pixels.

    Only the header is read: ``io.image_size`` would decode a whole PNG to look for EXIF data."""
    try:
        with PILImage.open(path) as image:
            width, height = image.size
    except PILImage.DecompressionBombError:
        raise ApiError(413, "image", f"the image has more than {2 * io.MAX_IMAGE_PIXELS:,} pixels") from None
    except (OSError, SyntaxError, ValueError):
        return  # not an image at all: io.read_image says what is wrong with it
    if width * height > io.MAX_IMAGE_PIXELS:
        raise ApiError(413, "image", f"the image has {width}x{height} pixels, more than {io.MAX_IMAGE_PIXELS:,}")


class PredictService:
    """One model's predictions on uploaded images, through one shared ``Predictor``.

    Attributes:
        predictor: the loaded model; stateless, so concurrent calls share it.
        model_version_id: the project's model version it was loaded from (None outside a project).
    """

    def __init__(self, predictor: Predictor, model_version_id: int | None = None):
        self.predictor = predictor
        self.model_version_id = model_version_id

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device | None = None, model_version_id: int | None = None
    ) -> PredictService:
        """Load ``path`` once; a missing or unusable checkpoint is an ``InstasegError`` naming it."""
        return cls(load(path, device=device), model_version_id)

    def predict(
        self,
        image: bytes,
        *,
        score_threshold: float = 0.5,
        max_detections: int = 100,
        classes: Sequence[str] | None = None,
        class_ids: Mapping[str, int] | None = None,
    ) -> PredictionOut:
        """The instances the model finds in the uploaded image file ``image``.

        ``class_ids`` maps class names to the ids reported (the project's classes); without it each
        instance reports the index into the model's classes. Refuses an unknown name in ``classes``
        (422, field ``classes``) and an upload ``read_upload`` refuses.
        """
        try:
            wanted = check_classes(classes, self.predictor.class_names)
        except InstasegError as exc:
            raise bad_request("classes", str(exc)) from None
        pixels = read_upload(image)
        found = self.predictor.predict(
            pixels, score_threshold=score_threshold, classes=wanted, max_detections=max_detections
        )
        instances = []
        for box, rle, class_index, score in zip(
            found.boxes.tolist(), mask_ops.encode_many(found.masks), found.class_ids, found.scores, strict=True
        ):
            name = found.class_names[class_index]
            x1, y1, x2, y2 = box
            instances.append(
                PredictedInstance(
                    class_id=class_ids.get(name) if class_ids is not None else int(class_index),
                    class_name=name,
                    score=float(score),
                    bbox=[x1, y1, x2 - x1, y2 - y1],
                    mask=RleMask(size=rle["size"], counts=rle["counts"]),
                    area=mask_ops.area(rle),
                )
            )
        height, width = pixels.shape[:2]
        return PredictionOut(width=width, height=height, model_version_id=self.model_version_id, instances=instances)

    def health(self) -> ServeHealth:
        sizes = self.predictor.model.input_sizes
        return ServeHealth(
            status="ok",
            model=str(self.predictor.config.get("model", type(self.predictor.model).__name__)),
            preset=self.predictor.config.get("preset"),
            classes=list(self.predictor.class_names),
            input_sizes=InputSizesOut(
                short_side=sizes.short_side, max_side=sizes.max_side, train_short_sides=list(sizes.train_short_sides)
            ),
        )


class RateLimiter:
    """At most ``per_minute`` requests a minute per client, in bursts of up to that many: a token bucket
    per client, refilled continuously. Thread-safe; ``clock`` (seconds) is replaceable for tests."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        if per_minute < 1:
            raise InstasegError(f"the rate limit must allow at least 1 request a minute, got {per_minute}")
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (requests left, when counted)
        self._lock = threading.Lock()

    def wait(self, client: str) -> float:
        """Count one request of ``client``: 0 when it is allowed, else the seconds until one would be."""
        per_second = self.per_minute / 60
        with self._lock:
            now = self.clock()
            left, then = self._buckets.get(client, (float(self.per_minute), now))
            left = min(float(self.per_minute), left + (now - then) * per_second)
            if left >= 1:
                self._buckets[client] = (left - 1, now)
                if len(self._buckets) > RATE_LIMIT_CLIENTS:
                    self._forget_full(now, per_second)
                return 0.0
            self._buckets[client] = (left, now)
            return (1 - left) / per_second

    def _forget_full(self, now: float, per_second: float) -> None:
        for client, (left, then) in list(self._buckets.items()):
            if left + (now - then) * per_second >= self.per_minute:
                del self._buckets[client]


@dataclass(frozen=True)
class Served:
    """The model a request is answered with, and the ids its class names are reported as (None: the model's)."""

    service: PredictService
    class_ids: Mapping[str, int] | None = None


class Predictions:
    """``POST /api/predict``'s handling, shared by ``instaseg app`` and ``instaseg serve``: ``model`` gives
    the model to answer with (or refuses), ``limiter`` each client's rate."""

    def __init__(self, model: Callable[[], Served], limiter: RateLimiter):
        self.model = model
        self.limiter = limiter

    def answer(self, request: Request, image: bytes, options: PredictOptions) -> PredictionOut | Response:
        """The prediction for ``image``, or 429 with ``Retry-After`` when the client is over its rate."""
        wait = self.limiter.wait(request.client.host if request.client is not None else "")
        if wait > 0:
            seconds = math.ceil(wait)
            return JSONResponse(
                {
                    "detail": f"more than {self.limiter.per_minute} predictions a minute; retry in {seconds} s",
                    "field": None,
                },
                status_code=429,
                headers={"Retry-After": str(seconds)},
            )
        served = self.model()
        return served.service.predict(
            image,
            score_threshold=options.score_threshold,
            max_detections=options.max_detections,
            classes=options.classes,
            class_ids=served.class_ids,
        )


class ProjectModels:
    """A project's current model version, loaded on its first request and again once another version is current.

    Each request reads which version is current, so a version made current by a train job is used
    from the next request on; requests already running finish with the model they started with.
    """

    def __init__(self, db: Database, project_dir: str | Path, device: str | torch.device | None = None):
        self.db = db
        self.project_dir = Path(project_dir)
        self.device = device
        self._loaded: PredictService | None = None
        self._lock = threading.Lock()

    def current(self) -> Served:
        """The current version's model and the project's class ids by name; 409 (field ``model``) when
        there is no current version or its checkpoint cannot be loaded."""
        with self.db.read() as session:
            version = session.scalar(
                select(ModelVersion).where(ModelVersion.current.is_(True)).order_by(ModelVersion.id.desc()).limit(1)
            )
            if version is None:
                raise ApiError(409, "model", "no trained model yet: run a train job")
            version_id, relative = version.id, version.path
            class_ids = {name: id_ for name, id_ in session.execute(select(LabelClass.name, LabelClass.id))}
        # One load per version however many requests arrive at once: the others wait for it.
        with self._lock:
            if self._loaded is None or self._loaded.model_version_id != version_id:
                try:
                    path = io.safe_join(self.project_dir, relative)
                    self._loaded = PredictService.from_checkpoint(path, self.device, model_version_id=version_id)
                except InstasegError as exc:
                    raise ApiError(
                        409, "model", f"the current model version {version_id} cannot be loaded: {exc}"
                    ) from None
            return Served(self._loaded, class_ids)


_project_lock = threading.Lock()


def project_predictions(app: FastAPI) -> Predictions:
    """The ``Predictions`` of ``instaseg app``'s ``app``, made on first use from its settings and database."""
    with _project_lock:
        predictions = getattr(app.state, "predictions", None)
        if predictions is None:
            settings: AppSettings = app.state.settings
            models = ProjectModels(app.state.db, settings.project_dir)
            predictions = Predictions(models.current, RateLimiter(settings.predict_per_minute))
            app.state.predictions = predictions
        return predictions


def check_serve_access(host: str, token: str | None) -> None:
    """Refuse to serve a model off loopback without a token every request must bring."""
    if not token and not is_loopback(host):
        raise InstasegError(
            f"refusing to serve on {host} without a token: pass --token or set {SERVE_TOKEN_ENV}, or serve on 127.0.0.1"
        )


def create_serve_app(
    model_path: str | Path,
    *,
    host: str = "127.0.0.1",
    token: str | None = None,
    max_upload_bytes: int = AppSettings.max_upload_bytes,
    per_minute: int = AppSettings.predict_per_minute,
    device: str | torch.device | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """An app serving one checkpoint: ``POST /api/predict``, ``GET /api/health`` and the API at ``/docs``.

    With ``token``, every ``/api`` request must carry ``Authorization: Bearer <token>`` (401 otherwise).
    Refuses (``InstasegError``) to serve off loopback (``host``) without a token, and a missing or
    unusable checkpoint.
    """
    token = token or None
    check_serve_access(host, token)
    service = PredictService.from_checkpoint(model_path, device)
    predictions = Predictions(lambda: Served(service), RateLimiter(per_minute, clock))
    app = FastAPI(
        title="instaseg serve",
        description=f"Predictions of the instaseg model {Path(model_path).name}.",
        version="1",
        dependencies=[Depends(_bearer_check(token))],
    )
    app.state.predictions = predictions
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=SERVE_MAX_REQUEST_BYTES, upload_bytes=max_upload_bytes)

    @app.post("/api/predict", response_model=PredictionOut, tags=["predict"], responses=PREDICT_RESPONSES)
    def predict(request: Request, image: ImageUpload, options: Annotated[PredictOptions, Query()]) -> Any:
        """Instances (COCO RLE masks) the model finds in an uploaded image."""
        return predictions.answer(request, image, options)

    @app.get("/api/health", tags=["health"])
    def health() -> ServeHealth:
        """The model served: architecture, classes, input sizes."""
        return service.health()

    return app


def _bearer_check(token: str | None) -> Callable[..., None]:
    """A dependency refusing (401) requests without ``token``; it lets every request through when None."""

    def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
    ) -> None:
        if token is None:
            return
        if credentials is None:
            raise ApiError(401, "authorization", "send the token: Authorization: Bearer <token>")
        if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise ApiError(401, "authorization", "wrong token")

    return check
