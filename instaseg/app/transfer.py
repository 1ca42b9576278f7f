"""The project as a ``Dataset`` and back: what export, training and the review read, and what import writes.

An import is one transaction: every class, image, instance and history row of a dataset is
written, or none is. The work that needs no database (masks to RLE, boxes, areas, file hashes)
is done before the transaction begins, so other writers wait for the database only while the
rows go in. Rows go in as bulk inserts: one ORM object per instance would take most of the time
of a large import.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import orjson
from pydantic import BaseModel
from sqlalchemy import JSON, Text, func, insert, select, text, update
from sqlalchemy import cast as cast_to
from sqlalchemy.orm import Session

from instaseg.app import edits
from instaseg.app.db.database import Database
from instaseg.app.db.schema import (
    AnnotatedInstance,
    History,
    HistoryAction,
    Image,
    ImageStatus,
    LabelClass,
    Project,
    Provenance,
    now,
)
from instaseg.core import events, io
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.data.convert import write_dataset
from instaseg.data.dataset import Dataset

HOTKEYS = tuple("123456789")
# The COCO fields the project keeps in columns of its own; every other field goes to ``extra``.
IMAGE_COLUMNS = frozenset({"id", "file_name", "width", "height"})
ANNOTATION_COLUMNS = frozenset({"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"})
# Hashing is reading: a few threads keep the disk busy while each waits for its file.
HASH_THREADS = 4
MIN_RING_NUMBERS = 6
# Large enough for few round trips, small enough for any database's limit on bound parameters.
IN_CHUNK = 2000


class ImportSummary(BaseModel):
    """What an import added to the project and what it found there already."""

    images_added: int
    images_matched: int
    instances_added: int
    classes_added: int


def import_dataset(db: Database, dataset: Dataset, *, user_id: int | None) -> ImportSummary:
    """Add ``dataset``'s classes, images and instances to the project, in one transaction: all or nothing.

    Classes are matched by name; new ones come after the existing ones, with the palette's next
    colour (``edits.create_class``) and a free hotkey of 1 to 9 while there is one. Images are matched by their path relative to the
    project's image root; a new image gets its size from the dataset and the SHA-1 of its file when
    the file can be read; a matched one takes the dataset's extra fields and a new revision when it
    changes, so that a client holding the old revision cannot overwrite the instances added to it.
    Every annotation becomes an instance of the user ``user_id``: its mask as compressed RLE, box and
    area from that mask, the polygon kept as drawn when the editor accepts it as one (rings inside
    the image, none crossing itself, none overlapping another), provenance ``model`` when it has a
    score, and every COCO field the project has no column for in ``extra``. One history row per
    instance records its creation; the rows of one import share a change set.

    Raises:
        InstasegError: naming the record, and with nothing written: content ``Dataset.validate``
            refuses; an image outside the project's image root, or named twice; an image the
            project has at another size; an annotation of an unknown image or category, or
            without a polygon or RLE segmentation; a class name too long to store.
    """
    dataset.validate()
    with db.read() as session:
        root = _project_root(session)
        known = set(session.scalars(select(Image.file_name)))
    names = _project_names(dataset, root)
    instances = _instance_rows(dataset)
    categories = _checked_categories(dataset)
    new_images = [k for k, name in enumerate(names) if name not in known]
    hashes = dict(zip(new_images, _file_sha1s(dataset, [dataset.images[k] for k in new_images]), strict=True))
    with db.write() as session:
        moment, change_set = now(), edits.new_change_set()
        class_of_category, classes_added = _add_classes(session, categories, user_id=user_id, change_set=change_set)
        image_of, matched = _add_images(session, dataset, names, hashes, moment)
        ids = _new_ids(session, AnnotatedInstance, len(instances))
        for instance_id, row in zip(ids, instances, strict=True):
            row.update(
                id=instance_id,
                image_id=image_of[row["image_id"]],
                class_id=class_of_category[row["class_id"]],
                author_id=user_id,
                created_at=moment,
                updated_at=moment,
            )
        _touch_matched_images(session, matched, {row["image_id"] for row in instances}, moment)
        _bulk_insert(session, AnnotatedInstance, instances)
        _bulk_insert(
            session,
            History,
            [
                {
                    "at": moment,
                    "user_id": user_id,
                    "entity": "instance",
                    "entity_id": row["id"],
                    "image_id": row["image_id"],
                    "action": HistoryAction.create,
                    "before": None,
                    # The rows as attributes are all instance_json reads: an ORM object per row would cost more
                    # than the rest of the history.
                    "after": edits.instance_json(cast(AnnotatedInstance, SimpleNamespace(**row))),
                    "change_set": change_set,
                    "reverts": None,
                }
                for row in instances
            ],
        )
    return ImportSummary(
        images_added=len(dataset.images) - len(matched),
        images_matched=len(matched),
        instances_added=len(instances),
        classes_added=classes_added,
    )


def export_project(
    db: Database, out: str | Path, fmt: str, *, overwrite: bool = False, image_ids: list[int] | None = None
) -> Path:
    """Write the project (its images ``image_ids`` only, when given) to ``out`` in format ``fmt``, atomically.

    Formats and layouts are ``instaseg convert``'s (``write_dataset``); a COCO export gives back what
    a COCO import took in: images with their extra fields, categories in class order with their
    supercategory, instances in order with their masks, crowd flags and extra fields.

    Raises:
        InstasegError: an unknown format; an existing ``out`` without ``overwrite``; an ``out`` that
            is, contains or lies inside the image root (a later scan would take an export's images
            for the project's).
    """
    io.check_output(out, overwrite)
    with db.read() as session:
        root = _project_root(session)
        io.guard_outputs([out], inputs=[root])
        dataset = project_dataset(session, root, image_ids=image_ids)
    return write_dataset(dataset, out, fmt, overwrite=overwrite)


def project_dataset(session: Session, image_root: str | Path, *, image_ids: list[int] | None = None) -> Dataset:
    """The project's images, classes and instances (of ``image_ids`` only, when given) as a COCO ``Dataset``.

    Ids are the database's; each image's and instance's ``extra`` fields (what an imported COCO
    file carried that the project does not use) come back as they were.
    """
    # Columns rather than ORM objects, and JSON as text decoded by orjson: an object per instance, or
    # the standard library's decoder, would take most of an export.
    classes = session.execute(
        select(LabelClass.id, LabelClass.name, LabelClass.supercategory).order_by(LabelClass.position, LabelClass.id)
    ).all()
    image_query = select(Image.id, Image.file_name, Image.width, Image.height, _as_text(Image.extra)).order_by(Image.id)
    instance_query = select(
        AnnotatedInstance.id,
        AnnotatedInstance.image_id,
        AnnotatedInstance.class_id,
        _as_text(AnnotatedInstance.rle),
        AnnotatedInstance.area,
        _as_text(AnnotatedInstance.bbox),
        AnnotatedInstance.iscrowd,
        _as_text(AnnotatedInstance.extra),
    ).order_by(AnnotatedInstance.image_id, AnnotatedInstance.id)
    if image_ids is not None:
        image_query = image_query.where(Image.id.in_(image_ids))
        instance_query = instance_query.where(AnnotatedInstance.image_id.in_(image_ids))
    images = [
        {**orjson.loads(extra), "id": image_id, "file_name": file_name, "width": width, "height": height}
        for image_id, file_name, width, height, extra in session.execute(image_query)
    ]
    annotations = [
        {
            **orjson.loads(extra),
            "id": instance_id,
            "image_id": image_id,
            "category_id": class_id,
            "segmentation": orjson.loads(rle),
            "area": area,
            "bbox": orjson.loads(bbox),
            "iscrowd": int(iscrowd),
        }
        for instance_id, image_id, class_id, rle, area, bbox, iscrowd, extra in session.execute(instance_query)
    ]
    categories = [
        {"id": class_id, "name": name, **({"supercategory": supercategory} if supercategory is not None else {})}
        for class_id, name, supercategory in classes
    ]
    return Dataset({"images": images, "annotations": annotations, "categories": categories}, image_root)


def _as_text(column: Any) -> Any:
    return cast_to(column, Text).label(column.key)


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


# -- import: what needs no database ---------------------------------------------------------------


def _project_root(session: Session) -> Path:
    project = session.scalar(select(Project))
    assert project is not None, "open_project creates the project row"
    return Path(os.path.realpath(project.image_root))


def _project_names(dataset: Dataset, root: Path) -> list[str]:
    """Each image's path relative to the project's image root, as the project names it ("/"-separated).

    Folders are followed through symbolic links (each folder once: there are few), so a linked
    folder leading out of the root is refused like a path that does.
    """
    base = Path(os.path.realpath(dataset.image_root))
    folders: dict[str, str] = {}
    names: list[str] = []
    first_of: dict[str, int] = {}
    for image in dataset.images:
        record = f"image id {image['id']}"
        folder, leaf = os.path.split(os.path.normpath(image["file_name"]))
        if folder not in folders:
            folders[folder] = Path(os.path.relpath(os.path.realpath(base / folder), root)).as_posix()
        relative = folders[folder]
        if relative == ".." or relative.startswith("../"):
            raise InstasegError(
                f"{base / image['file_name']} lies outside the project's image folder {root}",
                file=dataset.source,
                record=record,
            )
        name = leaf if relative == "." else f"{relative}/{leaf}"
        earlier = first_of.setdefault(name, image["id"])
        if earlier != image["id"]:
            raise InstasegError(
                f"names the same file as image id {earlier} ({name})", file=dataset.source, record=record
            )
        names.append(name)
    return names


def _file_sha1s(dataset: Dataset, images: list[dict]) -> list[str | None]:
    """The SHA-1 of each image's file, None where it cannot be read (labels may come before their images)."""

    def sha1(image: dict) -> str | None:
        try:
            return dataset.image_sha1(image)
        except InstasegError:
            return None

    # A missing file is told by one stat, without a thread's turn.
    present = [os.path.isfile(dataset.image_path(image)) for image in images]
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        hashes = iter(pool.map(sha1, [image for image, there in zip(images, present, strict=True) if there]))
    return [next(hashes) if there else None for there in present]


