"""Uploading images: stored under the image root's uploads folder with their rows, checked first, all or none."""

from __future__ import annotations

import hashlib
import io
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from instaseg.app.db.schema import Image
from instaseg.app.server import image_root


def image_bytes(height: int = 20, width: int = 30, format: str = "PNG", seed: int = 0, **save_options) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format=format, **save_options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def upload(client, *files: tuple[str, bytes], headers=None):
    return client.post(
        "/api/images/upload",
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        headers=headers,
    )


def stored(client) -> tuple[list[str], list[str]]:
    """The uploaded images' rows and the files in the uploads folder, by name."""
    db = client.app.state.db
    with db.read() as session:
        rows = sorted(session.scalars(select(Image.file_name).where(Image.uploaded.is_(True))))
    folder = image_root(db) / "uploads"
    return rows, sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def image_count(client) -> int:
    with client.app.state.db.read() as session:
        return session.scalar(select(func.count()).select_from(Image))


def test_uploaded_images_are_stored_with_their_size_and_sha1(client):
    first, second = image_bytes(), image_bytes(40, 10, "JPEG", seed=1)
    response = upload(client, ("first.png", first), ("second.JPG", second))
    assert response.status_code == 201, response.text
    images = response.json()["images"]
    assert [(i["file_name"], i["width"], i["height"]) for i in images] == [
        ("uploads/first.png", 30, 20),
        ("uploads/second.JPG", 10, 40),
    ]
    assert images[0]["sha1"] == hashlib.sha1(first).hexdigest() and images[0]["status"] == "new"
    assert images[0]["instance_count"] == 0 and images[0]["revision"] == 1
    folder = image_root(client.app.state.db) / "uploads"
    assert (folder / "first.png").read_bytes() == first and (folder / "second.JPG").read_bytes() == second
    assert stored(client) == (["uploads/first.png", "uploads/second.JPG"], ["first.png", "second.JPG"])
    assert not [p for p in folder.parent.rglob(".*")], "a temporary file was left behind"


def test_an_exif_rotated_photo_gets_its_displayed_size(client):
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: shown 20 wide and 30 high
    response = upload(client, ("photo.jpg", image_bytes(20, 30, "JPEG", exif=exif.tobytes())))
    assert response.status_code == 201, response.text
    assert (response.json()["images"][0]["width"], response.json()["images"][0]["height"]) == (20, 30)


def test_a_name_in_use_is_refused_and_the_first_upload_stays(client):
    original = image_bytes()
    assert upload(client, ("cat.png", original)).status_code == 201
    again = upload(client, ("dog.png", image_bytes(seed=2)), ("cat.png", image_bytes(seed=3)))
    assert again.status_code == 409 and again.json()["field"] == "files.1.filename"
    assert again.json()["current"]["file_name"] == "uploads/cat.png"
    assert stored(client) == (["uploads/cat.png"], ["cat.png"])
    assert (image_root(client.app.state.db) / "uploads" / "cat.png").read_bytes() == original
    twice = upload(client, ("a.png", original), ("a.png", original))
    assert twice.status_code == 409 and twice.json()["field"] == "files.1.filename"


def test_a_file_already_in_the_uploads_folder_is_not_replaced_and_nothing_stays(client):
    folder = image_root(client.app.state.db) / "uploads"
    folder.mkdir()
    (folder / "old.png").write_bytes(b"someone else's file")
    response = upload(client, ("new.png", image_bytes()), ("old.png", image_bytes(seed=1)))
    assert response.status_code == 409 and response.json()["field"] == "files.1.filename"
    assert stored(client) == ([], ["old.png"])
    assert (folder / "old.png").read_bytes() == b"someone else's file"


def test_one_bad_file_keeps_all_of_the_upload_out(client):
    before = image_count(client)
    response = upload(client, ("good.png", image_bytes()), ("bad.png", b"not an image at all"))
    assert response.status_code == 422 and response.json()["field"] == "files.1"
    assert stored(client) == ([], [])
    assert image_count(client) == before


def test_names_that_are_not_plain_image_file_names_are_refused(client):
    data = image_bytes()
    for name in ("notes.txt", "no_suffix", "x.png.exe", "a..png", "c:x.png", "x" * 252 + ".png"):
        response = upload(client, ("fine.png", data), (name, data))
        assert response.status_code == 422, (name, response.text)
        assert response.json()["field"] == "files.1.filename", name
    assert stored(client) == ([], [])


def test_control_characters_in_a_name_are_refused(client):
    # httpx would percent-encode them, so the multipart body is written by hand.
    for name in (b"evil\x01.png", b"new\nline.png", b"nul\x00.png"):
        body = (
            b'--boundary\r\nContent-Disposition: form-data; name="files"; filename="' + name + b'"\r\n'
            b"Content-Type: image/png\r\n\r\n" + image_bytes() + b"\r\n--boundary--\r\n"
        )
        response = client.post(
            "/api/images/upload", content=body, headers={"content-type": "multipart/form-data; boundary=boundary"}
        )
        assert response.status_code == 422, (name, response.text)
        assert response.json()["field"] == "files.0.filename", (name, response.text)
    assert stored(client) == ([], [])


# PIL warns on opening an image over the limit (and refuses one over twice it); the endpoint then refuses both.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_is_refused_before_it_is_decoded(client):
    response = upload(client, ("bomb.png", png_claiming(20_000, 20_000)))
    assert response.status_code == 422 and response.json()["field"] == "files.0"
    assert "pixels" in response.json()["detail"]
    response = upload(client, ("big.png", png_claiming(15_000, 12_000)))
    assert response.status_code == 422 and "pixels" in response.json()["detail"]
    assert stored(client) == ([], [])


def test_an_upload_without_files_is_refused(client):
    response = client.post("/api/images/upload", data={"other": "x"})
    assert response.status_code == 422 and response.json()["field"] == "files"


def test_the_upload_folder_is_inside_the_image_root(client, tmp_path):
    assert upload(client, ("inside.png", image_bytes())).status_code == 201
    assert (Path(tmp_path) / "images" / "uploads" / "inside.png").exists()


def test_concurrent_uploads_of_one_name_store_one_file_and_its_row(client):
    names = [f"race_{k}.png" for k in range(6)]
    contents = {seed: image_bytes(seed=seed) for seed in (1, 2)}
    barrier = threading.Barrier(2)

    def racer(seed: int) -> list[int]:
        barrier.wait()
        return [upload(client, (name, contents[seed])).status_code for name in names]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(racer, (1, 2)))
    for k, statuses in enumerate(zip(*results)):
        assert sorted(statuses) == [201, 409], (names[k], statuses)
    rows, files = stored(client)
    assert rows == [f"uploads/{name}" for name in sorted(names)] and files == sorted(names)
    folder = image_root(client.app.state.db) / "uploads"
    with client.app.state.db.read() as session:
        for row in session.scalars(select(Image).where(Image.uploaded.is_(True))):
            assert hashlib.sha1((folder.parent / row.file_name).read_bytes()).hexdigest() == row.sha1, row.file_name
