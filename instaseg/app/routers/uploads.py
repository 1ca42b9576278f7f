"""Images uploaded through the browser: stored under the image root's ``uploads`` folder, all or none.

Every file is checked before anything is written: its name must be a plain image file name (no
folder, no ``..``, no control characters, a known image suffix) and its bytes a whole image PIL can
decode, no larger than ``instaseg.core.io.MAX_IMAGE_PIXELS``. A name already in use is refused (409)
rather than renamed, so a file name means the same picture in the project and on the user's disk.
Each file is renamed into place inside the transaction that adds its row, once the row holds the
name, and removed again when the transaction fails.
"""

from __future__ import annotations

import hashlib
import io as bytes_io
import unicodedata
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from fastapi import APIRouter, Depends, File, UploadFile
from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from instaseg.app.auth import Permission, get_db, require
from instaseg.app.db.database import Database
from instaseg.app.db.schema import AnnotatedInstance, Image, Project
from instaseg.app.edits import ImageOut, image_json
from instaseg.app.errors import ApiError, bad_request
from instaseg.core import io

router = APIRouter(prefix="/api", tags=["uploads"])

UPLOAD_FOLDER = "uploads"
MAX_NAME_BYTES = 255  # the longest file name common file systems take


class Uploaded(BaseModel):
    images: list[ImageOut]


class _Checked(NamedTuple):
    name: str
    data: bytes
    field: str


def check_file_name(name: str | None, field: str) -> str:
    """``name`` when it is a plain image file name; 422 naming ``field`` otherwise."""
    if not name:
        raise bad_request(field, "the file has no name")
    if any(separator in name for separator in ("/", "\\", ":")):
        raise bad_request(field, f"{name!r} is not a plain file name (no folders, no drive)")
    if ".." in name:
        raise bad_request(field, f"{name!r} may not contain '..'")
    if any(unicodedata.category(character) == "Cc" for character in name):
        raise bad_request(field, f"{name!r} contains control characters")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise bad_request(field, f"the name is longer than {MAX_NAME_BYTES} bytes")
    if PurePosixPath(name).suffix.lower() not in io.IMAGE_SUFFIXES:
        raise bad_request(field, f"{name!r} is not named as an image ({', '.join(io.IMAGE_SUFFIXES)})")
    return name


def check_image_bytes(data: bytes, field: str) -> None:
    """Refuse (422 naming ``field``) bytes that are not a whole image PIL decodes, or one too large to decode."""
    try:
        with PILImage.open(bytes_io.BytesIO(data)) as image:
            if image.width * image.height > io.MAX_IMAGE_PIXELS:
                raise bad_request(field, f"the image is larger than {io.MAX_IMAGE_PIXELS:,} pixels")
            image.verify()
        # verify() checks the container only (it cannot for every format); decoding finds cut-off pixel data.
        with PILImage.open(bytes_io.BytesIO(data)) as image:
            image.load()
    except PILImage.DecompressionBombError:
        raise bad_request(field, f"the image is larger than {io.MAX_IMAGE_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        raise bad_request(field, "not an image, or in a format that cannot be read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise bad_request(field, f"a corrupt or truncated image ({exc})") from None


@router.post("/images/upload", status_code=201, dependencies=[Depends(require(Permission.manage))])
def upload_images(files: list[UploadFile] = File(...), db: Database = Depends(get_db)) -> Uploaded:
    """Add the uploaded images to the project, all or none.

    Refuses with 422 naming ``files.<k>.filename`` a name that is not a plain image file name, or
    ``files.<k>`` bytes that are not a readable image; 409 naming ``files.<k>.filename`` a name that
    an image of the project or a file in the upload folder already has, or that the request repeats.
    """
    checked: list[_Checked] = []
    for k, upload in enumerate(files):
        field = f"files.{k}"
        name = check_file_name(upload.filename, f"{field}.filename")
        if any(previous.name == name for previous in checked):
            raise ApiError(409, f"{field}.filename", f"{name!r} is uploaded twice")
        data = upload.file.read()
        check_image_bytes(data, field)
        checked.append(_Checked(name, data, field))
    written: list[Path] = []
    try:
        with db.write() as session:
            project = session.scalars(select(Project)).one()
            folder = Path(project.image_root) / UPLOAD_FOLDER
            rows = []
            for item in checked:
                file_name = f"{UPLOAD_FOLDER}/{item.name}"
                existing = session.scalar(select(Image).where(Image.file_name == file_name))
                if existing is not None or (folder / item.name).exists():
                    current = None if existing is None else image_json(existing, _instance_count(session, existing))
                    raise ApiError(409, f"{item.field}.filename", f"{file_name!r} exists", current=current)
                # The name was free a moment ago, and the flush below claims it (a concurrent upload of the
                # same name waits there and then fails), so only the row's owner ever renames into place;
                # the check at the rename would race with that owner's own rename.
                with io.atomic_path(folder / item.name, overwrite=True) as temporary:
                    temporary.write_bytes(item.data)
                    width, height = io.image_size(temporary)
                    sha1 = hashlib.sha1(item.data).hexdigest()
                    row = Image(file_name=file_name, width=width, height=height, sha1=sha1, uploaded=True)
                    session.add(row)
                    session.flush()
                written.append(folder / item.name)
                rows.append(row)
            return Uploaded(images=[ImageOut.model_validate(image_json(row, 0)) for row in rows])
    except IntegrityError:  # another upload took one of the names between the check and the insert
        _remove(written)
        raise ApiError(409, "files", "another upload took one of these names; try again") from None
    except BaseException:
        _remove(written)
        raise


def _instance_count(session: Session, image: Image) -> int:
    return session.scalar(select(func.count()).where(AnnotatedInstance.image_id == image.id)) or 0


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
