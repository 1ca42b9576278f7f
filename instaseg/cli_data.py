"""CLI verbs for the data step (registered on ``instaseg.cli.app``)."""

from __future__ import annotations

from instaseg.cli import app  # noqa: F401
