"""``instaseg app`` as a user starts it: a project folder, a server that answers, a worker beside it, a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from instaseg.app.db.database import Database, default_url
from instaseg.app.db.schema import Image
from tests.app.conftest import free_port, write_images


def _start(project: Path, images: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "instaseg", "app", str(project), "--images", str(images), "--port", str(port)]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"instaseg app exited with {process.returncode}: {process.stdout.read() if process.stdout else ''}"
            )
        try:
            return httpx.get(f"{url}/api/health", timeout=2).json()
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail("instaseg app did not answer in time")


def test_app_creates_the_project_serves_it_and_stops_with_its_worker(tmp_path):
    images, project, port = tmp_path / "images", tmp_path / "project", free_port()
    write_images(images, 2)
    process = _start(project, images, port)
    try:
        health = _wait_healthy(f"http://127.0.0.1:{port}", process)
        assert health["status"] == "ok"
        workers = subprocess.run(
            ["pgrep", "-f", f"instaseg worker --db {default_url(project)}"], capture_output=True, text=True
        )
        assert workers.stdout.split(), "no worker process was started beside the server"
    finally:
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert f"http://127.0.0.1:{port}/" in output and "added 2 new images" in output
    assert (project / "project.db").exists()
    db = Database(default_url(project))
    with db.read() as session:
        assert sorted(session.scalars(select(Image.file_name))) == ["image_000.png", "image_001.png"]
    db.close()
    # Started again on the same project, it finds nothing new to add.
    process = _start(project, images, port)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", process)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert "added" not in output
