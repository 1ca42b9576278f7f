"""CLI verb group ``users``: who may log in to a project's app, with which role.

The same rules as the API's (``instaseg.app.routers.users``) apply: passwords of at least 8
characters, users deactivated rather than deleted, and the last admin who can log in kept.
Passwords are read from a prompt (asked twice) or, for scripts, from the first line of stdin.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from instaseg.cli.app import DatabaseUrl, ProjectDir
from instaseg.core.errors import InstasegError

users_app = typer.Typer(help="Users of a project and their roles.", no_args_is_help=True)

# The values of instaseg.app.db.schema.Role, spelled out so that ``instaseg --help`` need not import the database.
RoleName = Literal["admin", "annotator", "reviewer"]
UserName = Annotated[str, typer.Argument(help="The user's login name.")]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin instead of a prompt.")
]


@users_app.command("add")
def add(
    project_dir: ProjectDir,
    name: UserName,
    role: Annotated[RoleName, typer.Option("--role", help="What the user may do.")],
    db: DatabaseUrl = None,
    password_stdin: PasswordStdin = False,
) -> None:
    """Add a user who can log in to the project's app (the project is created when new)."""
    from instaseg.app.routers.users import UserIn, create_user

    password = _read_password(password_stdin)
    user = _refusals_as_errors(
        create_user, _open(project_dir, db, create=True), _model(UserIn, name=name, role=role, password=password)
    )
    typer.echo(f"added {user.name} ({user.role.value}, id {user.id})")


@users_app.command("list")
def list_command(project_dir: ProjectDir, db: DatabaseUrl = None) -> None:
    """List the project's users: id, name, role, and whether they are active."""
    from instaseg.app.routers.users import list_users

    for user in list_users(_open(project_dir, db)):
        typer.echo(f"{user.id}\t{user.name}\t{user.role.value}\t{'active' if user.active else 'inactive'}")


@users_app.command("remove")
def remove(project_dir: ProjectDir, name: UserName, db: DatabaseUrl = None) -> None:
    """Deactivate a user: they can no longer log in, and the history keeps their name."""
    from instaseg.app.routers.users import deactivate_user, user_named

    database = _open(project_dir, db)
    user = _refusals_as_errors(deactivate_user, database, _refusals_as_errors(user_named, database, name).id)
    typer.echo(f"deactivated {user.name}")


@users_app.command("password")
def password(
    project_dir: ProjectDir, name: UserName, db: DatabaseUrl = None, password_stdin: PasswordStdin = False
) -> None:
    """Set a user's password (their current logins end)."""
    from instaseg.app.routers.users import UserChange, change_user, user_named

    database = _open(project_dir, db)
    user = _refusals_as_errors(user_named, database, name)
    change = _model(UserChange, password=_read_password(password_stdin))
    _refusals_as_errors(change_user, database, user.id, change, None)
    typer.echo(f"set the password of {user.name}")


def _open(project_dir: Path, url: str | None, create: bool = False):
    from instaseg.app.server import open_project
    from instaseg.app.settings import AppSettings

    if not create and url is None and not (project_dir / "project.db").exists():
        raise InstasegError("no project here; create it with `instaseg app` or `instaseg users add`", file=project_dir)
    return open_project(AppSettings(project_dir=project_dir, database_url=url))


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise InstasegError("--password-stdin: stdin is empty")
        return line.removesuffix("\n").removesuffix("\r")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


def _model(model: Any, **fields: Any) -> Any:
    """``model(**fields)``, its first validation error as a one-line error naming the field."""
    from pydantic import ValidationError

    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InstasegError(first["msg"], record=".".join(map(str, first["loc"]))) from None


def _refusals_as_errors(function: Any, *args: Any) -> Any:
    """Call ``function``; the API's refusals (``ApiError``) become one-line command errors."""
    from instaseg.app.errors import ApiError

    try:
        return function(*args)
    except ApiError as exc:
        raise InstasegError(exc.detail) from None
