"""The canonical dataset model: a COCO instances file held as its own dicts, plus indexes.

Keeping the COCO dicts themselves (rather than copying them into objects) means nothing a file
carries is lost on a load/save round trip, and loading stays as fast as parsing the JSON.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections import defaultdict
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from instaseg.core import io
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.core.structures import Instances

_REQUIRED = {
    "images": (("id", int), ("file_name", str), ("width", int), ("height", int)),
    "annotations": (("id", int), ("image_id", int), ("category_id", int)),
    "categories": (("id", int), ("name", str)),
}


class Dataset:
    """A COCO-format instance segmentation dataset.

    Args:
        coco: the COCO dict, with ``images``, ``annotations`` and ``categories`` lists.
        image_root: folder that image ``file_name`` paths are relative to.
        source: the file it was read from, used in error messages.
    """

    def __init__(self, coco: dict[str, Any], image_root: str | Path = ".", source: str | Path | None = None):
        self.coco = coco
        self.image_root = Path(image_root)
        self.source = Path(source) if source is not None else None
        _validate_schema(coco, self.source)

    # -- loading and saving -------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, images: str | Path | None = None, *, validate: bool = True) -> Dataset:
        """Read a COCO instances JSON, refusing content every step would misread (see ``validate``).

        The image root defaults to the JSON's folder, or to ``info.image_root`` (relative to that
        folder) when the file names one, as ``instaseg convert`` does for images kept elsewhere.
        ``validate=False`` is for ``instaseg check``, which reports those problems with all the others.
        """
        path = Path(path)
        coco = io.read_json(path)
        if images is None:
            info = coco.get("info") if isinstance(coco, dict) else None
            relative_root = info.get("image_root") if isinstance(info, dict) else None
            images = path.parent / relative_root if isinstance(relative_root, str) else path.parent
        dataset = cls(coco, images, source=path)
        if validate:
            dataset.validate()
        return dataset

    def validate(self) -> None:
        """Refuse, naming the first record at fault, what would make any step silently misread the data.

        That is: an image, category or annotation id used twice (labels would be joined to the wrong
        image or class, and pycocotools keeps one annotation of an id); an image size that is not
        positive or too large to decode; a ``file_name`` naming a folder or a place outside the image
        root; an RLE mask that is malformed or not of its image's size (pycocotools would draw garbage
        from it). ``instaseg check`` loads without it, to list such problems among all the others;
        ``check --fix`` repairs what it can.
        """
        for key in ("images", "categories", "annotations"):
            _refuse_duplicate_ids(self.coco[key], key, self.source)
        for image in self.images:
            self._validate_image(image)
        self._validate_rles()

    def _validate_image(self, image: dict) -> None:
        record = f"image id {image['id']}"
        name = image["file_name"]
        path = io.safe_join(self.image_root, name, record=record, file=self.source)
        if not Path(name).name or path.is_dir():
            raise InstasegError(
                f"file_name {name!r} names a folder, not an image file", file=self.source, record=record
            )
        width, height = image["width"], image["height"]
        if width <= 0 or height <= 0:
            raise InstasegError(f"declared size {width}x{height} is not positive", file=self.source, record=record)
        if width * height > io.MAX_IMAGE_PIXELS:
            # Each of its masks would take a byte per pixel whenever one is drawn.
            raise InstasegError(
                f"declared size {width}x{height} is over {io.MAX_IMAGE_PIXELS:,} pixels, too large to decode ({path})",
                file=self.source,
                record=record,
            )

    def _validate_rles(self) -> None:
        images = self.image_by_id
        # Annotations of unknown images are refused or skipped by each step, RLE or not.
        owners = [
            ann for ann in self.annotations if type(ann.get("segmentation")) is dict and ann["image_id"] in images
        ]
        sizes = [(images[ann["image_id"]]["height"], images[ann["image_id"]]["width"]) for ann in owners]
        problems = mask_ops.invalid_rles([ann["segmentation"] for ann in owners], sizes)
        if problems:
            position, problem = next(iter(problems.items()))
            ann = owners[position]
            raise InstasegError(
                problem, file=self.source, record=f"annotation id {ann['id']} (image id {ann['image_id']})"
            )

    def save(
        self,
        path: str | Path,
        *,
        overwrite: bool = False,
        record_image_root: bool = False,
        location: str | Path | None = None,
    ) -> Path:
        """Write the COCO JSON atomically; with ``record_image_root``, one that still finds its images.

        ``record_image_root`` records the image root in ``info.image_root``, relative to the file's
        folder, when it is another folder (and removes a stale one when it is that folder), so
        ``Dataset.load`` finds the images without ``--images``: what ``convert``, ``check --fix``,
        ``review apply`` and ``noise`` write. ``location`` is where the file will finally live, when
        ``path`` is a temporary stand-in that is moved there afterwards. Without it the COCO dict is
        written as it is.
        """
        coco = self.coco
        if record_image_root:
            coco = self._coco_with_image_root(Path(location if location is not None else path).parent)
        return io.write_json(path, coco, overwrite=overwrite)

    def image_root_relative_to(self, folder: str | Path) -> str:
        """The image root as a POSIX path relative to ``folder`` (``"."`` when it is that folder).

        Both paths are resolved first: a relative path computed through a symbolic link could lead
        elsewhere once the system follows the link.
        """
        return Path(os.path.relpath(self.image_root.resolve(), Path(folder).resolve())).as_posix()

    def _coco_with_image_root(self, folder: Path) -> dict[str, Any]:
        root = self.image_root_relative_to(folder)
        info = self.coco.get("info")
        if root != ".":
            return {**self.coco, "info": {**(info if isinstance(info, dict) else {}), "image_root": root}}
        if isinstance(info, dict) and "image_root" in info:
            return {**self.coco, "info": {key: value for key, value in info.items() if key != "image_root"}}
        return self.coco

    def copy(self) -> Dataset:
        """A deep copy: editing it leaves this dataset as it is."""
        return Dataset(copy.deepcopy(self.coco), self.image_root, self.source)

    # -- the three lists ----------------------------------------------------------------------
    # Read them freely; change them through the setters and the add/remove methods below, which
    # keep the indexes current. Editing a record's fields in place needs nothing, except its
    # ``id`` or an annotation's ``image_id``, which the indexes are keyed by: replace the record.
    @property
    def images(self) -> list[dict]:
        """The image records (``id``, ``file_name``, ``width``, ``height``, ...)."""
        return self.coco["images"]

    @images.setter
    def images(self, records: Iterable[dict]) -> None:
        self.coco["images"] = _checked_records(records, "images", self.source)
        self._forget_indexes("image_by_id")

    @property
    def annotations(self) -> list[dict]:
        """The annotation records (``id``, ``image_id``, ``category_id``, ``segmentation``, ...)."""
        return self.coco["annotations"]

    @annotations.setter
    def annotations(self, records: Iterable[dict]) -> None:
        self.coco["annotations"] = _checked_records(records, "annotations", self.source)
        self._forget_indexes("annotations_by_image")

    @property
    def categories(self) -> list[dict]:
        """The category records (``id``, ``name``, ...), in class order."""
        return self.coco["categories"]

    @categories.setter
    def categories(self, records: Iterable[dict]) -> None:
        self.coco["categories"] = _checked_records(records, "categories", self.source)
        self._forget_indexes("category_index")

    def add_images(self, records: Iterable[dict]) -> None:
        """Append image records (their ids must be new: ``validate`` refuses duplicates)."""
        added = _checked_records(records, "images", self.source, start=len(self.images))
        self.images.extend(added)
        index = self.__dict__.get("image_by_id")
        if index is not None:
            index.update((image["id"], image) for image in added)

    def remove_images(self, image_ids: Iterable[int]) -> None:
        """Drop the images of the given ids and their annotations."""
        unwanted = set(image_ids)
        self.coco["images"] = [image for image in self.images if image["id"] not in unwanted]
        self.coco["annotations"] = [ann for ann in self.annotations if ann["image_id"] not in unwanted]
        self._forget_indexes("image_by_id", "annotations_by_image")

    def add_annotations(self, records: Iterable[dict]) -> None:
        """Append annotation records (their ids must be new: ``validate`` refuses duplicates)."""
        added = _checked_records(records, "annotations", self.source, start=len(self.annotations))
        self.annotations.extend(added)
        index = self.__dict__.get("annotations_by_image")
        if index is not None:
            for ann in added:
                index[ann["image_id"]].append(ann)

    def remove_annotations(self, annotation_ids: Iterable[int]) -> None:
        """Drop the annotations of the given ids."""
        unwanted = set(annotation_ids)
        self.coco["annotations"] = [ann for ann in self.annotations if ann["id"] not in unwanted]
        self._forget_indexes("annotations_by_image")

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (
            f"Dataset({len(self.images)} images, {len(self.annotations)} instances, "
            f"{len(self.categories)} classes, root={str(self.image_root)!r})"
        )

    # -- indexes (built on first use, kept current by the edits above) ---------------------------
    def _forget_indexes(self, *names: str) -> None:
        for name in names:
            self.__dict__.pop(name, None)

    @cached_property
    def image_by_id(self) -> dict[int, dict]:
        """Image id -> image record."""
        return {img["id"]: img for img in self.images}

    @cached_property
    def annotations_by_image(self) -> dict[int, list[dict]]:
        """Image id -> its annotation records, in file order."""
        index: dict[int, list[dict]] = defaultdict(list)
        for ann in self.annotations:
            index[ann["image_id"]].append(ann)
        return index

    @cached_property
    def category_index(self) -> dict[int, int]:
        """COCO category id -> position in ``class_names``."""
        return {cat["id"]: k for k, cat in enumerate(self.categories)}

    @property
    def class_names(self) -> list[str]:
        return [cat["name"] for cat in self.categories]

    @property
    def category_ids(self) -> list[int]:
        return [cat["id"] for cat in self.categories]

    # -- per-image access -----------------------------------------------------------------------
    def image_path(self, image: dict | int) -> Path:
        image = self.image_by_id[image] if isinstance(image, int) else image
        return io.safe_join(self.image_root, image["file_name"], record=f"image id {image['id']}")

    def image_sha1(self, image: dict | int) -> str:
        """SHA-1 of the image file's bytes: names the image whatever folder or file name it has."""
        path = self.image_path(image)
        try:
            with open(path, "rb") as file:
                return hashlib.file_digest(file, "sha1").hexdigest()
        except OSError as exc:
            raise InstasegError(f"cannot read image file ({exc.strerror})", file=path) from None

    def read_image(self, image: dict | int) -> np.ndarray:
        """The image's pixels as (H, W, 3) uint8, checked against the size the JSON declares."""
        image = self.image_by_id[image] if isinstance(image, int) else image
        pixels = io.read_image(self.image_path(image))
        if pixels.shape[:2] != (image["height"], image["width"]):
            raise InstasegError(
                f"image is {pixels.shape[1]}x{pixels.shape[0]} but the JSON says {image['width']}x{image['height']}",
                file=self.image_path(image),
                record=f"image id {image['id']}",
            )
        return pixels

    def ground_truth(self, image: dict | int) -> Instances:
        """The image's annotations as ``Instances`` (score 1; ``data`` holds annotation ids and iscrowd)."""
        image = self.image_by_id[image] if isinstance(image, int) else image
        height, width = image["height"], image["width"]
        anns = self.annotations_by_image.get(image["id"], [])
        rles = [mask_ops.to_rle(ann.get("segmentation") or [], height, width) for ann in anns]
        instances = Instances.from_masks(
            mask_ops.decode_many(rles, height, width),
            [self.category_index[ann["category_id"]] for ann in anns],
            [ann.get("score", 1.0) for ann in anns],
            self.class_names,
            annotation_id=np.asarray([ann["id"] for ann in anns], np.int64),
            iscrowd=np.asarray([bool(ann.get("iscrowd", 0)) for ann in anns], bool),
        )
        return instances

    def subset(self, image_ids: Iterable[int]) -> Dataset:
        """A new dataset with only the given images and their annotations (categories kept)."""
        wanted = set(image_ids)
        coco = {k: v for k, v in self.coco.items() if k not in ("images", "annotations")}
        coco["images"] = [img for img in self.images if img["id"] in wanted]
        coco["annotations"] = [ann for ann in self.annotations if ann["image_id"] in wanted]
        return Dataset(copy.deepcopy(coco), self.image_root, self.source)


