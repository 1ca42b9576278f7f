"""Every job kind, registered: import ``JOB_KINDS`` from here, not from ``kinds``, to see them all."""

from instaseg.app.jobs import export, prelabel, review, train  # noqa: F401  (each registers its kind)
from instaseg.app.jobs.kinds import JOB_KINDS

__all__ = ["JOB_KINDS"]
