"""What an ``instaseg app`` server is started with."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AppSettings:
    """Where the project is and how the server may be used.

    Args:
        project_dir: the project folder: its SQLite database (unless ``database_url`` names
            another), uploaded images, model versions and exports.
        database_url: a SQLAlchemy URL; ``sqlite:///PROJECT_DIR/project.db`` when None.
        host: the address the server binds; on a loopback address the built-in local user needs no login.
        login_required: refuse requests without a login even on loopback (the default off loopback).
        max_upload_bytes: the largest image upload accepted.
        max_request_bytes: the largest request body accepted on any other endpoint.
        predict_per_minute: requests to ``/api/predict`` one client may make per minute.
    """

    project_dir: Path
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    login_required: bool | None = None
    max_upload_bytes: int = 64 * 1024 * 1024
    max_request_bytes: int = 256 * 1024 * 1024
    predict_per_minute: int = 600

    @property
    def local(self) -> bool:
        """Anyone who can reach the server is the local user: bound to loopback and no login asked for."""
        return not self.login_required if self.login_required is not None else is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
