"""Issue #17: train, models, export and quickstart refuse bad input in one line and leave nothing behind.

Corrupt checkpoints, nonsense options and zero-sized images are one-line errors (exit 2) raised
before any output exists; ``--resume`` refuses other training images; ``--minutes`` holds the
validations; the ONNX packages come with a plain install; ``export -h`` names the file it writes.
"""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest
import torch
import typer
from PIL import Image

from instaseg.cli import app
from instaseg.core.errors import InstasegError
from instaseg.data import Dataset
from instaseg.data.synth import make_synthetic
from instaseg.engine.checkpoint import CHECKPOINT_FORMAT, read_checkpoint, save_checkpoint
from instaseg.engine.config import TrainConfig
from instaseg.engine.predictor import Predictor
from instaseg.engine.train import Trainer, train
from instaseg.export import FORMATS
from instaseg.models import MODELS
from instaseg.models.maskrcnn import PRESETS
from tests.conftest import TINY_MASKRCNN as TINY
from tests.conftest import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
# Small enough that one iteration takes well under a second on one core.


@pytest.fixture
def shapes(tmp_path):
    train_json, val_json = make_synthetic(tmp_path / "data", num_train=8, num_val=2, size=64)
    return Dataset.load(train_json), Dataset.load(val_json)


def _train(data, out, *, resume=False, **kw):
    config = TrainConfig(**{"epochs": 1, "batch_size": 4, "preset": "small", "model_kwargs": TINY, **kw})
    return train(config, *data, out=out, resume=resume)


def _checkpoint(path: Path, **changes) -> Path:
    kwargs = {**PRESETS["small"], **TINY}
    model = MODELS["maskrcnn_resnet18_fpn"].builder(num_classes=2, **kwargs)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "model": model.state_dict(),
        "config": {"model": "maskrcnn_resnet18_fpn", "preset": "small", "kwargs": kwargs, "class_names": ["a", "b"]},
    }
    for key, value in changes.items():
        if value is None:
            del checkpoint[key]
        else:
            checkpoint[key] = value
    return save_checkpoint(path, checkpoint)


def _corrupt(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        whole = _checkpoint(tmp_path / "whole.pt").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "text":
        path.write_text("these are not weights\n")
    elif kind == "no_weights":
        _checkpoint(path, model=None)
    elif kind == "no_config":
        _checkpoint(path, config=None)
    elif kind == "bad_kwargs":
        _checkpoint(
            path,
            config={"model": "maskrcnn_resnet18_fpn", "kwargs": {"no_such_argument": 1}, "class_names": ["a", "b"]},
        )
    return path


# -- 15: corrupt checkpoints ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "no_weights", "no_config", "bad_kwargs"])
def test_predict_and_export_refuse_a_corrupt_checkpoint_in_one_line(tmp_path, cli, kind):
    model = _corrupt(tmp_path, kind)
    Image.new("RGB", (32, 24)).save(tmp_path / "a.png")
    assert_one_line_error(cli("predict", model, tmp_path / "a.png", "--out", tmp_path / "pred"), model, ": not a")
    assert_one_line_error(cli("export", model, "--out", tmp_path / "m.onnx"), model, ": not a")
    assert not (tmp_path / "pred").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "no_weights"])
def test_train_refuses_corrupt_weights_before_making_its_out_folder(shapes, tmp_path, cli, kind):
    weights = _corrupt(tmp_path, kind)
    result = cli(
        "train", shapes[0].source, "--epochs", "1", "--preset", "small", "--weights", weights, "--out", tmp_path / "run"
    )
    assert_one_line_error(result, weights, ": not a")
    assert not (tmp_path / "run").exists()


def test_images_of_size_zero_are_refused_by_train_not_divided_by(shapes, tmp_path):
    coco = shapes[0].copy().coco
    coco["images"][0].update(width=0, height=0)
    unchecked = Dataset(coco, shapes[0].image_root, source="zero.json")  # made in Python: never validated
    with pytest.raises(InstasegError, match=f"zero.json: image id {coco['images'][0]['id']}: "):
        _train((unchecked, None), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# -- 15 and 16: nonsense options, refused before anything is written ---------------------------------
@pytest.mark.parametrize(
    "option, value, named",
    [
        ("--batch-size", "0", "--batch-size"),
        ("--lr", "-1", "--lr"),
        ("--lr", "nan", "--lr"),
        ("--epochs", "-1", "--epochs"),
        ("--minutes", "0", "--minutes"),
        ("--minutes", "inf", "--minutes"),
        ("--processes", "0", "--processes"),
        ("--crop-size", "8", "--crop-size"),
        ("--model", "nope", "unknown model 'nope'"),
        ("--preset", "huge", "no preset 'huge'"),
    ],
)
def test_train_refuses_nonsense_options_naming_them_and_creates_nothing(shapes, tmp_path, cli, option, value, named):
    result = cli("train", shapes[0].source, "--epochs", "1", "--out", tmp_path / "run", option, value)
    assert_one_line_error(result, named)
    assert not (tmp_path / "run").exists()


def test_train_refuses_weights_that_fit_nothing_before_making_its_out_folder(shapes, tmp_path, cli):
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "foreign.pth")
    result = cli(
        "train",
        shapes[0].source,
        "--epochs",
        "1",
        "--preset",
        "small",
        "--weights",
        tmp_path / "foreign.pth",
        "--out",
        tmp_path / "run",
    )
    assert_one_line_error(result, "foreign.pth", "no tensor in the file fits")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option", ["checkpoint_every", "val_every"])
