"""CLI verb group ``users``: TODO(users) filled in by its owner."""

from __future__ import annotations

import typer

users_app = typer.Typer(help="Users of a project and their roles.", no_args_is_help=True)
