"""Read any supported dataset format into a COCO ``Dataset`` and write a ``Dataset`` in any format.

``open_dataset`` is what every verb uses to accept "any format convert reads", told what the
format leaves unsaid by ``ReadOptions``; ``convert`` is the ``instaseg convert`` verb. Readers keep
every instance they can and record each one they cannot (file and record named) in a ``Report``;
malformed input raises ``InstasegError``, and so does a read that keeps none, or under half, of
the label records it saw (``check_kept``). Folder outputs
are built in a temporary folder and renamed into place, so a failed conversion writes nothing
(which is why the files inside a folder output are written directly, not one by one atomically).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from instaseg.core import io
from instaseg.core.errors import InstasegError
from instaseg.data.dataset import Dataset
from instaseg.data.formats import coco, labelme, mask_files, masks, panoptic, semantic, via, yolo
from instaseg.data.formats._common import Report

__all__ = [
    "READERS",
    "WRITERS",
    "ReadOptions",
    "Report",
    "check_kept",
    "convert",
    "detect_format",
    "open_dataset",
    "write_dataset",
]

READERS: dict[str, Callable[..., Dataset]] = {
    "coco": coco.read,
    "yolo": yolo.read,
    "via": via.read,
    "labelme": labelme.read,
    "masks": masks.read,
    "mask-files": mask_files.read,
}
WRITERS: dict[str, Callable[..., Path]] = {
    "coco": coco.write,
    "yolo": yolo.write,
    "via": via.write,
    "labelme": labelme.write,
    "masks": masks.write,
    "mask-files": mask_files.write,
    "semantic": semantic.write,
    "panoptic": panoptic.write,
}
# Detection reads only the start of a JSON file: the keys that tell the formats apart come early.
SNIFF_BYTES = 1 << 20
# A read keeping under this share of the label records it saw is refused unless allowed: losing most
# of a dataset far more often means a layout the reader misunderstood than labels meant to go.
MIN_KEPT_SHARE = 0.5


def detect_format(src: str | Path) -> str:
    """The one format ``src`` looks like; an error lists the candidates when there are several or none."""
    src = Path(src)
    if not src.exists():
        raise InstasegError("no such file or folder", file=src)
    candidates = [name for name, looks_like in _DETECTORS.items() if looks_like(src)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise InstasegError(f"could be {' or '.join(candidates)}; pass --from to choose", file=src)
    coco_files = [f.name for f in sorted(src.glob("*.json")) if _looks_like_coco(f)] if src.is_dir() else []
    if coco_files:
        raise InstasegError(f"for COCO, pass the JSON file itself ({', '.join(coco_files)})", file=src)
    raise InstasegError(f"cannot tell the format; pass --from (one of {', '.join(READERS)})", file=src)


def _json_head(path: Path) -> str:
    if not (path.is_file() and path.suffix.lower() == ".json"):
        return ""
    with open(path, "rb") as handle:
        return handle.read(SNIFF_BYTES).decode("utf-8", errors="replace")


def _looks_like_coco(src: Path) -> bool:
    head = _json_head(src)
    has_coco_keys = any(key in head for key in ('"images"', '"annotations"', '"categories"'))
    return has_coco_keys and '"imagePath"' not in head and '"regions"' not in head


def _looks_like_via(src: Path) -> bool:
    json_file = via.find_json(src) if src.exists() else None
    head = _json_head(json_file) if json_file else ""
    return "_via_img_metadata" in head or ('"regions"' in head and '"filename"' in head)


def _looks_like_labelme(src: Path) -> bool:
    files = [src] if src.is_file() else sorted(src.glob("*.json"))[:3] or sorted(src.rglob("*.json"))[:3]
    return any('"shapes"' in (head := _json_head(f)) and '"imagePath"' in head for f in files)


def _looks_like_yolo(src: Path) -> bool:
    if src.is_file():
        return src.suffix.lower() in (".yaml", ".yml")
    return any("labels" in p.relative_to(src).parts[:-1] for p in src.rglob("*.txt"))


def _looks_like_masks(src: Path) -> bool:
    return src.is_dir() and masks.image_folder(src) is not None and any(masks.mask_folder(src).glob("*.png"))


def _looks_like_mask_files(src: Path) -> bool:
    return src.is_dir() and bool(mask_files.sample_folders(src))


_DETECTORS: dict[str, Callable[[Path], bool]] = {
    "coco": _looks_like_coco,
    "yolo": _looks_like_yolo,
    "via": _looks_like_via,
    "labelme": _looks_like_labelme,
    "masks": _looks_like_masks,
    "mask-files": _looks_like_mask_files,
}


@dataclass(frozen=True)
class ReadOptions:
    """How to read a dataset whose format leaves something unsaid: the options of ``instaseg convert``.

    Args:
        images: the image folder, where the format does not say (``--images``; stored as a ``Path``).
        class_name: the class of instances whose format carries none (``--class``, default ``object``).
        classes: a names file (YOLO, LabelMe) or a mapping file (instance-id masks) (``--classes``;
            stored as a ``Path``).
        mask_suffix: what follows the image's stem in a mask's (masks only; ``--mask-suffix``).
        ignore_value: the void value of instance-id masks (masks only; ``--ignore-value``): a number,
            None, ``"auto"``, or the text of one of them (``"255"``, ``"none"``); stored parsed.
        allow_skipped: accept a read that keeps under half of the label records (``--allow-skipped``).
        polylines_as_polygons: read every VIA polyline as a polygon, not only closed ones (via only;
            ``--polylines-as-polygons``).

    Raises:
        InstasegError: an ``ignore_value`` that is none of the above.
    """

    images: str | Path | None = None
    class_name: str | None = None
    classes: str | Path | None = None
    mask_suffix: str | None = None
    ignore_value: int | str | None = "auto"
    allow_skipped: bool = False
    polylines_as_polygons: bool = False

    def __post_init__(self) -> None:
        # Frozen: the normalised values are set through object.__setattr__, once, here.
        for name in ("images", "classes"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "ignore_value", _parse_ignore_value(self.ignore_value))

    def refuse_unused(self, fmt: str, src: Path) -> None:
        """Refuse options that only another format reads, rather than ignore them."""
        if fmt != "masks" and (self.mask_suffix is not None or self.ignore_value != "auto"):
            raise InstasegError(f"--mask-suffix and --ignore-value are for masks input, not {fmt}", file=src)
        if fmt != "via" and self.polylines_as_polygons:
            raise InstasegError(f"--polylines-as-polygons is for via input, not {fmt}", file=src)


def _parse_ignore_value(value: int | str | None) -> int | str | None:
    """``--ignore-value`` as a number, None or ``"auto"``; anything else is refused."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    text = value.strip().lower() if isinstance(value, str) else ""
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    if text.isdigit():
        return int(text)
    raise InstasegError(f"--ignore-value takes a number, none or auto, not {value!r}")


