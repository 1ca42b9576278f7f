"""``instaseg serve MODEL.pt``: one checkpoint over HTTP, its health, its token, and its refusals."""

from __future__ import annotations

import contextlib
import io as text_io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from instaseg.app.serving import check_serve_access, create_serve_app
from instaseg.cli import main
from instaseg.core.errors import InstasegError
from instaseg.engine.predictor import load
from tests.app.test_app_predict import CLASSES, assert_same_as_predictor, image_bytes, noise, write_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("serve") / "best.pt")


def _predict(client: TestClient, data: bytes, headers: dict | None = None, **params):
    return client.post("/api/predict", files={"image": ("a.png", data)}, params=params, headers=headers or {})


def test_serve_predicts_what_the_predictor_does_and_reports_its_health(checkpoint):
    with TestClient(create_serve_app(checkpoint, device="cpu")) as client:
        response = _predict(client, image_bytes(noise(0)), score_threshold=0.0, max_detections=20)
        assert response.status_code == 200, response.text
        body = response.json()
        found = load(checkpoint, device="cpu").predict(noise(0), score_threshold=0.0, max_detections=20)
        assert len(found.boxes) > 0 and body["model_version_id"] is None
        assert_same_as_predictor(body, found, {name: index for index, name in enumerate(CLASSES)})

        health = client.get("/api/health")
        assert health.status_code == 200
        assert health.json() == {
            "status": "ok",
            "model": "maskrcnn_resnet18_fpn",
            "preset": "small",
            "classes": CLASSES,
            "input_sizes": {"short_side": 64, "max_side": 64, "train_short_sides": [64]},
        }
        assert client.get("/docs").status_code == 200
        assert "/api/predict" in client.get("/openapi.json").json()["paths"]
        bad = _predict(client, b"not an image")
        assert bad.status_code == 422 and bad.json()["field"] == "image"


def test_off_loopback_serving_needs_a_token():
    for host in ("127.0.0.1", "localhost", "::1"):
        check_serve_access(host, None)
    check_serve_access("0.0.0.0", "s3cret")
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        for token in (None, ""):
            with pytest.raises(InstasegError, match="without a token"):
                check_serve_access(host, token)


def test_with_a_token_every_api_request_must_bring_it(checkpoint):
    with TestClient(create_serve_app(checkpoint, host="0.0.0.0", token="s3cret", device="cpu")) as client:
        data = image_bytes(noise(0))
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            refused = _predict(client, data, headers)
            assert refused.status_code == 401 and refused.json()["field"] == "authorization", headers
            assert client.get("/api/health", headers=headers).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert _predict(client, data, good).status_code == 200
        assert client.get("/api/health", headers=good).status_code == 200


def test_serve_limits_upload_size_and_rate(checkpoint):
    now = [0.0]
    app = create_serve_app(checkpoint, max_upload_bytes=2000, per_minute=1, device="cpu", clock=lambda: now[0])
    with TestClient(app) as client:
        too_big = _predict(client, image_bytes(noise(0, (64, 64))))
        assert too_big.status_code == 413 and too_big.json()["field"] == "body"
        small = image_bytes(np.zeros((8, 8, 3), np.uint8))
        assert _predict(client, small).status_code == 200
        refused = _predict(client, small)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "60"
        now[0] += 60.0
        assert _predict(client, small).status_code == 200


def _run_cli(*args: str) -> tuple[int, str]:
    err = text_io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(text_io.StringIO()):
        with pytest.raises(SystemExit) as exited:
            main(list(args))
    return int(exited.value.code or 0), err.getvalue()


def test_serve_refuses_a_missing_or_corrupt_model_and_an_open_address_without_token(tmp_path, checkpoint, monkeypatch):
    monkeypatch.delenv("INSTASEG_SERVE_TOKEN", raising=False)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 10)
    cases = [
        ((str(tmp_path / "missing.pt"),), "missing.pt: checkpoint not found"),
        ((str(corrupt),), "corrupt.pt: not a readable PyTorch checkpoint"),
        ((str(checkpoint), "--host", "0.0.0.0"), "without a token"),
    ]
    for args, message in cases:
        code, stderr = _run_cli("serve", *args)
        assert code == 2, stderr
        assert stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr, stderr