def _checked_categories(dataset: Dataset) -> list[dict]:
    longest = LabelClass.name.type.length
    for category in dataset.categories:
        for field in ("name", "supercategory"):
            value = category.get(field)
            if value is not None and (not isinstance(value, str) or len(value) > longest):
                raise InstasegError(
                    f"{field} must be text of at most {longest} characters",
                    file=dataset.source,
                    record=f"category id {category['id']}",
                )
    return dataset.categories


def _instance_rows(dataset: Dataset) -> list[dict[str, Any]]:
    """One instance row per annotation, keyed by the dataset's image and category ids (``image_id``,
    ``class_id``) until the transaction knows the project's."""
    images = dataset.image_by_id
    categories = dataset.category_index
    rows: list[dict[str, Any]] = []
    polygons: list[list[list[float]] | None] = []
    sizes: list[tuple[int, int]] = []
    for ann in dataset.annotations:
        record = f"annotation id {ann['id']}"
        image = images.get(ann["image_id"])
        if image is None:
            raise InstasegError(f"image id {ann['image_id']} is not in 'images'", file=dataset.source, record=record)
        if ann["category_id"] not in categories:
            raise InstasegError(
                f"category id {ann['category_id']} is not in 'categories'", file=dataset.source, record=record
            )
        height, width = image["height"], image["width"]
        segmentation = _checked_segmentation(ann.get("segmentation"), dataset.source, record)
        rle = mask_ops.to_rle(segmentation, height, width)
        score = _score(ann.get("score"))
        rows.append(
            {
                "image_id": ann["image_id"],
                "class_id": ann["category_id"],
                "rle": rle,
                "polygon": None,
                "bbox": mask_ops.bbox(rle),
                "area": mask_ops.area(rle),
                "iscrowd": bool(ann.get("iscrowd", 0)),
                "provenance": Provenance.human if score is None else Provenance.model,
                "assistant": None,
                "model_version_id": None,
                "score": score,
                "revision": 1,
                "extra": {key: value for key, value in ann.items() if key not in ANNOTATION_COLUMNS},
            }
        )
        polygons.append(segmentation if isinstance(segmentation, list) else None)
        sizes.append((height, width))
    for row, rings in zip(rows, _editable_polygons(rows, polygons, sizes), strict=True):
        row["polygon"] = rings
    return rows