def open_dataset(
    source: str | Path,
    format: str | None = None,
    *,
    options: ReadOptions | None = None,
    validate: bool = True,
    outputs: Iterable[str | Path | None] = (),
    report: Report | None = None,
) -> Dataset:
    """Open a dataset in any supported format as a COCO ``Dataset``: what every verb's DATA means.

    A COCO JSON is read as it is (``Dataset.load``), not passed through the converter, which drops
    records it cannot use: ``check`` must see them, and ``review apply`` must leave untouched
    records byte-identical. Any other format is converted, and refused when it keeps none, or under
    half without ``options.allow_skipped``, of the label records it read (``check_kept``).

    Args:
        source: the file or folder to read (see each format in ``docs/convert.md``).
        format: one of ``coco``, ``yolo``, ``via``, ``labelme``, ``masks``, ``mask-files``; detected when None.
        options: how to read what the format leaves unsaid (``ReadOptions``).
        validate: refuse COCO content every step would misread (``Dataset.validate``); ``check``
            passes False to report it with all its other findings.
        outputs: the paths the caller will write, refused if they are or contain the dataset's
            image folder, which only the opened dataset knows (a COCO file may keep its images
            elsewhere, in ``info.image_root``).
        report: receives the converter's counts and warnings; every warning is also sent to
            ``events.warn`` once the read is accepted.

    Raises:
        InstasegError: malformed or unrecognised input, naming the file and the record; too few
            label records kept; an output that would overwrite the images.
    """
    source = Path(source)
    options = options if options is not None else ReadOptions()
    if _is_coco_file(source, format):
        options.refuse_unused("coco", source)
        dataset = Dataset.load(source, options.images, validate=validate)
    else:
        dataset = _read_converted(source, format, options, report if report is not None else Report())
    io.guard_outputs(outputs, image_roots=[dataset.image_root])
    return dataset


def _is_coco_file(src: Path, fmt: str | None) -> bool:
    """Whether ``src`` is a JSON file to read as COCO: named so, or not recognisably anything else."""
    if fmt not in (None, "coco") or src.suffix.lower() != ".json" or not src.is_file():
        return False
    try:
        return (fmt or detect_format(src)) == "coco"
    except InstasegError:  # not recognisably anything: let the COCO reader name what is wrong
        return True


