"""Shared test helpers: run the CLI in-process and locate the optional real datasets."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from instaseg.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


# A Mask R-CNN small enough to train a few steps in seconds (builder arguments over the "small" preset).
TINY_MASKRCNN = {
    "min_size": 64,
    "max_size": 64,
    "train_scales": (1.0,),
    "box_detections_per_img": 10,
    "rpn_post_nms_top_n_test": 50,
}


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path) -> CliResult:
    """Run ``instaseg ARGS...`` in this process and capture its exit status and output."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: CliResult, *culprits: object) -> None:
    """The verb refused: exit 2, one ``error:`` line naming every culprit, no traceback."""
    assert result.code == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "error: unexpected" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    for culprit in culprits:
        assert str(culprit) in result.stderr, (culprit, result.stderr)


@pytest.fixture
def cli():
    return run_cli


def shared_dataset(name: str) -> Path:
    """Path to ../shared/datasets/NAME, skipping the test when the checkout has none beside it."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"needs ../shared/datasets/{name}, which is not beside this checkout")
    return path
