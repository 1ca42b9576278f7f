"""Sixteen clients saving the same images at once through a real server, many with stale revisions:
every accepted save is in the history and in the order its revision says, every refused one got 409
and left nothing, and each image ends as its last accepted save left it, which its history replays to."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import uvicorn
from sqlalchemy import select

from instaseg.app import edits
from instaseg.app.db.schema import History
from tests.app.conftest import free_port
from tests.app.test_app_instances import add_class, rectangle

CLIENTS = 16
SAVES_PER_CLIENT = 20
IMAGES = (1, 2, 3)


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port, in a thread of this process; its URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@dataclass
class Attempt:
    image_id: int
    token: str
    sent_revision: int
    status: int
    body: dict


def _client_saves(url: str, client_number: int, class_ids: list[int]) -> list[Attempt]:
    rng = random.Random(client_number)
    attempts = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for k in range(SAVES_PER_CLIENT):
            image_id = rng.choice(IMAGES)
            state = http.get(f"/api/images/{image_id}/instances").json()
            revision = state["image"]["revision"]
            # Often stale: another client may save between the read and this save, and some are sent stale on
            # purpose (an older revision, so never one that matches the instances of a newer state by chance).
            if revision > 1 and rng.random() < 0.3:
                revision = rng.randint(max(1, revision - 3), revision - 1)
            token = f"{client_number}-{k}"
            kept = [
                {"id": i["id"], "class_id": rng.choice(class_ids), "polygon": i["polygon"]}
                for i in state["instances"]
                if rng.random() < 0.6
            ]
            x, y = rng.randint(0, 50), rng.randint(0, 35)
            new = {
                "class_id": rng.choice(class_ids),
                "polygon": [rectangle(x, y, x + rng.randint(2, 13), y + rng.randint(2, 12))],
                "extra": {"attempt": token},
            }
            response = http.put(
                f"/api/images/{image_id}/instances", json={"revision": revision, "instances": [*kept, new]}
            )
            attempts.append(Attempt(image_id, token, revision, response.status_code, response.json()))
    return attempts


def test_sixteen_clients_saving_the_same_images_lose_nothing(client):
    db = client.app.state.db
    class_ids = [add_class(client, "a"), add_class(client, "b")]
    with serve_in_thread(client.app) as url, ThreadPoolExecutor(CLIENTS) as pool:
        runs = [pool.submit(_client_saves, url, n, class_ids) for n in range(CLIENTS)]
        attempts = [a for run in runs for a in run.result()]

    assert {a.status for a in attempts} <= {200, 409}, [a.body for a in attempts if a.status not in (200, 409)]
    accepted = [a for a in attempts if a.status == 200]
    refused = [a for a in attempts if a.status == 409]
    assert len(accepted) >= 20 and len(refused) >= 20, (len(accepted), len(refused))
    with db.read() as session:
        history = session.scalars(select(History).order_by(History.id)).all()
        final = {image_id: edits.image_state(session, edits.fresh_image(session, image_id)) for image_id in IMAGES}
    change_sets = {row.change_set for row in history}
    created_by = {
        row.after["extra"]["attempt"] for row in history if row.entity == "instance" and row.action.value == "create"
    }
    for attempt in accepted:
        assert attempt.body["change_set"] in change_sets
        assert attempt.body["image"]["revision"] == attempt.sent_revision + 1
        assert attempt.token in created_by
    for attempt in refused:
        assert attempt.body["field"] == "revision" and attempt.body["current"]["image"]["id"] == attempt.image_id
        assert attempt.token not in created_by, "a refused save left a trace"
    for image_id in IMAGES:
        mine = sorted((a for a in accepted if a.image_id == image_id), key=lambda a: a.body["image"]["revision"])
        revisions = [a.body["image"]["revision"] for a in mine]
        # Every revision step of the image is one accepted save: none was lost or applied twice.
        assert revisions == list(range(2, final[image_id]["image"]["revision"] + 1))
        assert final[image_id]["instances"] == mine[-1].body["instances"]
        rows = [row for row in history if row.image_id == image_id]
        assert edits.replay(rows) == {i["id"]: i for i in final[image_id]["instances"]}
