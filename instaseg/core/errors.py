"""The one exception users see: a one-line message naming the file and the record at fault."""

from __future__ import annotations

from pathlib import Path


class InstasegError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback.

    The CLI prints ``error: <message>`` and exits with status 2.
    """

    def __init__(self, message: str, *, file: str | Path | None = None, record: str | None = None):
        parts = [str(p) for p in (file, record) if p not in (None, "")]
        super().__init__(": ".join([*parts, message]))
        self.file = file
        self.record = record
