"""``instaseg <verb>``: a thin command line over the Python API, one module per pipeline step.

``app`` registers the verbs of ``data``, ``check``, ``models``, ``train``, ``predict``, ``evaluate``,
``review`` and ``export`` in that order; shared option types live in ``options``.
"""

from instaseg.cli.commands import app, main

__all__ = ["app", "main"]
