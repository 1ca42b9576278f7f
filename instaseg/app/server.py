"""The web application: one FastAPI app per project, its routers, and ``instaseg app``'s start-up.

Routers (``instaseg.app.routers``), one per resource, are the only way the browser and scripts
change the project; each write goes through one database transaction (``Database.write``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from sqlalchemy import select

from instaseg.app import errors, limits
from instaseg.app.auth import LOCAL_USER, CurrentUser, ensure_local_user
from instaseg.app.db.database import Database, default_url
from instaseg.app.db.schema import Project, Role
from instaseg.app.routers import (
    auth,
    classes,
    exports,
    health,
    history,
    images,
    instances,
    jobs,
    models,
    predict,
    stats,
    suggestions,
    transfer,
    uploads,
    users,
)
from instaseg.app.settings import AppSettings
from instaseg.core.errors import InstasegError

ROUTERS = (
    health,
    auth,
    users,
    classes,
    images,
    uploads,
    instances,
    history,
    stats,
    transfer,
    jobs,
    exports,
    models,
    suggestions,
    predict,
)


def open_project(settings: AppSettings, image_root: str | Path | None = None) -> Database:
    """Open (creating when new) the project's database, migrated to the newest schema.

    ``image_root`` sets where a new project's images are (the project's ``images`` folder when
    None) and moves an existing project's.
    """
    project_dir = Path(settings.project_dir)
    project_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url or default_url(project_dir))
    db.migrate()
    with db.write() as session:
        project = session.scalar(select(Project))
        root: Path | None = None
        if image_root is not None:
            root = Path(image_root).resolve()
            if not root.is_dir():
                raise InstasegError("no such image folder", file=image_root)
        elif project is None:
            root = (project_dir / "images").resolve()
            root.mkdir(parents=True, exist_ok=True)
        if project is None:
            assert root is not None
            session.add(Project(name=project_dir.resolve().name, image_root=str(root)))
        elif root is not None:
            project.image_root = str(root)
    return db


def create_app(settings: AppSettings, db: Database | None = None) -> FastAPI:
    """The app serving the project ``settings`` names, on ``db`` (opened by ``open_project`` when None)."""
    db = db if db is not None else open_project(settings)
    app = FastAPI(title="instaseg", description="The instaseg annotation workspace's API.", version="1")
    app.state.settings = settings
    app.state.db = db
    app.state.local_user = CurrentUser(ensure_local_user(db), LOCAL_USER, Role.admin)
    errors.install(app)
    limits.install(app, settings)
    for module in ROUTERS:
        app.include_router(module.router)
    return app


def image_root(db: Database) -> Path:
    with db.read() as session:
        project = session.scalar(select(Project))
        assert project is not None, "open_project creates the project row"
        return Path(project.image_root)
