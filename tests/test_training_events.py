"""Training reports its progress, losses, validations and warnings as events, and prints nothing itself."""

from __future__ import annotations

import json
import warnings

import pytest

from instaseg.core import events
from instaseg.data import Dataset
from instaseg.data.synth import make_synthetic
from instaseg.engine.config import TrainConfig
from instaseg.engine.train import train
from tests.conftest import TINY_MASKRCNN as TINY

# Small enough that one iteration takes well under a second on one core.


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    train_json, val_json = make_synthetic(tmp_path_factory.mktemp("shapes") / "data", num_train=8, num_val=2, size=64)
    return Dataset.load(train_json), Dataset.load(val_json)


def _collect(config, data, out):
    collected = []
    with events.listen(collected.append):
        train(config, *data, out=out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return collected, rows


def _check_run(collected, rows, steps, validations):
    # (validation may report its own progress under another task)
    progress = [e for e in collected if isinstance(e, events.Progress) and e.task == "train"]
    assert [e.done for e in progress] == [0, *range(1, steps + 1), steps]
    assert all(e.total == steps and e.unit == "it" for e in progress)
    assert [e.finished for e in progress] == [False] * (steps + 1) + [True]

    # The losses reported are the rows of metrics.jsonl, and so are the validations.
    losses = [e for e in collected if isinstance(e, events.Metrics) and e.task == "train"]
    loss_rows = [r for r in rows if "loss" in r]
    assert [e.step for e in losses] == [r["iteration"] for r in loss_rows] == [1, *range(10, steps + 1, 10)]
    for event, row in zip(losses, loss_rows, strict=True):
        assert event.values == {k: v for k, v in row.items() if k != "iteration"}
        assert {"loss", "loss_mask", "loss_classifier", "lr", "epoch"} <= event.values.keys()
    vals = [e for e in collected if isinstance(e, events.Metrics) and e.task == "validation"]
    val_rows = [r for r in rows if "val_mask_mAP" in r]
    assert [e.step for e in vals] == [r["iteration"] for r in val_rows] == validations
    for event, row in zip(vals, val_rows, strict=True):
        assert event.values == {
            "mask_mAP": row["val_mask_mAP"],
            "mask_mAP50": row["val_mask_mAP50"],
            "box_mAP": row["val_box_mAP"],
        }
    lines = [e.text for e in collected if isinstance(e, events.Message) and e.level == "info"]
    expected = [
        f"validation after {r['iteration']} iterations: mask mAP {r['val_mask_mAP']:.3f}, "
        f"box mAP {r['val_box_mAP']:.3f}"
        for r in val_rows
    ]
    assert [line for line in lines if line.startswith("validation")] == expected


def test_a_run_reports_steps_losses_and_validations_as_events(shapes, tmp_path, capsys):
    config = TrainConfig(epochs=2, batch_size=1, preset="small", model_kwargs=TINY)
    collected, rows = _collect(config, shapes, tmp_path / "run")
    _check_run(collected, rows, steps=16, validations=[8, 16])
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # the library draws and prints nothing itself


def test_a_warning_about_the_data_is_an_event_when_someone_listens(shapes, tmp_path):
    coco = shapes[0].copy().coco
    coco["categories"].append({"id": 9, "name": "hexagon"})
    collected = []
    with warnings.catch_warnings(record=True) as python_warnings:
        warnings.simplefilter("always")
        with events.listen(collected.append):
            train(
                TrainConfig(epochs=1, preset="small", model_kwargs=TINY, batch_size=8),
                Dataset(coco, shapes[0].image_root),
                out=tmp_path / "run",
            )
    warned = [e.text for e in collected if isinstance(e, events.Message) and e.level == "warning"]
    assert len(warned) == 1 and "no instances of hexagon" in warned[0]
    assert not [w for w in python_warnings if "hexagon" in str(w.message)]  # an event instead, not both


def test_the_events_of_training_processes_reach_the_listeners_of_the_caller(shapes, tmp_path):
    # 8 images in steps of 4 shared by 2 processes: 2 steps an epoch, logged and reported by rank 0 only.
    config = TrainConfig(epochs=2, batch_size=4, processes=2, preset="small", model_kwargs=TINY)
    collected, rows = _collect(config, shapes, tmp_path / "run")
    _check_run(collected, rows, steps=4, validations=[2, 4])
