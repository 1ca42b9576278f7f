"""Safe reading of images and JSON, and atomic writing of every output.

Every output goes to a temporary sibling first and is renamed into place only once complete,
so an interrupted command never leaves a half-written file behind, and an existing output is
replaced only when the caller passes ``overwrite=True``. A temporary sibling carries the id of
the process writing it, so the next write of the same output removes those of killed commands.
Before any of that, ``guard_outputs`` refuses outputs that would replace what a command reads.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from instaseg.core.errors import InstasegError

try:  # orjson parses COCO files several times faster than the standard library
    import orjson
except ImportError:  # pragma: no cover - orjson is a declared dependency
    # mypy types an imported name as a module; None marks it missing, checked before each use.
    orjson = None  # type: ignore[assignment]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Decoded pixels above this count would take gigabytes; PIL warns at 89 MP, we refuse clearly instead.
MAX_IMAGE_PIXELS = 178_956_970
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Return ``path`` as a Path, raising if it exists and ``overwrite`` is false, or if it cannot be written."""
    path = Path(path)
    _check_place(path)
    if path.exists() and not overwrite:
        raise InstasegError("already exists; pass --overwrite to replace it", file=path)
    return path


def guard_outputs(
    outputs: Iterable[str | Path | None],
    inputs: Iterable[str | Path | None] = (),
    image_roots: Iterable[str | Path | None] = (),
) -> None:
    """Refuse outputs that would replace what a command reads, before it reads or writes anything.

    Args:
        outputs: the files and folders the command writes.
        inputs: the files and folders it reads (folders as a whole); a glob pattern stands for
            the files it matches. No output may be, contain or lie inside one of them.
        image_roots: the folders datasets take their image files from (a dataset file or
            folder stands for its own folder). A dataset reads only the files it names there, so
            an output may lie inside one, but not be or contain it.

    An output may not be or contain the current folder either, and must be writable. Paths are
    compared with symlinks followed; ``None`` entries are skipped.
    """
    read = [(Path(p), p.resolve(), True) for p in _expand(inputs)]
    read += [(root, root.resolve(), False) for root in map(_image_folder, _given(image_roots))]
    for output in map(Path, _given(outputs)):
        resolved = output.resolve()
        for given, path, whole in read:
            relation = _relation(resolved, path)
            if relation is not None and (whole or relation != "lies inside"):
                raise InstasegError(f"output {relation} the input {given}; choose another --out", file=output)
        _check_place(output)


def _given(paths: Iterable[str | Path | None]) -> list[str | Path]:
    return [p for p in paths if p is not None]


def _expand(inputs: Iterable[str | Path | None]) -> list[Path]:
    """Each input as a path; a glob pattern (one naming no existing path) as the paths it matches."""
    paths: list[Path] = []
    for item in _given(inputs):
        if Path(item).exists() or not glob.has_magic(str(item)):
            paths.append(Path(item))
        else:
            paths += map(Path, glob.glob(str(item), recursive=True))
    return paths


