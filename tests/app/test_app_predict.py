"""POST /api/predict: the project's current model over HTTP gives what the Predictor gives, under load, and refuses
what it must (no model, bad uploads, too many requests)."""

from __future__ import annotations

import io as bytes_io
import struct
import threading
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import update

from instaseg.app.db.schema import LabelClass, ModelVersion
from instaseg.app.server import create_app, open_project
from instaseg.app.serving import RateLimiter, project_predictions
from instaseg.app.transfer import scan_images
from instaseg.core import io
from instaseg.core import masks as mask_ops
from instaseg.engine.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from instaseg.engine.predictor import load
from instaseg.models import MODELS
from instaseg.models.maskrcnn import PRESETS
from tests.app.conftest import add_user, login, write_images

CLASSES = ["circle", "square", "triangle"]
# The tests' tiny Mask R-CNN (tests/conftest.py TINY_MASKRCNN, which tests/app/conftest.py shadows as `conftest`).
TINY = {**PRESETS["small"], "min_size": 64, "max_size": 64, "train_scales": (1.0,), "box_detections_per_img": 10}
ARCHITECTURE = "maskrcnn_resnet18_fpn"


def write_checkpoint(path: Path, seed: int = 0) -> Path:
    """A checkpoint of the tiny Mask R-CNN with random weights drawn from ``seed``."""
    torch.manual_seed(seed)
    model = MODELS[ARCHITECTURE].builder(num_classes=len(CLASSES), **TINY)
    config = {"model": ARCHITECTURE, "preset": "small", "kwargs": TINY, "class_names": CLASSES}
    return save_checkpoint(
        path, {"format": CHECKPOINT_FORMAT, "version": 1, "model": model.state_dict(), "config": config}
    )


def image_bytes(pixels: np.ndarray, image_format: str = "PNG", **options) -> bytes:
    buffer = bytes_io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def noise(seed: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)


def add_version(client: TestClient, seed: int = 0, current: bool = True, file: str | None = None) -> int:
    """A ModelVersion row (made the only current one when ``current``) with a checkpoint under the project folder."""
    project_dir = Path(client.app.state.settings.project_dir)
    relative = file or f"models/v{seed}.pt"
    write_checkpoint(project_dir / relative, seed)
    with client.app.state.db.write() as session:
        if current:
            session.execute(update(ModelVersion).values(current=False))
        version = ModelVersion(name=f"v{seed}", architecture=ARCHITECTURE, path=relative, current=current)
        session.add(version)
        session.flush()
        return version.id


def predict(client: TestClient, data: bytes, headers: dict | None = None, **params):
    return client.post("/api/predict", files={"image": ("image.png", data)}, params=params, headers=headers or {})


def assert_same_as_predictor(body: dict, found, class_ids: dict[str, int | None]) -> None:
    """The API's answer holds exactly the Predictor's instances: boxes, scores, classes and masks."""
    assert len(body["instances"]) == len(found.boxes)
    for instance, box, mask, class_index, score in zip(
        body["instances"], found.boxes.tolist(), found.masks, found.class_ids, found.scores, strict=True
    ):
        name = CLASSES[class_index]
        assert instance["class_name"] == name and instance["class_id"] == class_ids[name]
        assert instance["score"] == float(score)
        assert instance["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]
        assert instance["mask"]["size"] == [body["height"], body["width"]]
        assert np.array_equal(mask_ops.decode(instance["mask"], body["height"], body["width"]), mask)
        assert instance["area"] == int(mask.sum())


def test_predictions_over_the_api_are_the_predictor_s(client, tmp_path):
    with client.app.state.db.write() as session:
        session.add_all([LabelClass(name="circle", color="#ff0000"), LabelClass(name="square", color="#00ff00")])
    with client.app.state.db.read() as session:
        class_ids: dict[str, int | None] = {c.name: c.id for c in session.query(LabelClass)}
    class_ids["triangle"] = None  # the model knows a class the project no longer has
    version_id = add_version(client)
    predictor = load(Path(client.app.state.settings.project_dir) / "models/v0.pt", device="cpu")

    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees: the model must see it as every other verb does
    rotated.write_bytes(image_bytes(noise(1, (40, 72)), "JPEG", exif=exif))
    uploads = [(image_bytes(noise(0)), noise(0)), (rotated.read_bytes(), io.read_image(rotated))]
    total = 0
    for data, pixels in uploads:
        response = predict(client, data, score_threshold=0.0, max_detections=20)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["height"], body["width"]) == pixels.shape[:2] and body["model_version_id"] == version_id
        found = predictor.predict(pixels, score_threshold=0.0, max_detections=20)
        assert_same_as_predictor(body, found, class_ids)
        total += len(found.boxes)
    assert total > 0
    assert (uploads[1][1].shape[0], uploads[1][1].shape[1]) == (72, 40)

    only_squares = predict(client, uploads[0][0], score_threshold=0.0, classes=["square"]).json()["instances"]
    assert only_squares and {i["class_name"] for i in only_squares} == {"square"}