def _score(value: Any) -> float | None:
    """A model's confidence, when the annotation carries one (a finite number)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _checked_segmentation(segmentation: Any, source: Path | None, record: str) -> Any:
    """A polygon list or RLE dict (``Dataset.validate`` has checked RLEs); other segmentations are refused."""
    if isinstance(segmentation, dict):
        return segmentation
    if not isinstance(segmentation, list) or not segmentation:
        raise InstasegError("has no polygon or RLE segmentation; the project keeps masks", file=source, record=record)
    for polygon in segmentation:
        # Types, not isinstance(): JSON's true and false are not coordinates. A sum is finite only
        # when every term is.
        if (
            not isinstance(polygon, list)
            or not set(map(type, polygon)) <= {int, float}
            or not math.isfinite(sum(polygon))
        ):
            raise InstasegError("polygon is not a list of finite numbers", file=source, record=record)
        if len(polygon) % 2:
            raise InstasegError(
                f"polygon has an odd number of coordinates ({len(polygon)})", file=source, record=record
            )
    return segmentation


def _editable_polygons(
    rows: list[dict[str, Any]], polygons: list[list[list[float]] | None], sizes: list[tuple[int, int]]
) -> list[list[list[float]] | None]:
    """Each polygon segmentation as rings the editor takes as they are, or None where it would not.

    The editor's rule (``instaseg.app.shapes``) is rings of 3 or more points inside the image, none
    crossing itself, filled even-odd, covering some pixel; COCO fills the union of its polygons,
    which is the same mask only when no two rings share a pixel. The rings of every annotation are
    checked together, in a few array operations and one call of shapely.
    """
    import shapely

    editable: list[list[list[float]] | None] = [None] * len(rows)
    candidates = [
        (k, polygon)
        for k, polygon in enumerate(polygons)
        if polygon is not None and rows[k]["area"] > 0 and min(map(len, polygon)) >= MIN_RING_NUMBERS
    ]
    if not candidates:
        return editable
    rings = [ring for _, polygon in candidates for ring in polygon]
    ring_counts = np.fromiter((len(polygon) for _, polygon in candidates), np.int64, len(candidates))
    points_per_ring = np.fromiter(map(len, rings), np.int64, len(rings)) // 2
    coordinates = np.fromiter(itertools.chain.from_iterable(rings), np.float64, 2 * int(points_per_ring.sum()))
    points = coordinates.reshape(-1, 2)
    ring_starts = np.cumsum(points_per_ring) - points_per_ring
    height, width = np.asarray([sizes[k] for k, _ in candidates], np.float64).repeat(ring_counts, axis=0).T
    # Each ring's box, [x0, y0, x1, y1].
    boxes = np.stack(
        [np.minimum.reduceat(points[:, axis], ring_starts) for axis in (0, 1)]
        + [np.maximum.reduceat(points[:, axis], ring_starts) for axis in (0, 1)],
        axis=1,
    )
    inside = (boxes[:, :2].min(axis=1) >= 0) & (boxes[:, 2] <= width) & (boxes[:, 3] <= height)
    simple = shapely.is_simple(shapely.linearrings(points, indices=np.repeat(np.arange(len(rings)), points_per_ring)))
    first_rings = np.cumsum(ring_counts) - ring_counts
    fine = np.logical_and.reduceat(inside & simple, first_rings)
    for (k, polygon), ok, first in zip(candidates, fine.tolist(), first_rings.tolist(), strict=True):
        if ok and (
            len(polygon) == 1
            or _boxes_apart(boxes[first : first + len(polygon)])
            or _rings_apart(polygon, rows[k]["area"], *sizes[k])
        ):
            editable[k] = [list(map(float, ring)) for ring in polygon]
    return editable


def _boxes_apart(boxes: np.ndarray) -> bool:
    """Whether no two of these ring boxes come within a pixel of each other, so their rings share no pixel."""
    grown = boxes + np.array([-1.0, -1.0, 1.0, 1.0])
    overlap = (
        (grown[:, None, 0] < grown[None, :, 2])
        & (grown[None, :, 0] < grown[:, None, 2])
        & (grown[:, None, 1] < grown[None, :, 3])
        & (grown[None, :, 1] < grown[:, None, 3])
    )
    return int(overlap.sum()) == len(boxes)  # each box overlaps itself only


def _rings_apart(polygon: list[list[float]], area: int, height: int, width: int) -> bool:
    """Whether no two rings share a pixel: their areas add up to the area of their union."""
    return sum(mask_ops.area(mask_ops.to_rle([ring], height, width)) for ring in polygon) == area


# -- import: the transaction ----------------------------------------------------------------------


def _new_ids(session: Session, model: type, count: int) -> list[int]:
    """``count`` primary keys for new rows of ``model``'s table, never used before and taken by no other writer.

    PostgreSQL hands them out from the table's sequence. SQLite's writer holds the database alone,
    so the ids after both the largest in the table and the largest it ever gave out (its
    ``sqlite_sequence``, which the inserted ids then move on) are free.
    """
    if count == 0:
        return []
    table = model.__table__  # type: ignore[attr-defined]
    if session.connection().dialect.name == "postgresql":
        sequence = func.pg_get_serial_sequence(table.name, "id")
        return list(session.scalars(select(func.nextval(sequence)).select_from(func.generate_series(1, count))))
    given = 0
    if session.scalar(text("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'")):
        given = session.scalar(text("SELECT seq FROM sqlite_sequence WHERE name = :name"), {"name": table.name}) or 0
    first = max(session.scalar(select(func.max(table.c.id))) or 0, given) + 1
    return list(range(first, first + count))


def _bulk_insert(session: Session, model: type, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (all with the keys of the first) into ``model``'s table straight through the
    driver: COPY on PostgreSQL, one ``executemany`` on SQLite.

    Values are converted as SQLAlchemy converts them, except JSON, encoded by orjson: SQLAlchemy's
    own executemany converts each value of each row through the standard library's encoder and its
    type in Python, which took most of a large import.
    """
    if not rows:
        return
    table = model.__table__  # type: ignore[attr-defined]
    connection = session.connection()
    dialect = connection.dialect
    names = list(rows[0])
    columns: dict[str, list[Any]] = {}
    for name in names:
        column_type = table.c[name].type
        values = [row[name] for row in rows]
        if isinstance(column_type, JSON):
            values = [io.dumps_json(value).decode() for value in values]
        elif (process := column_type.dialect_impl(dialect).bind_processor(dialect)) is not None:
            # Such columns hold few distinct values (one time, a few enum members): each converted once.
            converted = {value: process(value) for value in set(values)}
            values = [converted[value] for value in values]
        columns[name] = values
    if dialect.name == "postgresql":
        from psycopg import sql

        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, names))
        )
        driver = connection.connection.driver_connection
        assert driver is not None, "a connection in use has its driver's"
        with driver.cursor() as cursor, cursor.copy(copy_sql) as copy:
            for record in zip(*(columns[name] for name in names), strict=True):
                copy.write_row(record)
    else:
        compiled = insert(table).compile(dialect=dialect, column_keys=names)
        order = compiled.positiontup or names
        connection.exec_driver_sql(str(compiled), list(zip(*(columns[name] for name in order), strict=True)))