def _read_converted(src: Path, fmt: str | None, options: ReadOptions, report: Report) -> Dataset:
    """Read ``src`` through its format's converter (COCO included, keeping only usable records)."""
    if fmt is None:
        fmt = detect_format(src)
        report.detected = True
    if fmt not in READERS:
        raise InstasegError(f"cannot read format {fmt!r}; readable formats: {', '.join(READERS)}")
    if not src.exists():
        raise InstasegError("no such file or folder", file=src)
    options.refuse_unused(fmt, src)
    report.source_format = fmt
    dataset = READERS[fmt](
        src,
        report=report,
        images=options.images,
        class_name=options.class_name,
        classes=options.classes,
        mask_suffix=options.mask_suffix,
        ignore_value=options.ignore_value,
        polylines_as_polygons=options.polylines_as_polygons,
    )
    check_kept(report, src, options.allow_skipped)
    report.send_warnings()
    return dataset


def check_kept(report: Report, src: Path, allow_skipped: bool = False) -> None:
    """Refuse a read that kept none of the label records it saw, or under ``MIN_KEPT_SHARE`` of them.

    Records are what the readers kept (``instances_read``) plus what they skipped (``Report.skip``);
    the error names the most common reason with its first occurrence.
    """
    skipped = sum(report.skipped.values())
    kept = report.instances_read
    if not skipped or (kept and (allow_skipped or kept >= MIN_KEPT_SHARE * (kept + skipped))):
        return
    message, count = max(report.skipped.items(), key=lambda item: item[1])
    # Only `convert` takes --allow-skipped: a verb that trains or evaluates on a fraction of the labels would mislead.
    advice = "; `instaseg convert --allow-skipped` keeps only these" if kept else ""
    raise InstasegError(
        f"kept {kept} of {kept + skipped} label records; {count} skipped like this one: "
        f"{report.first_skipped[message]}{advice}",
        file=src,
    )


def write_dataset(
    dataset: Dataset,
    out: str | Path,
    fmt: str,
    *,
    overwrite: bool = False,
    split: str = "train",
    report: Report | None = None,
) -> Path:
    """Write ``dataset`` to ``out`` in format ``fmt`` (atomically; ``out`` is replaced only with ``overwrite``).

    Args:
        dataset: the dataset to write.
        out: a ``.json`` file for ``coco``, a folder for every other format.
        fmt: one of ``coco``, ``yolo``, ``via``, ``labelme``, ``masks``, ``mask-files``, ``semantic``, ``panoptic``.
        overwrite: replace an existing ``out``.
        split: the YOLO split folder name (``images/<split>``, ``labels/<split>``).
        report: receives the number of instances written and warnings; every warning is also sent
            to ``events.warn``.
    """
    if fmt not in WRITERS:
        raise InstasegError(f"cannot write format {fmt!r}; writable formats: {', '.join(WRITERS)}")
    report = Report() if report is None else report
    path = WRITERS[fmt](dataset, Path(out), report=report, overwrite=overwrite, split=split)
    report.send_warnings()
    return path


def convert(
    src: str | Path,
    out: str | Path,
    *,
    src_format: str | None = None,
    out_format: str | None = None,
    options: ReadOptions | None = None,
    split: str = "train",
    overwrite: bool = False,
) -> Report:
    """Convert a dataset between formats (``instaseg convert``) and return what was done.

    Every input, COCO included, is read through its format's converter (``open_dataset`` reads a
    COCO file as it is instead), so what the output format cannot hold is reported and skipped.
    ``out_format`` defaults to ``coco`` when ``out`` ends in ``.json``. The output is checked
    before reading, so an existing ``out`` fails fast without ``overwrite``.
    """
    out = Path(out)
    if out_format is None:
        if out.suffix.lower() != ".json":
            raise InstasegError(f"pass --to (one of {', '.join(WRITERS)})", file=out)
        out_format = "coco"
    if out_format not in WRITERS:
        raise InstasegError(f"cannot write format {out_format!r}; writable formats: {', '.join(WRITERS)}")
    if out.exists() and not overwrite:
        raise InstasegError("already exists; pass --overwrite to replace it", file=out)
    report = Report()
    dataset = _read_converted(Path(src), src_format, options if options is not None else ReadOptions(), report)
    io.guard_outputs([out], image_roots=[dataset.image_root])
    write_dataset(dataset, out, out_format, overwrite=overwrite, split=split, report=report)
    return report
