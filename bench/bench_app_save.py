"""Save latency of the app server: 16 clients at once, each saving whole images (``PUT /api/images/{id}/instances``).

    .venv/bin/python bench/bench_app_save.py [--clients 16] [--saves 40] [--postgres-url postgresql+psycopg://...]

A real server (``uvicorn``, one process, as ``instaseg app`` runs it) serves a new project of
1024x768 images on SQLite (in a temporary folder) and on PostgreSQL (the URL given, else a
throwaway server started from the system's ``initdb``/``pg_ctl``; skipped when there is neither).
Each client owns its own images, so no save is refused: each save moves one of an image's polygon
instances (40-point blobs, 30 to 120 px across) and sends the others as they are, as the editor
does. Prints a markdown table of the latency per save as each client measured it (p50, p95, p99),
and saves per second; the goal is p95 <= 50 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

from instaseg.app import edits
from instaseg.app.db.database import default_url
from instaseg.app.server import open_project
from instaseg.app.settings import AppSettings
from instaseg.app.transfer import scan_images
from instaseg.core import io

WIDTH, HEIGHT = 1024, 768
SERVE = """
import sys
from pathlib import Path
import uvicorn
from instaseg.app.server import create_app
from instaseg.app.settings import AppSettings
settings = AppSettings(project_dir=Path(sys.argv[1]), database_url=sys.argv[2])
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str | None]:
    """A PostgreSQL server URL with a ``bench`` database, started from initdb/pg_ctl; None when there are none."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parents[1].name))
    pg_bin = found[-1].parent if found else (Path(shutil.which("initdb")).parent if shutil.which("initdb") else None)
    if pg_bin is None:
        yield None
        return
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    if as_postgres:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()

    def run(*args: object) -> None:
        subprocess.run([*as_postgres, *map(str, args)], check=True, capture_output=True)

    try:
        run(pg_bin / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        # fsync stays on: the latency of a save includes making it durable, as on a real server.
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c max_connections=200"
        run(pg_bin / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "-o", options, "start")
        run(pg_bin / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "bench")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/bench"
    finally:
        subprocess.run(
            [*as_postgres, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


def blob(rng: np.random.Generator) -> list[float]:
    """A 40-point star-shaped ring, 30 to 120 px across, inside the image."""
    radius = rng.uniform(15, 60)
    cx, cy = rng.uniform(radius + 2, WIDTH - radius - 2), rng.uniform(radius + 2, HEIGHT - radius - 2)
    angles = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    radii = radius * rng.uniform(0.75, 1.0, len(angles))
    return np.round(np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1), 2).reshape(-1).tolist()


def make_project(folder: Path, database_url: str | None, images: int) -> tuple[AppSettings, int]:
    image_folder = folder / "images"
    image_folder.mkdir(parents=True)
    pixels = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for k in range(images):
        io.write_image(image_folder / f"image_{k:04d}.png", pixels)
    settings = AppSettings(project_dir=folder / "project", database_url=database_url or default_url(folder / "project"))
    db = open_project(settings, image_root=image_folder)
    scan_images(db, image_folder)
    with db.write() as session:
        class_id = edits.create_class(session, user_id=None, name="cell").id
    db.close()
    return settings, class_id


@contextlib.contextmanager
def server(settings: AppSettings) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-c", SERVE, str(settings.project_dir), str(settings.database_url), str(port)]
    process = subprocess.Popen(command, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)


def client(url: str, number: int, image_ids: list[int], class_id: int, saves: int, per_image: int) -> list[float]:
    """Fill the client's images, then time ``saves`` whole-image saves that each move one instance."""
    rng = np.random.default_rng(number)
    latencies = []
    with httpx.Client(base_url=url, timeout=120) as http:
        states = {}
        for image_id in image_ids:
            new = [{"class_id": class_id, "polygon": [blob(rng)]} for _ in range(per_image)]
            response = http.put(f"/api/images/{image_id}/instances", json={"revision": 1, "instances": new})
            states[image_id] = response.json()
        for k in range(saves):
            image_id = image_ids[k % len(image_ids)]
            state = states[image_id]
            moved = int(rng.integers(len(state["instances"])))
            sent = [
                {"id": i["id"], "class_id": i["class_id"], "polygon": [blob(rng)] if j == moved else i["polygon"]}
                for j, i in enumerate(state["instances"])
            ]
            started = time.perf_counter()
            response = http.put(
                f"/api/images/{image_id}/instances", json={"revision": state["image"]["revision"], "instances": sent}
            )
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise SystemExit(f"a save was refused: {response.status_code} {response.text[:300]}")
            states[image_id] = response.json()
    return latencies


def measure(name: str, database_url: str | None, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-app-save-") as folder:
        settings, class_id = make_project(Path(folder), database_url, args.clients * args.images_per_client)
        with server(settings) as url:
            results: list[list[float]] = [[] for _ in range(args.clients)]

            def run(n: int) -> None:
                ids = [1 + n * args.images_per_client + k for k in range(args.images_per_client)]
                results[n] = client(url, n, ids, class_id, args.saves, args.instances)

            threads = [threading.Thread(target=run, args=(n,)) for n in range(args.clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
    latencies = np.asarray([s for r in results for s in r]) * 1000
    if len(latencies) != args.clients * args.saves:
        raise SystemExit(f"{name}: a client failed")
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "mean": statistics.fmean(latencies),
        "rate": len(latencies) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--saves", type=int, default=40, help="timed saves per client")
    parser.add_argument("--images-per-client", type=int, default=2)
    parser.add_argument("--instances", type=int, default=5, help="instances per image")
    parser.add_argument("--postgres-url", help="an empty PostgreSQL database; a throwaway server when not given")
    args = parser.parse_args()

    rows = {"SQLite": measure("SQLite", None, args)}
    with contextlib.ExitStack() as stack:
        url = args.postgres_url or stack.enter_context(throwaway_postgres())
        if url is None:
            print("PostgreSQL skipped: no --postgres-url and no initdb/pg_ctl", file=sys.stderr)
        else:
            rows["PostgreSQL"] = measure("PostgreSQL", url, args)

    print(
        f"`{' '.join([Path(sys.executable).name, *sys.argv])}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs: {args.clients} clients x {args.saves} whole-image saves of {args.instances} "
        f"instances ({WIDTH}x{HEIGHT} images, 40-point polygons), one server process"
    )
    print()
    print("| database | p50 ms | p95 ms (goal <= 50) | p99 ms | mean ms | saves/s |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['p50']:.1f} | **{r['p95']:.1f}** | {r['p99']:.1f} | {r['mean']:.1f} | {r['rate']:.0f} |")


if __name__ == "__main__":
    main()
