"""Fixtures of the app's tests: the same tests on SQLite and on a throwaway PostgreSQL server.

PostgreSQL is started once per run from the system's ``initdb``/``pg_ctl`` (as the ``postgres``
user when run as root), or taken from ``INSTASEG_TEST_POSTGRES_URL``; each test gets a database
of its own. Without either, the PostgreSQL cases skip, saying why.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from instaseg.app.auth import hash_password
from instaseg.app.db.database import Database
from instaseg.app.db.schema import Role, User
from instaseg.app.server import create_app, open_project
from instaseg.app.settings import AppSettings
from instaseg.app.transfer import scan_images
from instaseg.core import io

_database_numbers = itertools.count()


def _postgres_bin() -> Path | None:
    for found in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True):
        if (found / "initdb").exists():
            return found
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A server URL without a database name (``postgresql+psycopg://postgres@127.0.0.1:PORT``)."""
    given = os.environ.get("INSTASEG_TEST_POSTGRES_URL")
    if given:
        yield given.rstrip("/")
        return
    pg_bin = _postgres_bin()
    if pg_bin is None:
        pytest.skip(
            "PostgreSQL tests need initdb and pg_ctl (apt-get install postgresql) or INSTASEG_TEST_POSTGRES_URL"
        )
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("PostgreSQL tests run as root need runuser to start the server as the postgres user")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="instaseg-pg-"))
    if as_postgres:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    run = lambda *args: subprocess.run([*as_postgres, *map(str, args)], check=True, capture_output=True)  # noqa: E731
    try:
        run(pg_bin / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=300"
        run(pg_bin / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "-t", "60", "-o", options, "start")
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"could not start a throwaway PostgreSQL: {exc.stderr.decode(errors='replace').strip()[:200]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_postgres, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


def new_postgres_database(server: str) -> str:
    import psycopg

    name = f"test_{os.getpid()}_{next(_database_numbers)}"
    plain = server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """A fresh, empty database: SQLite in the test's folder, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        (tmp_path / "project").mkdir(exist_ok=True)
        return f"sqlite:///{tmp_path / 'project' / 'project.db'}"
    return new_postgres_database(request.getfixturevalue("postgres_server"))


def write_images(folder: Path, count: int, size: tuple[int, int] = (48, 64), seed: int = 0) -> list[str]:
    """``count`` small PNGs (height, width ``size``) in ``folder``; their file names."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(count):
        name = f"image_{k:03d}.png"
        io.write_image(folder / name, rng.integers(0, 255, (*size, 3), dtype=np.uint8), overwrite=True)
        names.append(name)
    return names


@pytest.fixture
def project_settings(tmp_path, database_url) -> AppSettings:
    return AppSettings(project_dir=tmp_path / "project", database_url=database_url)


@pytest.fixture
def client(project_settings, tmp_path) -> Iterator[TestClient]:
    """A client of a new project (on each database) with three 48x64 PNGs (image ids 1-3) and no classes yet;
    requests act as the local admin."""
    write_images(tmp_path / "images", 3)
    db = open_project(project_settings, image_root=tmp_path / "images")
    scan_images(db, tmp_path / "images")
    with TestClient(create_app(project_settings, db)) as test_client:
        yield test_client
    db.close()


def add_user(db: Database, name: str, role: str, password: str = "correct horse battery") -> int:
    """A user who can log in with ``password``; their id."""
    with db.write() as session:
        user = User(name=name, role=Role(role), password_hash=hash_password(password))
        session.add(user)
        session.flush()
        return user.id


def login(client: TestClient, name: str, password: str = "correct horse battery") -> dict[str, str]:
    """The headers that make ``client``'s requests ``name``'s."""
    response = client.post("/api/auth/login", json={"name": name, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.fixture
def secured_client(tmp_path, database_url) -> Iterator[TestClient]:
    """Like ``client``, but every request must log in (as if served off loopback); users are added by the test
    (``add_user(secured_client.app.state.db, ...)``)."""
    settings = AppSettings(project_dir=tmp_path / "project", database_url=database_url, login_required=True)
    write_images(tmp_path / "images", 3)
    db = open_project(settings, image_root=tmp_path / "images")
    scan_images(db, tmp_path / "images")
    with TestClient(create_app(settings, db)) as test_client:
        yield test_client
    db.close()
