"""The project's images: list and filter them, set their status and assignee, and serve their pixels.

The pixels come as the file itself, a JPEG thumbnail (cached in the project's ``cache`` folder),
or, for images too large to send whole, a pyramid of levels (level 0 full size, each next one half
the previous) cut into square tiles. File names are joined under the image root with
``safe_join``, so no stored name can reach outside it.
"""

from __future__ import annotations

import io as bytes_io
import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from PIL import Image as PILImage
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

# server imports this module: its module object, not its names, so the import cannot go round in a circle.
from instaseg.app import edits, server
from instaseg.app.auth import CurrentUser, Permission, current_user, get_db, require
from instaseg.app.db.database import Database
from instaseg.app.db.schema import AnnotatedInstance, Image, ImageStatus
from instaseg.app.edits import ImageOut
from instaseg.app.errors import ApiError, not_found
from instaseg.core import io
from instaseg.core.errors import InstasegError

router = APIRouter(prefix="/api", tags=["images"])

TILE_SIZE = 512
PYRAMIDS_KEPT = 4
THUMBNAIL_QUALITY = 85
# The pixels of an image never change under the same SHA-1, so a browser may keep them; a day bounds
# what it shows after a file was replaced outside the app (its SHA-1 is then stale too).
CACHE_CONTROL = "private, max-age=86400"


class ImagePage(BaseModel):
    items: list[ImageOut]
    total: int


class ImagePatch(BaseModel):
    """The image's revision as read, and what to set (``assignee_id`` null unassigns)."""

    model_config = ConfigDict(extra="forbid")

    revision: int
    status: ImageStatus | None = None
    assignee_id: int | None = None


class PyramidLevel(BaseModel):
    level: int
    scale: float = Field(description="this level's size over the full size")
    width: int
    height: int


class Pyramid(BaseModel):
    levels: list[PyramidLevel]
    tile_size: int


def _counts():
    return (
        select(AnnotatedInstance.image_id, func.count(AnnotatedInstance.id).label("n"))
        .group_by(AnnotatedInstance.image_id)
        .subquery()
    )


@router.get("/images", response_model=ImagePage)
def list_images(
    status: ImageStatus | None = None,
    assignee_id: int | None = None,
    class_id: int | None = Query(default=None, description="only images with an instance of this class"),
    has_instances: bool | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
    offset: int = Query(default=0, ge=0),
    db: Database = Depends(get_db),
    _user: CurrentUser = Depends(current_user),
) -> dict[str, Any]:
    """The images matching every filter given, in id order, and how many match in all."""
    counts = _counts()
    where: list[Any] = []
    if status is not None:
        where.append(Image.status == status)
    if assignee_id is not None:
        where.append(Image.assignee_id == assignee_id)
    if class_id is not None:
        where.append(exists().where(AnnotatedInstance.image_id == Image.id, AnnotatedInstance.class_id == class_id))
    if has_instances is not None:
        where.append(counts.c.n.is_not(None) if has_instances else counts.c.n.is_(None))
    query = select(Image, func.coalesce(counts.c.n, 0)).outerjoin(counts, counts.c.image_id == Image.id).where(*where)
    with db.read() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.execute(query.order_by(Image.id).limit(limit).offset(offset)).all()
        return {"items": [edits.image_json(image, n) for image, n in rows], "total": total}


def _image_out(session: Session, image: Image) -> dict[str, Any]:
    count = session.scalar(select(func.count(AnnotatedInstance.id)).where(AnnotatedInstance.image_id == image.id))
    return edits.image_json(image, count or 0)


@router.get("/images/{image_id}", response_model=ImageOut)
def get_image(
    image_id: int, db: Database = Depends(get_db), _user: CurrentUser = Depends(current_user)
) -> dict[str, Any]:
    with db.read() as session:
        return _image_out(session, edits.fresh_image(session, image_id))


@router.patch("/images/{image_id}", response_model=ImageOut)
def update_image(
    image_id: int,
    body: ImagePatch,
    db: Database = Depends(get_db),
    user: CurrentUser = Depends(require(Permission.annotate)),
) -> dict[str, Any]:
    """Set the status and/or assignee, if the image is still at ``revision`` (409 otherwise). Marking an
    image reviewed, or taking that mark away, needs the review permission."""
    changes = body.model_dump(include=body.model_fields_set - {"revision"})
    if "status" in changes and changes["status"] is None:
        raise ApiError(422, "status", "an image always has a status")
    with db.write() as session:
        image = edits.fresh_image(session, image_id)
        status = changes.get("status", image.status)
        if (
            status != image.status
            and ImageStatus.reviewed in (status, image.status)
            and not user.may(Permission.review)
        ):
            raise ApiError(403, "status", f"the {user.role.value} role may not review")
        return _image_out(session, edits.update_image(session, image_id, body.revision, changes, user.id))


def _located(db: Database, image_id: int) -> tuple[Path, str]:
    """The image's file and the tag its pixels go by (its SHA-1, else its size and time); 404 when either is gone."""
    with db.read() as session:
        image = edits.fresh_image(session, image_id)
        file_name, sha1 = image.file_name, image.sha1
    try:
        path = io.safe_join(server.image_root(db), file_name, record="file_name")
    except InstasegError:
        raise not_found("image_id", "the image's file name leaves the image root") from None
    try:
        stat = path.stat()
    except OSError:
        raise not_found("image_id", f"the file {file_name} is gone from the image folder") from None
    return path, sha1 or f"{stat.st_size:x}-{stat.st_mtime_ns:x}"


def _not_modified(request: Request, etag: str) -> Response | None:
    wanted = request.headers.get("if-none-match", "")
    if etag in (part.strip() for part in wanted.split(",")) or wanted.strip() == "*":
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})
    return None


