"""The checkpoint module: what a checkpoint holds, its format version, and the one-line refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import instaseg
from instaseg.core.errors import InstasegError
from instaseg.data import Dataset
from instaseg.data.synth import make_synthetic
from instaseg.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    TRAIN_STATE_KEYS,
    load_weights,
    make_checkpoint,
    read_checkpoint,
    resume_point,
    save_checkpoint,
)
from instaseg.engine.config import TrainConfig
from instaseg.engine.train import train
from instaseg.models import MODELS
from instaseg.models.maskrcnn import PRESETS
from tests.conftest import TINY_MASKRCNN as TINY
from tests.conftest import assert_one_line_error

KWARGS = {**PRESETS["small"], **TINY}
MODEL_CONFIG = {
    "model": "maskrcnn_resnet18_fpn",
    "preset": "small",
    "kwargs": KWARGS,
    "class_names": ["a", "b"],
    "train_image_sha1": ["0" * 40],
    "object_sizes": [10.0, 20.0],
}


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return MODELS["maskrcnn_resnet18_fpn"].builder(num_classes=2, **KWARGS).state_dict()


def _train_state() -> dict:
    return {
        "iteration": 3,
        "epoch": 1,
        "batch_in_epoch": 0,
        "elapsed": 1.5,
        "best_map": 0.25,
        "history": [],
        "rng": torch.get_rng_state(),
        "scaler": {},
        "optimizer": {"state": {}, "param_groups": []},
    }


def _version_1(path: Path) -> Path:
    """A checkpoint as instaseg wrote it before the training config was stored (format version 1)."""
    config = {**MODEL_CONFIG, "crop_size": None, "flips": "horizontal", "photometric": "jitter"}
    return save_checkpoint(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "config": config,
            "model": _weights(),
            "train_state": _train_state(),
        },
    )


def test_a_checkpoint_holds_the_model_config_the_weights_the_training_config_and_state(tmp_path):
    recipe = TrainConfig(preset="small", model_kwargs=TINY, epochs=3, crop_size=48, flips="all")
    path = save_checkpoint(
        tmp_path / "last.pt",
        make_checkpoint(config=MODEL_CONFIG, weights=_weights(), train_config=recipe, train_state=_train_state()),
    )
    stored = read_checkpoint(path)
    assert (stored["format"], stored["version"]) == (CHECKPOINT_FORMAT, CHECKPOINT_VERSION) == (CHECKPOINT_FORMAT, 2)
    assert TRAIN_STATE_KEYS <= stored["train_state"].keys()
    config, train_config = resume_point(stored, path)
    assert config == MODEL_CONFIG and train_config == recipe
    predictor = instaseg.load(path, device="cpu")
    assert predictor.class_names == ("a", "b") and predictor.object_sizes == (10.0, 20.0)


def test_a_run_stores_its_whole_config_with_the_preset_it_built(tmp_path):
    train_json, _ = make_synthetic(tmp_path / "data", num_train=4, num_val=1, size=64)
    recipe = TrainConfig(model_kwargs=TINY, preset=None, epochs=1, batch_size=4, flips="all", seed=3)
    train(recipe, Dataset.load(train_json), out=tmp_path / "run")
    for name in ("best.pt", "last.pt"):
        stored = read_checkpoint(tmp_path / "run" / name)
        preset = "gpu" if torch.cuda.is_available() else "cpu"
        assert TrainConfig.from_dict(stored["train_config"]) == recipe.replace(preset=preset)
        assert (
            stored["config"]["preset"] == preset
            and stored["config"]["kwargs"] == recipe.replace(preset=preset).model_arguments()
        )


def test_a_version_1_checkpoint_still_predicts_and_starts_runs_but_is_not_resumed(tmp_path):
    path = _version_1(tmp_path / "old.pt")
    predictor = instaseg.load(path, device="cpu")
    assert predictor.class_names == ("a", "b")
    model = MODELS["maskrcnn_resnet18_fpn"].builder(num_classes=2, **KWARGS)
    assert load_weights(model, path) == []
    assert all(torch.equal(tensor, model.state_dict()[name]) for name, tensor in _weights().items())
    with pytest.raises(InstasegError, match="old.pt: written by an older instaseg \\(checkpoint format version 1\\)"):
        resume_point(read_checkpoint(path), path)


def test_a_run_refuses_to_resume_from_a_version_1_last_pt(tmp_path):
    train_json, _ = make_synthetic(tmp_path / "data", num_train=4, num_val=1, size=64)
    data = Dataset.load(train_json)
    (tmp_path / "run").mkdir()
    _version_1(tmp_path / "run" / "last.pt")
    checkpoint = read_checkpoint(tmp_path / "run" / "last.pt")
    checkpoint["config"]["class_names"] = data.class_names
    save_checkpoint(tmp_path / "run" / "last.pt", checkpoint)
    with pytest.raises(InstasegError, match="last.pt: written by an older instaseg .*--weights, not be resumed"):
        train(TrainConfig(epochs=1, preset="small"), data, out=tmp_path / "run", resume=True)


@pytest.mark.parametrize(
    "version, message",
    [
        (
            3,
            "written by a newer instaseg (checkpoint format version 3; this one reads versions up to 2); upgrade instaseg to use it",
        ),
        (None, "not a usable instaseg checkpoint (format version None)"),
        ("2", "not a usable instaseg checkpoint (format version '2')"),
    ],
)
def test_a_checkpoint_of_an_unknown_version_is_refused_in_one_line(tmp_path, cli, version, message):
    checkpoint = make_checkpoint(
        config=MODEL_CONFIG, weights=_weights(), train_config=TrainConfig(), train_state=_train_state()
    )
    checkpoint["version"] = version
    path = save_checkpoint(tmp_path / "future.pt", checkpoint)
    for use in (
        lambda: instaseg.load(path),
        lambda: load_weights(MODELS["maskrcnn_resnet18_fpn"].builder(num_classes=2, **KWARGS), path),
        lambda: resume_point(read_checkpoint(path), path),
    ):
        with pytest.raises(InstasegError) as raised:
            use()
        assert str(raised.value) == f"{path}: {message}"
    np.save(tmp_path / "a.npy", np.zeros(1))  # any file: the checkpoint is refused before the images are read
    assert_one_line_error(cli("predict", path, tmp_path / "a.npy", "--out", tmp_path / "pred"), path, message)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train_state": {"iteration": 1}}, "holds no complete training state to resume from"),
        ({"train_config": None}, "its training config is missing"),
        ({"train_config": {"lr": -1.0}}, "its training config: --lr must be a positive number"),
        ({"train_config": {"colour": "red"}}, "its training config: unknown training options colour"),
    ],
)
def test_a_checkpoint_that_cannot_continue_a_run_is_refused_naming_why(tmp_path, change, message):
    checkpoint = make_checkpoint(
        config=MODEL_CONFIG, weights=_weights(), train_config=TrainConfig(), train_state=_train_state()
    )
    checkpoint.update(change)
    path = save_checkpoint(tmp_path / "last.pt", checkpoint)
    with pytest.raises(InstasegError, match=message.replace("(", "\\(")):
        resume_point(read_checkpoint(path), path)