def _image_folder(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


def _relation(output: Path, other: Path) -> str | None:
    """How the resolved ``output`` overlaps the resolved ``other``: "is", "contains", "lies inside" or None."""
    if output == other:
        return "is"
    if other.is_relative_to(output):
        return "contains"
    if output.is_relative_to(other):
        return "lies inside"
    return None


def _check_place(path: Path) -> None:
    """Refuse an output that would replace the current folder or whose folder cannot take it."""
    relation = _relation(path.resolve(), Path.cwd().resolve())
    if relation in ("is", "contains"):
        raise InstasegError(f"output {relation} the current folder; choose another --out", file=path)
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise _cannot_write(path, os.strerror(errno.ENOTDIR))
    if not os.access(folder, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and os.statvfs(folder).f_flag & os.ST_RDONLY
        raise _cannot_write(path, os.strerror(errno.EROFS if read_only else errno.EACCES))


def _cannot_write(path: Path, reason: str) -> InstasegError:
    return InstasegError(f"cannot write ({reason})", file=path)


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    Works for a file or a directory: whatever the caller creates at the yielded path is moved.
    A failure to create or write the output (read-only, full or missing disk) is an
    ``InstasegError`` naming ``path``.
    """
    path = check_output(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise _cannot_write(path, exc.strerror or str(exc)) from None
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            old = tmp / ".replaced"
            os.replace(path, old)
            try:
                os.replace(target, path)
            except OSError:
                os.replace(old, path)  # the earlier output must not go with the temporary folder
                raise
        else:
            os.replace(target, path)
    except OSError as exc:
        # Only a failure on the temporary side is ours to name; reading an input fails on its own terms.
        if not any(_lies_in(name, tmp) for name in (exc.filename, exc.filename2)):
            raise
        raise _cannot_write(path, exc.strerror or str(exc)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _lies_in(name: str | bytes | int | None, folder: Path) -> bool:
    if not isinstance(name, (str, os.PathLike)):
        return False
    return Path(os.path.abspath(name)).is_relative_to(os.path.abspath(folder))


# A temporary sibling of NAME: ``.NAME.<writer's process id>.<mkdtemp's random part, without dots>.tmp``.
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp")


def _remove_stale_temps(path: Path) -> None:
    """Remove the temporary siblings of ``path`` whose process is gone: a killed command's leftovers.

    Nothing is stale inside a temporary folder still being filled, so its many files are not scanned.
    """
    if any(_TEMP_NAME.fullmatch(part) for part in path.parent.absolute().parts):
        return
    with os.scandir(path.parent) as entries:
        stale = [
            entry.path
            for entry in entries
            if (match := _TEMP_NAME.fullmatch(entry.name))
            and match["name"] == path.name
            and entry.is_dir(follow_symlinks=False)
            and not _process_alive(int(match["pid"]))
        ]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists; where that cannot be asked safely, assume it does."""
    if os.name != "posix":  # os.kill(pid, 0) would send CTRL_C_EVENT on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; a number no process can have
        pass
    return True


def write_bytes(path: str | Path, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (see ``atomic_path``); returns the path."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"), overwrite)


def write_image(path: str | Path, pixels: np.ndarray, overwrite: bool = False) -> Path:
    """Save an array as an image (format from the suffix, PNG by default) atomically."""
    import io as _bytes_io

    buffer = _bytes_io.BytesIO()
    image_format = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    # Fast PNG compression: much quicker than the default, for slightly larger files.
    options = {"compress_level": 1} if image_format == "PNG" else {}
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return write_bytes(path, buffer.getvalue(), overwrite)


def dumps_json(obj: Any, indent: bool = False) -> bytes:
    """``obj`` as JSON bytes; NumPy values, bytes and paths are written as plain numbers and strings."""
    if orjson is not None:
        option = orjson.OPT_SERIALIZE_NUMPY | (orjson.OPT_INDENT_2 if indent else 0)
        return orjson.dumps(obj, option=option, default=_json_default)
    return json.dumps(obj, indent=2 if indent else None, default=_json_default).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return value.decode("ascii")
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def write_json(path: str | Path, obj: Any, overwrite: bool = False, indent: bool = False) -> Path:
    """Write ``obj`` as JSON (see ``dumps_json``) to ``path`` atomically; returns the path."""
    return write_bytes(path, dumps_json(obj, indent), overwrite)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file, reporting a missing file or malformed JSON as a one-line error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InstasegError("file not found", file=path) from None
    except IsADirectoryError:
        raise InstasegError("is a directory, expected a JSON file", file=path) from None
    except OSError as exc:
        raise InstasegError(f"cannot read ({exc.strerror})", file=path) from None
    try:
        return orjson.loads(data) if orjson is not None else json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InstasegError(f"malformed JSON ({str(exc).splitlines()[0]})", file=path) from None


def safe_join(root: str | Path, relative: str, record: str | None = None, file: str | Path | None = None) -> Path:
    """Join ``relative`` to ``root``, refusing absolute paths and paths that climb out of ``root``
    (the error names ``file`` and ``record``, where the path was read)."""
    root = Path(root)
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise InstasegError(f"path {relative!r} escapes the dataset root {str(root)!r}", file=file, record=record)
    return root / rel


@contextlib.contextmanager
def _image_errors(path: Path) -> Iterator[None]:
    """Turn Pillow's failures to open or decode ``path`` into one-line errors naming it."""
    try:
        yield
    except FileNotFoundError:
        raise InstasegError("image file not found", file=path) from None
    except Image.DecompressionBombError:
        raise InstasegError(f"image too large (over {MAX_IMAGE_PIXELS:,} pixels); resize it first", file=path) from None
    except UnidentifiedImageError:
        raise InstasegError("not an image or unsupported image format", file=path) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InstasegError(f"corrupt or truncated image ({exc})", file=path) from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as the image is displayed, i.e. after EXIF rotation, reading only the header."""
    path = Path(path)
    with _image_errors(path), Image.open(path) as img:
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit or float image data to uint8 by its own range."""
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float32)
    lo, hi = float(array.min()), float(array.max())
    if hi <= lo:
        return np.zeros(array.shape, np.uint8)
    return ((array - lo) * (255.0 / (hi - lo))).round().astype(np.uint8)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of any dtype as (H, W, 3) uint8.

    Grayscale is repeated to three channels, alpha is dropped, other dtypes are scaled by ``to_uint8``.
    """
    array = to_uint8(np.asarray(image))
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InstasegError(f"expected an (H, W, 3) image array, got shape {tuple(np.shape(image))}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as an (H, W, 3) uint8 RGB array, whatever its mode.

    EXIF rotation is applied, grayscale is repeated to three channels, alpha is dropped and
    16-bit or float data is scaled to 8 bits by its own range.
    """
    path = Path(path)
    with _image_errors(path):
        img: Image.Image = Image.open(path)
        img.load()
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError):  # a broken EXIF block is no reason to refuse the pixels
        pass
    if img.mode not in ("RGB", "L", "I;16", "I;16B", "I;16L", "I", "F"):
        img = img.convert("RGBA" if "A" in img.getbands() or img.mode == "P" else "RGB")
    return as_rgb(np.asarray(img))


def list_images(inputs: list[str | Path]) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a sorted list of image paths."""
    import glob

    found: list[Path] = []
    for item in inputs:
        item_path = Path(item)
        if item_path.is_dir():
            found += sorted(p for p in item_path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item_path.is_file():
            found.append(item_path)
        else:
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
            matches = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not matches:
                raise InstasegError("no such file, folder or matching images", file=item)
            found += matches
    if not found:
        raise InstasegError(f"no images found in {', '.join(map(str, inputs))}")
    return found
