"""The README's tour on real data runs end to end as written, with shorter training budgets.

The commands are read from README.md itself, so the tour and this test cannot drift apart. Only the
time budgets are shortened; every other argument, path and verb is the README's.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import SHARED, run_cli, shared_dataset

README = Path(__file__).resolve().parents[1] / "README.md"
SHORT_BUDGETS = {"--minutes": "0.3", "--minutes-per-fold": "0.3"}


def tour_commands() -> list[list[str]]:
    """The ``instaseg ...`` lines of the README's tour block, as argument lists without the verb's name."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"### A tour on real data\s+```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no tour block"
    commands = []
    for line in block.group(1).splitlines():
        words = shlex.split(line, comments=True)
        if words:
            assert words[0] == "instaseg", line
            commands.append(words[1:])
    return commands


def shortened(words: list[str]) -> list[str]:
    """``words`` with the time budgets shortened and ``../shared`` pointing at this checkout's."""
    out = []
    for i, word in enumerate(words):
        if i and words[i - 1] in SHORT_BUDGETS:
            word = SHORT_BUDGETS[words[i - 1]]
        out.append(word.replace("../shared/datasets", str(SHARED)))
    return out


def test_the_tour_lists_every_step():
    verbs = [words[0] for words in tour_commands()]
    assert verbs == [
        "convert",
        "convert",
        "check",
        "stats",
        "show",
        "train",
        "predict",
        "eval",
        "review",
        "review",
        "export",
    ]


@pytest.mark.slow
def test_the_readme_tour_runs_on_balloon(tmp_path, monkeypatch):
    shared_dataset("balloon")
    monkeypatch.chdir(tmp_path)
    for words in tour_commands():
        result = run_cli(*shortened(words))
        assert result.code == 0, f"instaseg {shlex.join(words)}\n{result.stdout}\n{result.stderr}"
    assert Path("balloon/train.fixed.json").is_file()
    assert Path("runs/balloon-eval").is_dir()
    assert list(Path("runs/balloon").glob("best.onnx"))
