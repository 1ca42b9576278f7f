"""Alembic's entry point: runs the migrations on the connection ``Database.migrate`` hands it."""

from alembic import context
from sqlalchemy import create_engine

from instaseg.app.db.schema import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # the ``alembic`` command line, with a URL in its config
    with create_engine(config.get_main_option("sqlalchemy.url", "")).begin() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    context.run_migrations()