def test_train_refuses_a_zero_interval_before_making_its_out_folder(shapes, tmp_path, option):
    with pytest.raises(InstasegError, match=option):
        _train(shapes, tmp_path / "run", **{option: 0})
    assert not (tmp_path / "run").exists()


def test_models_refuses_a_class_count_below_one(cli):
    assert_one_line_error(cli("models", "--num-classes", "0"), "--num-classes")


def test_quickstart_refuses_a_bad_budget_before_making_its_data(tmp_path, cli):
    assert_one_line_error(cli("quickstart", "--minutes", "0", "--out", tmp_path / "qs"), "--minutes")
    assert not (tmp_path / "qs").exists()


# -- 17: resuming on other training images ------------------------------------------------------------
def test_resume_refuses_other_training_images_unless_resume_anyway(shapes, tmp_path, cli):
    run = tmp_path / "run"
    _train((shapes[0], None), run)
    half = shapes[0].copy()
    kept = {image["id"] for image in half.images[:4]}
    half.coco["images"] = half.images[:4]
    half.coco["annotations"] = [ann for ann in half.annotations if ann["image_id"] in kept]
    half_json = half.save(shapes[0].source.with_name("half.json"))
    before = (run / "last.pt").read_bytes()

    refused = cli("train", half_json, "--epochs", "2", "--resume", "--out", run)
    assert_one_line_error(
        refused, run / "last.pt", "0 of these 4 training images", "4 of its images", "--resume-anyway"
    )
    assert (run / "last.pt").read_bytes() == before

    # The run ends at 3 epochs' steps of this set (3 x 1): one more step after the first run's 2.
    anyway = cli("train", half_json, "--epochs", "3", "--resume-anyway", "--out", run)
    assert anyway.code == 0, anyway.stderr
    resumed = read_checkpoint(run / "last.pt")
    assert resumed["train_state"]["iteration"] == 3
    assert len(resumed["config"]["train_image_sha1"]) == 8  # the half is among the images seen already

    same = cli("train", shapes[0].source, "--epochs", "4", "--resume", "--out", run)
    assert same.code == 0, same.stderr


def test_resuming_past_the_end_of_an_epochs_batches_goes_on_with_the_next_epoch(shapes, tmp_path):
    run = tmp_path / "run"
    _train((shapes[0], None), run, batch_size=2)  # 8 images: 4 batches an epoch
    checkpoint = read_checkpoint(run / "last.pt")
    checkpoint["train_state"].update(epoch=0, batch_in_epoch=3)  # as if killed after the 3rd of 4 batches
    save_checkpoint(run / "last.pt", checkpoint)
    # With 4 images a batch the epoch has 2 batches, both behind the resumed position.
    _train((shapes[0], None), run, epochs=3, batch_size=4, resume=True)  # 6 steps: 2 more after the 4 done
    state = read_checkpoint(run / "last.pt")["train_state"]
    assert (state["epoch"], state["batch_in_epoch"]) == (2, 0)


def test_resume_refuses_a_last_pt_without_training_state(shapes, tmp_path):
    run = tmp_path / "run"
    _train((shapes[0], None), run)
    shutil.copy(run / "best.pt", run / "last.pt")  # best.pt holds no optimizer
    with pytest.raises(InstasegError, match="last.pt: holds no complete training state"):
        _train((shapes[0], None), run, epochs=2, resume=True)


# -- the --minutes budget holds the validations ---------------------------------------------------------
@pytest.mark.parametrize("validation_seconds", [10, 40])
def test_a_time_budget_includes_the_validations(shapes, tmp_path, monkeypatch, validation_seconds):
    # A fake clock: each step takes 1 s and each validation `validation_seconds`.
    clock = {"now": 0.0}
    validations = []
    real_iter_dataset = Predictor.iter_dataset

    def step(self, batch):
        clock["now"] += 1
        return {"loss": 1.0}

    def slow_validation(self, *args, **kwargs):
        clock["now"] += validation_seconds
        validations.append(clock["now"])
        return real_iter_dataset(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "elapsed", lambda self: clock["now"])
    monkeypatch.setattr(Trainer, "run_step", step)
    monkeypatch.setattr(Predictor, "iter_dataset", slow_validation)
    _train(shapes, tmp_path / "run", epochs=None, minutes=0.5, batch_size=1)
    if validation_seconds * 2 < 30:
        assert clock["now"] <= 30 and len(validations) >= 2
    else:  # one validation outlasts what is left: the run ends on the weights it judged
        assert validations == [clock["now"]] and clock["now"] < 30 / 8 + 1 + validation_seconds


# -- 18: ONNX export needs no extra ---------------------------------------------------------------------
def test_onnx_packages_are_ordinary_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower(): dep for dep in project["dependencies"]}
    for package in ("onnx", "onnxruntime"):
        assert package in names and ";" not in names[package], names.get(package)
        assert not re.search(r"==|~=", names[package]), "a range, not a pin"
    for extra in project.get("optional-dependencies", {}).values():
        assert not any(dep.startswith(("onnx>", "onnxruntime>")) for dep in extra)


def test_export_help_names_the_suffix_export_writes():
    export = typer.main.get_command(app).commands["export"]
    help_text = " ".join(param.help or "" for param in export.params)
    assert set(re.findall(r"\.torchscript(?:\.\w+)*", help_text)) == {FORMATS["torchscript"]}, help_text
