"""The command line as a whole: ``python -m instaseg`` is ``instaseg``, and the verbs come in pipeline order."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import run_cli

PIPELINE = ["convert", "check", "stats", "show", "synth", "models", "train", "quickstart", "predict", "eval",
            "review", "noise", "export", "app", "users", "worker", "serve"]  # fmt: skip


def _listed_verbs(help_text: str) -> list[str]:
    commands = help_text.split("Commands", 1)[1]
    return re.findall(r"^\W*([a-z]+)\s{2,}", commands, flags=re.M)


def test_help_lists_every_verb_in_pipeline_order():
    result = run_cli("--help")
    assert result.code == 0
    assert _listed_verbs(result.stdout) == PIPELINE


def test_python_dash_m_instaseg_is_the_instaseg_command():
    module = subprocess.run([sys.executable, "-m", "instaseg", "--help"], capture_output=True, text=True, timeout=120)
    assert module.returncode == 0 and _listed_verbs(module.stdout) == PIPELINE
    wrong = subprocess.run([sys.executable, "-m", "instaseg", "nonsense"], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "nonsense" in wrong.stderr