def _add_classes(
    session: Session, categories: list[dict], *, user_id: int | None, change_set: str
) -> tuple[dict[int, int], int]:
    """Project class id of each dataset category id, creating the classes of new names (after the
    existing ones, with a free hotkey of 1 to 9 while there is one); and how many were created."""
    existing = session.execute(select(LabelClass.id, LabelClass.name, LabelClass.hotkey)).all()
    class_by_name = {name: class_id for class_id, name, _ in existing}
    used_hotkeys = {hotkey for _, _, hotkey in existing}
    free_hotkeys = iter([h for h in HOTKEYS if h not in used_hotkeys])
    added = 0
    for category in categories:
        if category["name"] in class_by_name:
            continue
        label_class = edits.create_class(
            session,
            user_id=user_id,
            name=category["name"],
            hotkey=next(free_hotkeys, None),
            supercategory=category.get("supercategory"),
            change_set=change_set,
        )
        class_by_name[label_class.name] = label_class.id
        added += 1
    return {category["id"]: class_by_name[category["name"]] for category in categories}, added


def _add_images(
    session: Session, dataset: Dataset, names: list[str], hashes: dict[int, str | None], moment: datetime
) -> tuple[dict[int, int], list[tuple[Any, dict]]]:
    """Project image id of each dataset image id, adding the new images; and the matched images'
    rows (locked) with their dataset records.

    A matched image of another size is refused: its instances would not fit it.
    """
    found_by_name = {row.file_name: row for row in _locked_images_named(session, names)}
    image_of: dict[int, int] = {}
    matched: list[tuple[Any, dict]] = []
    new_rows: list[dict[str, Any]] = []
    new_owners: list[int] = []
    for position, (image, name) in enumerate(zip(dataset.images, names, strict=True)):
        found = found_by_name.get(name)
        if found is None:
            new_rows.append(
                {
                    "file_name": name,
                    "width": image["width"],
                    "height": image["height"],
                    "sha1": hashes.get(position),
                    "status": ImageStatus.new,
                    "assignee_id": None,
                    "revision": 1,
                    "uploaded": False,
                    "extra": _extra(image, IMAGE_COLUMNS),
                    "created_at": moment,
                    "updated_at": moment,
                }
            )
            new_owners.append(image["id"])
        elif (found.width, found.height) != (image["width"], image["height"]):
            raise InstasegError(
                f"the project has {name} as {found.width}x{found.height}, the dataset says "
                f"{image['width']}x{image['height']}",
                file=dataset.source,
                record=f"image id {image['id']}",
            )
        else:
            image_of[image["id"]] = found.id
            matched.append((found, image))
    for image_id, row in zip(_new_ids(session, Image, len(new_rows)), new_rows, strict=True):
        row["id"] = image_id
    _bulk_insert(session, Image, new_rows)
    image_of.update(zip(new_owners, (row["id"] for row in new_rows), strict=True))
    return image_of, matched


def _touch_matched_images(
    session: Session, matched: list[tuple[Any, dict]], receiving: set[int], moment: datetime
) -> None:
    """Give each matched image that gains instances or extra fields a new revision (and those fields),
    so that a client's save based on the revision before the import is refused, not applied over it."""
    changes = []
    for row, image in matched:
        extra = {**row.extra, **_extra(image, IMAGE_COLUMNS)}
        if row.id in receiving or extra != row.extra:
            changes.append({"id": row.id, "revision": row.revision + 1, "extra": extra, "updated_at": moment})
    if changes:
        session.execute(update(Image), changes)


def _locked_images_named(session: Session, names: list[str]) -> list[Any]:
    """The project's images of these names, locked until the transaction ends (on PostgreSQL; SQLite's
    writer holds the whole database), so no save changes them between this read and the import's update."""
    columns = (Image.id, Image.file_name, Image.width, Image.height, Image.revision, Image.extra)
    found: list[Any] = []
    for start in range(0, len(names), IN_CHUNK):
        query = select(*columns).where(Image.file_name.in_(names[start : start + IN_CHUNK])).with_for_update()
        found += session.execute(query).all()
    return found


def _extra(record: dict, columns: frozenset[str]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in columns}