# Per thread: an image and what to ask; neighbours differ in every option.
CALLS = [
    (0, {"score_threshold": 0.0, "max_detections": 10}),
    (1, {"score_threshold": 0.3, "max_detections": 5}),
    (2, {"score_threshold": 0.0, "max_detections": 3}),
    (3, {"score_threshold": 0.05, "max_detections": 8, "classes": ["square", "triangle"]}),
    (4, {"score_threshold": 0.0, "max_detections": 1}),
    (5, {"score_threshold": 0.1, "max_detections": 6, "classes": ["circle"]}),
    (6, {"max_detections": 4}),
    (7, {"score_threshold": 0.02, "max_detections": 7}),
]


def test_eight_threads_get_exactly_the_sequential_answers(client):
    add_version(client)
    sizes = [(48, 64), (64, 48), (56, 72), (40, 40), (64, 96), (72, 56), (48, 48), (32, 80)]
    uploads = [image_bytes(noise(seed, size)) for seed, size in enumerate(sizes)]

    def call(index: int) -> dict:
        seed, options = CALLS[index]
        response = predict(client, uploads[seed], **options)
        assert response.status_code == 200, response.text
        return response.json()

    expected = [call(i) for i in range(len(CALLS))]
    assert sum(len(answer["instances"]) for answer in expected) > 0
    rounds, results, failures = 3, {}, []
    start = threading.Barrier(len(CALLS))

    def work(index: int) -> None:
        try:
            start.wait()
            for turn in range(rounds):
                results[index, turn] = call(index)
        except Exception as exc:  # pytest does not see a thread's exceptions
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(CALLS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    for (index, _turn), answer in results.items():
        assert answer == expected[index], CALLS[index]
    assert len(results) == len(CALLS) * rounds


def test_without_a_current_model_predict_is_a_conflict(client):
    data = image_bytes(noise(0))
    for _ in range(2):
        response = predict(client, data)
        assert response.status_code == 409
        assert response.json() == {"detail": "no trained model yet: run a train job", "field": "model"}
        add_version(client, current=False)  # a version that is not current does not count


def test_a_current_version_whose_checkpoint_is_unreadable_is_a_conflict(client):
    data = image_bytes(noise(0))
    add_version(client)
    assert predict(client, data).status_code == 200
    (Path(client.app.state.settings.project_dir) / "models/v0.pt").write_bytes(b"not a checkpoint")
    assert predict(client, data).status_code == 200  # loaded once: the file is not read again
    broken = add_version(client, seed=1, file="models/broken.pt")
    (Path(client.app.state.settings.project_dir) / "models/broken.pt").write_bytes(b"not a checkpoint")
    response = predict(client, data)
    assert response.status_code == 409 and response.json()["field"] == "model"
    assert f"the current model version {broken} cannot be loaded" in response.json()["detail"]


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels but holds almost none: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_uploads_that_are_not_whole_images_are_refused_naming_the_field(client):
    add_version(client)
    png = image_bytes(noise(0))
    refusals = {
        "not an image": b"GIF? no, plain text\n" * 10,
        "truncated": png[: len(png) // 2],
        "empty": b"",
    }
    for what, data in refusals.items():
        response = predict(client, data)
        assert response.status_code == 422, what
        assert response.json()["field"] == "image", (what, response.json())
        assert "/tmp" not in response.json()["detail"] and "instaseg-upload" not in response.json()["detail"]
    missing = client.post("/api/predict", data={"other": "x"})
    assert missing.status_code == 422 and missing.json()["field"] == "image"
    with pytest.warns(Image.DecompressionBombWarning):
        bomb = predict(client, _png_header(15_000, 15_000))
    assert bomb.status_code == 413 and bomb.json()["field"] == "image"
    huge_bomb = predict(client, _png_header(20_000, 20_000))  # Pillow refuses to open it at all
    assert huge_bomb.status_code == 413 and huge_bomb.json()["field"] == "image"


def test_bad_options_are_refused_naming_the_field(client):
    add_version(client)
    data = image_bytes(noise(0))
    for params, field in [
        ({"score_threshold": 1.5}, "score_threshold"),
        ({"max_detections": 0}, "max_detections"),
        ({"max_detections": 10**6}, "max_detections"),
        ({"classes": ["dog"]}, "classes"),
    ]:
        response = predict(client, data, **params)
        assert response.status_code == 422 and response.json()["field"] == field, (params, response.json())


@pytest.fixture
def limited_client(project_settings, tmp_path):
    """Like ``client``, with a 2000-byte upload limit and 2 predictions a minute."""
    settings = replace(project_settings, max_upload_bytes=2000, predict_per_minute=2)
    write_images(tmp_path / "images", 1)
    db = open_project(settings, image_root=tmp_path / "images")
    scan_images(db, tmp_path / "images")
    with TestClient(create_app(settings, db)) as test_client:
        yield test_client
    db.close()


def test_an_oversized_upload_is_refused_before_it_is_read(limited_client):
    add_version(limited_client)
    response = predict(limited_client, image_bytes(noise(0, (64, 64))))
    assert response.status_code == 413 and response.json()["field"] == "body"


def test_a_client_over_its_rate_gets_429_until_its_allowance_refills(limited_client):
    add_version(limited_client)
    now = [1000.0]
    project_predictions(limited_client.app).limiter.clock = lambda: now[0]
    data = image_bytes(noise(0, (8, 8)))
    assert [predict(limited_client, data).status_code for _ in range(2)] == [200, 200]
    refused = predict(limited_client, data)
    assert refused.status_code == 429 and refused.json()["field"] is None
    assert refused.headers["Retry-After"] == "30"  # 2 a minute: one more every 30 s
    now[0] += 29.0
    assert predict(limited_client, data).status_code == 429
    now[0] += 1.0
    assert predict(limited_client, data).status_code == 200
    assert predict(limited_client, data).status_code == 429


def test_the_rate_limiter_counts_each_client_alone_and_refills_up_to_its_burst():
    now = [0.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    assert [limiter.wait("a") for _ in range(4)] == [0.0, 0.0, 0.0, 20.0]
    assert limiter.wait("b") == 0.0
    now[0] += 3600.0  # an idle hour refills no more than the burst
    assert [limiter.wait("a") for _ in range(4)] == [0.0, 0.0, 0.0, 20.0]
    now[0] += 10.0
    assert limiter.wait("a") == pytest.approx(10.0)


def test_a_new_current_version_is_used_from_the_next_request(client):
    data = image_bytes(noise(3))
    first = add_version(client, seed=0)
    before = predict(client, data, score_threshold=0.0, max_detections=10).json()
    second = add_version(client, seed=1)
    after = predict(client, data, score_threshold=0.0, max_detections=10).json()
    assert (before["model_version_id"], after["model_version_id"]) == (first, second)
    predictor = load(Path(client.app.state.settings.project_dir) / "models/v1.pt", device="cpu")
    found = predictor.predict(noise(3), score_threshold=0.0, max_detections=10)
    assert_same_as_predictor(after, found, dict.fromkeys(CLASSES))
    assert after["instances"] != before["instances"]


def test_any_logged_in_user_may_predict_and_nobody_else(secured_client):
    add_version(secured_client)
    data = image_bytes(noise(0))
    refused = predict(secured_client, data)
    assert refused.status_code == 401 and refused.json()["field"] == "authorization"
    add_user(secured_client.app.state.db, "ann", "annotator")
    assert predict(secured_client, data, headers=login(secured_client, "ann")).status_code == 200