def _refuse_duplicate_ids(records: list[dict], key: str, source: Path | None) -> None:
    if len({record["id"] for record in records}) == len(records):
        return
    first: dict[int, int] = {}
    for position, record in enumerate(records):
        earlier = first.setdefault(record["id"], position)
        if earlier != position:
            raise InstasegError(
                f"id {record['id']} is also used by {key}[{earlier}] ('instaseg check --fix' renumbers duplicates)",
                file=source,
                record=f"{key}[{position}]",
            )


def _validate_schema(coco: Any, source: Path | None) -> None:
    """Refuse files that are not COCO instances JSON, naming the first malformed record.

    Content problems (unknown categories, bad polygons, ...) are left to ``instaseg check``,
    which reports all of them; this only guarantees the fields every step reads exist.
    """
    if not isinstance(coco, dict):
        raise InstasegError("not a COCO instances file (top level is not an object)", file=source)
    for key in _REQUIRED:
        records = coco.setdefault(key, []) if key == "annotations" else coco.get(key)
        if not isinstance(records, list):
            raise InstasegError(f"not a COCO instances file (missing '{key}' list)", file=source)
        _check_records(records, key, source)


def _checked_records(records: Iterable[dict], key: str, source: Path | None, start: int = 0) -> list[dict]:
    """``records`` as a list, refused like a file's when a record lacks a field every step reads."""
    records = list(records)
    _check_records(records, key, source, start)
    return records


def _check_records(records: list, key: str, source: Path | None, start: int = 0) -> None:
    """Refuse the first record (numbered from ``start`` in the ``key`` list) missing a required field."""
    fields = _REQUIRED[key]
    for position, record in enumerate(records, start):
        if not isinstance(record, dict):
            raise InstasegError("record is not an object", file=source, record=f"{key}[{position}]")
        for name, kind in fields:
            value = record.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                label = f"{key}[{position}]" + (f" (id {record['id']})" if "id" in record else "")
                problem = "missing" if value is None else f"has {type(value).__name__}"
                raise InstasegError(f"field '{name}' {problem}, expected {kind.__name__}", file=source, record=label)
