"""SIGKILL of a server in the middle of a bulk import: after a restart on the same database the import
is all or nothing and the database is consistent, on SQLite and on PostgreSQL.

The server is a real ``instaseg app`` process; the kill comes once the import's transaction is seen
writing its instances (SQLite: the write lock held and the write-ahead log grown by megabytes;
PostgreSQL: the import's backend holding a transaction id and copying instances or history).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from instaseg.app.db.database import Database
from instaseg.app.db.schema import AnnotatedInstance, History, Image, LabelClass
from instaseg.core import io
from tests.app.conftest import free_port, write_images

IMAGES, INSTANCES_PER_IMAGE = 1000, 10
WIDTH, HEIGHT = 640, 480
# How much the write-ahead log must grow before the import counts as writing its rows.
WAL_GROWTH_BYTES = 2 << 20


def _big_coco() -> dict:
    """IMAGES images (no files: labels may come first) with INSTANCES_PER_IMAGE blob polygons each."""
    rng = np.random.default_rng(0)
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    images = [{"id": k + 1, "file_name": f"big/{k:05d}.jpg", "width": WIDTH, "height": HEIGHT} for k in range(IMAGES)]
    annotations = []
    for k in range(IMAGES * INSTANCES_PER_IMAGE):
        cx, cy, radius = rng.uniform(60, WIDTH - 60), rng.uniform(60, HEIGHT - 60), rng.uniform(10, 50)
        radii = radius * rng.uniform(0.8, 1.2, len(angles))
        ring = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).round(2).reshape(-1).tolist()
        annotations.append(
            {"id": k + 1, "image_id": k // INSTANCES_PER_IMAGE + 1, "category_id": k % 3 + 1, "segmentation": [ring]}
        )
    categories = [{"id": c + 1, "name": f"class{c}"} for c in range(3)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _start(project: Path, images: Path, url: str, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "instaseg", "app", str(project), "--images", str(images), "--db", url]
    command += ["--workers", "0", "--port", str(port)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_healthy(base: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            pytest.fail(f"instaseg app exited with {process.returncode}: {output}")
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail("instaseg app did not answer in time")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class _Watcher:
    """Says whether the server's import transaction is writing its rows, asking the database itself."""

    def __init__(self, url: str):
        self.url = url
        if make_url(url).get_backend_name() == "sqlite":
            self.path = Path(make_url(url).database or "")
            self.wal = self.path.with_name(self.path.name + "-wal")
            self.wal_before = self.wal.stat().st_size if self.wal.exists() else 0
        else:
            import psycopg

            self.connection = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)

    def writing(self) -> bool:
        if hasattr(self, "connection"):
            row = self.connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_xid IS NOT NULL AND (query LIKE 'COPY \"instances\"%' OR query LIKE 'COPY \"history\"%')"
            ).fetchone()
            return bool(row and row[0])
        grown = (self.wal.stat().st_size if self.wal.exists() else 0) - self.wal_before >= WAL_GROWTH_BYTES
        return grown and self._locked()

    def _locked(self) -> bool:
        connection = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc) or "busy" in str(exc), exc
            return True
        finally:
            connection.close()

    def close(self) -> None:
        if hasattr(self, "connection"):
            self.connection.close()


def _counts(db: Database) -> dict[str, int]:
    with db.read() as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (LabelClass, Image, AnnotatedInstance, History)
        }


def _assert_consistent(db: Database) -> None:
    """The engine's own integrity check (SQLite), and every reference leading to a row that exists."""
    with db.read() as session:
        if db.is_sqlite:
            assert session.execute(text("PRAGMA integrity_check")).scalar() == "ok"
            assert session.execute(text("PRAGMA foreign_key_check")).all() == []
        orphans = (
            "SELECT count(*) FROM instances WHERE image_id NOT IN (SELECT id FROM images)"
            " OR class_id NOT IN (SELECT id FROM classes)",
            "SELECT count(*) FROM history WHERE entity = 'instance' AND action = 'create'"
            " AND entity_id NOT IN (SELECT id FROM instances)",
            "SELECT count(*) FROM instances WHERE id NOT IN"
            " (SELECT entity_id FROM history WHERE entity = 'instance' AND action = 'create')",
        )
        for query in orphans:
            assert session.execute(text(query)).scalar() == 0, query


def test_sigkill_during_a_bulk_import_leaves_all_or_nothing(tmp_path, database_url):
    images, project, port = tmp_path / "images", tmp_path / "project", free_port()
    write_images(images, 3)
    io.write_json(images / "big.json", _big_coco())
    base = f"http://127.0.0.1:{port}"
    server = _start(project, images, database_url, port)
    db = Database(database_url)
    watcher = None
    try:
        _wait_healthy(base, server)
        before = _counts(db)
        assert before == {"classes": 0, "images": 3, "instances": 0, "history": 0}
        watcher = _Watcher(database_url)
        answers: list[object] = []

        def post() -> None:
            try:
                answers.append(httpx.post(f"{base}/api/import", json={"source": "big.json"}, timeout=300))
            except httpx.TransportError as exc:
                answers.append(exc)

        request = threading.Thread(target=post)
        started = time.monotonic()
        request.start()
        while not watcher.writing():
            assert request.is_alive(), f"the import ended before it was seen writing: {answers}"
            assert time.monotonic() - started < 240, "the import was never seen writing"
            time.sleep(0.01)
        os.killpg(server.pid, signal.SIGKILL)
        killed_after = time.monotonic() - started
        server.wait()
        request.join(timeout=60)
        assert answers and isinstance(answers[0], httpx.TransportError), (killed_after, answers)
        watcher.close()

        # Nothing of the import is there, and what was there before is intact.
        assert _counts(db) == before, f"killed {killed_after:.1f} s into the import"
        _assert_consistent(db)

        server = _start(project, images, database_url, port)
        _wait_healthy(base, server)
        response = httpx.post(f"{base}/api/import", json={"source": "big.json"}, timeout=300)
        assert response.status_code == 200, response.text
        total = IMAGES * INSTANCES_PER_IMAGE
        assert response.json() == {
            "images_added": IMAGES,
            "images_matched": 0,
            "instances_added": total,
            "classes_added": 3,
        }
        assert _counts(db) == {"classes": 3, "images": 3 + IMAGES, "instances": total, "history": total + 3}
        _assert_consistent(db)
    finally:
        if watcher is not None:
            watcher.close()
        _stop(server)
        db.close()
