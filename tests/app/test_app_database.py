"""The database layer: migrations from the first schema, SQLite's settings, one transaction per write."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text

from instaseg.app.db.database import Database, alembic_config, head_revision
from instaseg.app.db.schema import Base, Image, LabelClass


def test_migrations_build_exactly_the_mapped_schema(database_url):
    db = Database(database_url)
    db.migrate()
    assert db.schema_revision() == head_revision()
    with db.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    db.close()


def test_upgrade_from_the_first_schema_keeps_the_data(database_url):
    db = Database(database_url)
    with db.engine.begin() as connection:
        config = alembic_config(database_url)
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    with db.engine.begin() as connection:
        connection.execute(
            text("INSERT INTO classes (name, color, position, revision) VALUES ('cat', '#ff0000', 0, 1)")
        )
        connection.execute(
            text(
                "INSERT INTO images (file_name, width, height, status, revision, uploaded, extra, created_at, updated_at)"
                " VALUES ('a.png', 4, 3, 'new', 1, false, '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
    assert db.schema_revision() == "0001"
    db.migrate()
    assert db.schema_revision() == head_revision()
    with db.read() as session:
        assert session.scalars(select(LabelClass.name)).all() == ["cat"]
        assert [(i.file_name, i.width, i.height) for i in session.scalars(select(Image))] == [("a.png", 4, 3)]
    db.close()


def test_sqlite_runs_in_wal_with_foreign_keys(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'p.db'}")
    db.migrate()
    with db.read() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
    db.close()


def test_a_failed_write_leaves_nothing(database_url):
    db = Database(database_url)
    db.migrate()
    with pytest.raises(RuntimeError), db.write() as session:
        session.add(LabelClass(name="dog", color="#00ff00"))
        session.flush()
        raise RuntimeError("fails after the flush")
    with db.read() as session:
        assert session.scalars(select(LabelClass)).all() == []
    db.close()