@router.get("/images/{image_id}/file", response_class=FileResponse, responses={200: {"content": {"image/*": {}}}})
def image_file(
    image_id: int, request: Request, db: Database = Depends(get_db), _user: CurrentUser = Depends(current_user)
) -> Response:
    """The image file's bytes as stored."""
    path, tag = _located(db, image_id)
    etag = f'"{tag}"'
    return _not_modified(request, etag) or FileResponse(
        path, headers={"ETag": etag, "Cache-Control": CACHE_CONTROL}, stat_result=None
    )


def _read_pixels(path: Path) -> PILImage.Image:
    try:
        return PILImage.fromarray(io.read_image(path))
    except InstasegError as exc:
        raise ApiError(422, "image_id", str(exc)) from None


@router.get("/images/{image_id}/thumbnail", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
def thumbnail(
    image_id: int,
    request: Request,
    size: int = Query(default=256, ge=16, le=2048, description="the longer side, in pixels"),
    db: Database = Depends(get_db),
    _user: CurrentUser = Depends(current_user),
) -> Response:
    """A JPEG of the image with its longer side ``size`` pixels (never enlarged)."""
    path, tag = _located(db, image_id)
    etag = f'"{tag}-{size}"'
    unchanged = _not_modified(request, etag)
    if unchanged is not None:
        return unchanged
    cached = Path(request.app.state.settings.project_dir) / "cache" / "thumbnails" / f"{image_id}-{tag}-{size}.jpg"
    try:
        data = cached.read_bytes()
    except FileNotFoundError:
        picture = _read_pixels(path)
        picture.thumbnail((size, size), PILImage.Resampling.LANCZOS)
        data = _encode(picture, "jpeg")
        io.write_bytes(cached, data, overwrite=True)
    return Response(data, media_type="image/jpeg", headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})


def _level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """Level 0 is the full size, each next one half the previous (rounded up), down to one that fits a tile."""
    sizes = [(width, height)]
    while max(sizes[-1]) > TILE_SIZE:
        w, h = sizes[-1]
        sizes.append((math.ceil(w / 2), math.ceil(h / 2)))
    return sizes


@router.get("/images/{image_id}/pyramid")
def pyramid(image_id: int, db: Database = Depends(get_db), _user: CurrentUser = Depends(current_user)) -> Pyramid:
    """The levels the image's tiles come in (``GET .../tiles/{level}/{col}/{row}``)."""
    with db.read() as session:
        image = edits.fresh_image(session, image_id)
        sizes = _level_sizes(image.width, image.height)
    return Pyramid(
        levels=[PyramidLevel(level=k, scale=0.5**k, width=w, height=h) for k, (w, h) in enumerate(sizes)],
        tile_size=TILE_SIZE,
    )


class _Pyramids:
    """The decoded levels of the few images viewed last, so panning over one decodes its file once."""

    def __init__(self, kept: int):
        self.kept = kept
        self.levels: OrderedDict[tuple[Path, str], list[PILImage.Image]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, path: Path, tag: str, sizes: list[tuple[int, int]]) -> list[PILImage.Image]:
        key = (path, tag)
        with self.lock:
            if key in self.levels:
                self.levels.move_to_end(key)
                return self.levels[key]
        levels = [_read_pixels(path)]
        if levels[0].size != sizes[0]:
            levels[0] = levels[0].resize(sizes[0], PILImage.Resampling.BILINEAR)
        for size in sizes[1:]:
            levels.append(levels[-1].resize(size, PILImage.Resampling.BOX))
        with self.lock:
            self.levels[key] = levels
            while len(self.levels) > self.kept:
                self.levels.popitem(last=False)
        return levels


_pyramids = _Pyramids(PYRAMIDS_KEPT)


@router.get(
    "/images/{image_id}/tiles/{level}/{col}/{row}",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}},
)
def tile(
    image_id: int,
    request: Request,
    level: int = PathParam(ge=0),
    col: int = PathParam(ge=0),
    row: int = PathParam(ge=0),
    format: Literal["jpeg", "png"] = "jpeg",
    db: Database = Depends(get_db),
    _user: CurrentUser = Depends(current_user),
) -> Response:
    """The tile at column ``col``, row ``row`` of pyramid level ``level`` (``TILE_SIZE`` square, smaller at
    the right and bottom edges); 404 naming the field that is out of range."""
    with db.read() as session:
        image = edits.fresh_image(session, image_id)
        sizes = _level_sizes(image.width, image.height)
    if level >= len(sizes):
        raise not_found("level", f"the image has levels 0 to {len(sizes) - 1}")
    width, height = sizes[level]
    for name, index, extent in (("col", col, width), ("row", row, height)):
        if index * TILE_SIZE >= extent:
            raise not_found(name, f"level {level} has {name}s 0 to {math.ceil(extent / TILE_SIZE) - 1}")
    path, tag = _located(db, image_id)
    etag = f'"{tag}-{level}-{col}-{row}-{format}"'
    unchanged = _not_modified(request, etag)
    if unchanged is not None:
        return unchanged
    picture = _pyramids.get(path, tag, sizes)[level]
    box = (col * TILE_SIZE, row * TILE_SIZE, min((col + 1) * TILE_SIZE, width), min((row + 1) * TILE_SIZE, height))
    return Response(
        _encode(picture.crop(box), format),
        media_type=f"image/{format}",
        headers={"ETag": etag, "Cache-Control": CACHE_CONTROL},
    )


def _encode(picture: PILImage.Image, kind: str) -> bytes:
    buffer = bytes_io.BytesIO()
    if kind == "jpeg":
        picture.convert("RGB").save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    else:
        picture.save(buffer, "PNG")
    return buffer.getvalue()
