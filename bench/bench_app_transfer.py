"""Import of a large COCO file into the app's database and its COCO export, on SQLite and PostgreSQL,
against reading and writing the same file with ``Dataset.load`` and ``Dataset.save``, timed in the same run.

    .venv/bin/python bench/bench_app_transfer.py [--images 5000] [--instances 50000] [--postgres URL]
                                                 [--image-kb 160] [--repeats 3]

The file is ``bench_load.py``'s (640x480 images, blob polygons of 8 to 40 points, one annotation
in ten a compressed RLE), with COCO's ``license`` and ``coco_url`` on every image. The import is
what ``POST /api/import`` does (``open_dataset`` without validation, then ``import_dataset``,
which validates); the export is ``export_project`` to COCO. Without ``--postgres`` a throwaway
PostgreSQL server is started from the system's ``initdb``/``pg_ctl`` (as the ``postgres`` user
when run as root), as the app's tests do; without either, the PostgreSQL column is left out. A
last SQLite import runs with an image file of ``--image-kb`` random bytes (an average COCO JPEG's
size) behind every image, to show what hashing each new file (its SHA-1) costs. Prints a markdown
table; each ratio is over the median ``Dataset.load`` (import) or ``Dataset.save`` (export) time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench_load import make_coco

from instaseg.app.server import open_project
from instaseg.app.settings import AppSettings
from instaseg.app.transfer import export_project, import_dataset
from instaseg.core import io
from instaseg.data import Dataset
from instaseg.data.convert import open_dataset


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def seconds(function: Callable[[], object]) -> float:
    return median_seconds(function, 1)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str | None]:
    """A server URL without a database name, or None when no PostgreSQL can be started here."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parents[1].name))
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb is None:
        yield None
        return
    pg_bin = Path(initdb).parent
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="instaseg-bench-pg-"))
    if as_postgres:
        shutil.chown(folder, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    try:
        subprocess.run(
            [*as_postgres, pg_bin / "initdb", "-D", data, "-U", "postgres", "-A", "trust"],
            check=True,
            capture_output=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}"
        subprocess.run(
            [*as_postgres, pg_bin / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "-o", options, "start"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_postgres, pg_bin / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def new_database(server: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server.replace("postgresql+psycopg://", "postgresql://") + "/postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def import_and_export(path: Path, folder: Path, url: str | None) -> tuple[float, float]:
    """Seconds to import ``path`` into a new project (SQLite in ``folder`` when ``url`` is None) and to export it."""
    settings = AppSettings(project_dir=folder / "project", database_url=url)
    db = open_project(settings, image_root=path.parent)
    try:
        imported = seconds(lambda: import_dataset(db, open_dataset(path, validate=False), user_id=None))
        exported = seconds(lambda: export_project(db, folder / "export.json", "coco"))
    finally:
        db.close()
    back = Dataset.load(folder / "export.json", path.parent)
    original = Dataset.load(path)
    if (len(back.images), len(back.annotations)) != (len(original.images), len(original.annotations)):
        sys.exit("the export does not hold what was imported")
    return imported, exported


def write_coco(path: Path, images: int, instances: int) -> None:
    coco = make_coco(images, instances)
    for image in coco["images"]:
        image.update(license=1, coco_url=f"http://images.cocodataset.org/train2017/{image['file_name']}")
    io.write_json(path, coco)


def save_and_write_files(path: Path, folder: Path, size_kb: int, repeats: int) -> float:
    """Median seconds of ``Dataset.save`` of the loaded file; writes the image files of the hashing run.

    The loaded dataset goes when this returns: each step holds only what it needs, as a server
    would, since a large heap of finished work makes Python's cycle collector slow whatever
    allocates next.
    """
    loaded = Dataset.load(path)
    seconds = median_seconds(lambda: loaded.save(folder / "saved.json", overwrite=True), repeats)
    write_image_files(loaded, folder / "files", size_kb)
    return seconds


def write_image_files(dataset: Dataset, folder: Path, size_kb: int) -> None:
    """A file of ``size_kb`` random bytes in ``folder`` for every image of ``dataset``."""
    block = os.urandom(size_kb * 1024)
    folder.mkdir()
    for k, image in enumerate(dataset.images):
        # Distinct bytes per file, so no two hash alike.
        io.safe_join(folder, image["file_name"]).write_bytes(k.to_bytes(8, "little") + block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--instances", type=int, default=50000)
    parser.add_argument("--postgres", help="a PostgreSQL server URL (postgresql+psycopg://user@host:port)")
    parser.add_argument("--image-kb", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        folder = Path(scratch)
        path = folder / "images" / "instances.json"
        path.parent.mkdir()
        write_coco(path, args.images, args.instances)
        size_mb = path.stat().st_size / 1e6
        Dataset.load(path)  # loads what the first load would otherwise time
        load_s = median_seconds(lambda: Dataset.load(path), args.repeats)
        save_s = save_and_write_files(path, folder, args.image_kb, args.repeats)

        server = args.postgres or stack.enter_context(throwaway_postgres())
        columns = {"SQLite": import_and_export(path, folder / "sqlite", None)}
        if server:
            columns["PostgreSQL"] = import_and_export(path, folder / "postgres", new_database(server, "bench_transfer"))
        shutil.copy(path, folder / "files" / path.name)
        hashed_s, _ = import_and_export(folder / "files" / path.name, folder / "sqlite-files", None)

    names = list(columns)
    print(f"| {args.images:,} images, {args.instances:,} instances, {size_mb:.0f} MB | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    print(
        f"| `Dataset.load` of the file, median of {args.repeats} | "
        + " | ".join([f"{load_s:.2f} s"] * len(names))
        + " |"
    )
    print(
        "| import (`open_dataset` + `import_dataset`) | " + " | ".join(f"{c[0]:.2f} s" for c in columns.values()) + " |"
    )
    print(
        "| ratio import / `Dataset.load` | " + " | ".join(f"**{c[0] / load_s:.1f}**" for c in columns.values()) + " |"
    )
    print(
        f"| `Dataset.save` of the loaded file, median of {args.repeats} | "
        + " | ".join([f"{save_s:.2f} s"] * len(names))
        + " |"
    )
    print("| COCO export (`export_project`) | " + " | ".join(f"{c[1]:.2f} s" for c in columns.values()) + " |")
    print(
        "| ratio export / `Dataset.save` | " + " | ".join(f"**{c[1] / save_s:.1f}**" for c in columns.values()) + " |"
    )
    sqlite_import = columns["SQLite"][0]
    print(
        f"| import with a {args.image_kb} KB file behind every image (SHA-1 of each), SQLite | "
        f"{hashed_s:.2f} s ({hashed_s - sqlite_import:+.2f} s) |" + " |" * (len(names) - 1)
    )
    print()
    print("    " + " ".join([".venv/bin/python", *sys.argv]))


if __name__ == "__main__":
    main()
