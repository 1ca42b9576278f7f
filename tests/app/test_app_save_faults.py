"""The server killed (SIGKILL) while clients save: after a restart on the same database it is consistent,
and every save it had acknowledged is there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import func, select

from instaseg.app import edits
from instaseg.app.db.schema import AnnotatedInstance, History, Image
from instaseg.app.server import open_project
from instaseg.app.settings import AppSettings
from instaseg.app.transfer import scan_images
from tests.app.conftest import free_port, write_images
from tests.app.test_app_instances import rectangle

CLIENTS = 6
IMAGES = (1, 2, 3)
SERVE = """
import sys
from pathlib import Path
import uvicorn
from instaseg.app.server import create_app
from instaseg.app.settings import AppSettings
settings = AppSettings(project_dir=Path(sys.argv[1]), database_url=sys.argv[2])
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""


def _start(settings: AppSettings, port: int) -> subprocess.Popen:
    command = [sys.executable, "-c", SERVE, str(settings.project_dir), str(settings.database_url), str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"the server exited with {process.returncode}: {process.stdout.read().decode() if process.stdout else ''}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    pytest.fail("the server did not answer in time")


@dataclass
class Acknowledged:
    image_id: int
    revision: int
    change_set: str


def _save_until_refused(url: str, number: int, class_id: int, acknowledged: list[Acknowledged]) -> None:
    """Save new instances one after another until the server stops answering."""
    with httpx.Client(base_url=url, timeout=30) as http:
        for k in range(10_000):
            image_id = IMAGES[(number + k) % len(IMAGES)]
            try:
                state = http.get(f"/api/images/{image_id}/instances").json()
                kept = [{"id": i["id"], "class_id": class_id} for i in state["instances"][-4:]]
                x = (number * 7 + k) % 50
                new = {"class_id": class_id, "polygon": [rectangle(x, 1, x + 10, 12)]}
                response = http.put(
                    f"/api/images/{image_id}/instances",
                    json={"revision": state["image"]["revision"], "instances": [*kept, new]},
                )
            except httpx.TransportError:
                return
            if response.status_code == 200:
                body = response.json()
                acknowledged.append(Acknowledged(image_id, body["image"]["revision"], body["change_set"]))
            else:
                assert response.status_code == 409, response.text


def test_acknowledged_saves_survive_a_sigkill_of_the_server(tmp_path, database_url):
    settings = AppSettings(project_dir=tmp_path / "project", database_url=database_url)
    write_images(tmp_path / "images", len(IMAGES))
    db = open_project(settings, image_root=tmp_path / "images")
    scan_images(db, tmp_path / "images")
    with db.write() as session:
        class_id = edits.create_class(session, user_id=None, name="cell").id
    db.close()

    port = free_port()
    server = _start(settings, port)
    acknowledged: list[Acknowledged] = []
    clients = [
        threading.Thread(target=_save_until_refused, args=(f"http://127.0.0.1:{port}", n, class_id, acknowledged))
        for n in range(CLIENTS)
    ]
    try:
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + 20
        while len(acknowledged) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        for thread in clients:
            thread.join(timeout=60)
    assert len(acknowledged) >= 30, "too few saves before the kill to test anything"
    server = _start(settings, port)
    try:
        db = open_project(settings)
        with db.read() as session:
            images = {i.id: i for i in session.scalars(select(Image))}
            orphans = session.scalar(
                select(func.count(AnnotatedInstance.id)).where(AnnotatedInstance.image_id.not_in(list(images)))
            )
            history = session.scalars(select(History).order_by(History.id)).all()
            stored = {image_id: edits.image_instances(session, image_id) for image_id in images}
        db.close()
        assert orphans == 0
        change_sets = {row.change_set for row in history}
        for save in acknowledged:
            assert save.change_set in change_sets, f"the acknowledged save {save} is gone"
        for image_id, image in images.items():
            rows = [row for row in history if row.image_id == image_id]
            # Only saves ran, each raising the revision once: the revision counts the saves in the history.
            assert image.revision == 1 + len({row.change_set for row in rows})
            assert edits.replay(rows) == {i.id: edits.instance_json(i) for i in stored[image_id]}
            last = max((s.revision for s in acknowledged if s.image_id == image_id), default=1)
            assert image.revision >= last
        # The restarted server takes saves again.
        state = httpx.get(f"http://127.0.0.1:{port}/api/images/1/instances").json()
        after = httpx.put(
            f"http://127.0.0.1:{port}/api/images/1/instances",
            json={"revision": state["image"]["revision"], "instances": []},
        )
        assert after.status_code == 200, after.text
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
