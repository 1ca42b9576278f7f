"""The project as a ``Dataset`` and back: what export, training and the review read, and what import writes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from instaseg.app.db.database import Database
from instaseg.app.db.schema import AnnotatedInstance, Image, LabelClass
from instaseg.core import events, io
from instaseg.core.errors import InstasegError
from instaseg.data.dataset import Dataset


def project_dataset(session: Session, image_root: str | Path, *, image_ids: list[int] | None = None) -> Dataset:
    """The project's images, classes and instances (of ``image_ids`` only, when given) as a COCO ``Dataset``.

    Ids are the database's; each image's and instance's ``extra`` fields (what an imported COCO
    file carried that the project does not use) come back as they were.
    """
    classes = session.scalars(select(LabelClass).order_by(LabelClass.position, LabelClass.id)).all()
    image_query = select(Image).order_by(Image.id)
    instance_query = select(AnnotatedInstance).order_by(AnnotatedInstance.image_id, AnnotatedInstance.id)
    if image_ids is not None:
        image_query = image_query.where(Image.id.in_(image_ids))
        instance_query = instance_query.where(AnnotatedInstance.image_id.in_(image_ids))
    images = [
        {**image.extra, "id": image.id, "file_name": image.file_name, "width": image.width, "height": image.height}
        for image in session.scalars(image_query)
    ]
    annotations = [
        {
            **instance.extra,
            "id": instance.id,
            "image_id": instance.image_id,
            "category_id": instance.class_id,
            "segmentation": instance.rle,
            "area": instance.area,
            "bbox": instance.bbox,
            "iscrowd": int(instance.iscrowd),
        }
        for instance in session.scalars(instance_query)
    ]
    categories = [
        {"id": c.id, "name": c.name, **({"supercategory": c.supercategory} if c.supercategory is not None else {})}
        for c in classes
    ]
    return Dataset({"images": images, "annotations": annotations, "categories": categories}, image_root)


def scan_images(db: Database, image_root: str | Path) -> int:
    """Add every image file under ``image_root`` the project does not have yet; how many were added.

    Files that are not readable images are skipped (they are reported as warnings), so one broken
    file does not keep the others out.
    """
    root = Path(image_root)
    with db.read() as session:
        known = set(session.scalars(select(Image.file_name)))
    candidates = [p for p in root.rglob("*") if p.suffix.lower() in io.IMAGE_SUFFIXES and p.is_file()]
    new = sorted(p for p in candidates if p.relative_to(root).as_posix() not in known)
    records = []
    for path in events.track(new, "scanning images", unit="image"):
        try:
            width, height = io.image_size(path)
        except InstasegError as exc:
            events.warn(f"skipped: {exc}")
            continue
        with open(path, "rb") as file:
            sha1 = hashlib.file_digest(file, "sha1").hexdigest()
        records.append(Image(file_name=path.relative_to(root).as_posix(), width=width, height=height, sha1=sha1))
    with db.write() as session:
        session.add_all(records)
    return len(records)
