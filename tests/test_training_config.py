"""``TrainConfig``: defaults, one-line validation naming the option, the dict a checkpoint stores, resume and recipes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from instaseg.core.errors import InstasegError
from instaseg.engine.config import RECORDED_FIELDS, TrainConfig
from instaseg.models import DEFAULT_MODEL


def test_defaults_are_the_documented_ones():
    config = TrainConfig()
    assert (config.model, config.preset, config.model_kwargs) == (DEFAULT_MODEL, None, {})
    assert (config.epochs, config.minutes, config.batch_size, config.lr, config.seed) == (None, None, 4, 1e-3, 0)
    assert (config.crop_size, config.flips, config.photometric) == (None, "horizontal", "jitter")
    assert (config.val_every, config.checkpoint_every, config.processes, config.weights) == (None, 500, 1, None)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epochs": 0}, "--epochs must be at least 1, not 0"),
        ({"batch_size": 0}, "--batch-size must be at least 1, not 0"),
        ({"crop_size": 16}, "--crop-size must be at least 32, not 16"),
        ({"processes": 0}, "--processes must be at least 1, not 0"),
        ({"checkpoint_every": 0}, "checkpoint_every must be at least 1, not 0"),
        ({"minutes": 0.0}, "--minutes must be a positive number, not 0.0"),
        ({"minutes": float("inf")}, "--minutes must be a positive number, not inf"),
        ({"lr": float("nan")}, "--lr must be a positive number, not nan"),
        ({"val_every": -1.0}, "val_every must be a positive number, not -1.0"),
        ({"flips": "upside-down"}, "--flips must be one of horizontal, all, not 'upside-down'"),
        ({"photometric": "sepia"}, "--photometric must be one of jitter, all, not 'sepia'"),
        ({"batch_size": 4, "processes": 3}, "--batch-size 4 must be a multiple of --processes 3"),
        ({"model": "nope"}, "unknown model 'nope'"),
        ({"preset": "huge"}, "has no preset 'huge'"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_the_option(changes, message):
    with pytest.raises(InstasegError) as raised:
        TrainConfig(**changes)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(InstasegError, match=message.split(" ")[0]):
        TrainConfig().replace(**changes)  # a changed copy is checked too


def test_it_is_frozen_and_owns_its_values():
    kwargs = {"min_size": 64}
    config = TrainConfig(model_kwargs=kwargs, weights=Path("w.pt"))
    kwargs["min_size"] = 32
    assert config.model_kwargs == {"min_size": 64} and config.weights == "w.pt"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0  # type: ignore[misc]


def test_to_dict_and_from_dict_round_trip_with_plain_values():
    config = TrainConfig(
        preset="small",
        model_kwargs={"train_scales": (1.0,)},
        epochs=3,
        minutes=2.5,
        batch_size=8,
        lr=2e-3,
        seed=7,
        weights="w.pt",
        crop_size=64,
        flips="all",
        photometric="all",
        val_every=0.5,
        checkpoint_every=10,
        processes=2,
    )
    values = config.to_dict()
    assert values["flips"] == "all" and values["model_kwargs"] == {"train_scales": (1.0,)}
    assert all(isinstance(v, (str, int, float, dict, type(None))) for v in values.values())
    assert TrainConfig.from_dict(values) == config
    with pytest.raises(InstasegError, match="unknown training options colour"):
        TrainConfig.from_dict({**values, "colour": "red"})


def test_a_resumed_run_keeps_the_recorded_model_and_augmentation_and_takes_the_rest_from_the_command():
    recorded = TrainConfig(
        preset="small",
        model_kwargs={"min_size": 64},
        crop_size=48,
        flips="all",
        photometric="all",
        weights="w.pt",
        epochs=1,
        lr=1e-3,
        batch_size=2,
    )
    command = TrainConfig(epochs=3, lr=5e-4, batch_size=4, seed=2)
    resumed = command.resumed_from(recorded)
    assert {name: getattr(resumed, name) for name in RECORDED_FIELDS} == {
        "model": DEFAULT_MODEL,
        "preset": "small",
        "model_kwargs": {"min_size": 64},
        "weights": "w.pt",
        "crop_size": 48,
        "flips": "all",
        "photometric": "all",
    }
    assert (resumed.epochs, resumed.lr, resumed.batch_size, resumed.seed) == (3, 5e-4, 4, 2)


def test_the_quickstart_recipe_trains_the_small_preset():
    config = TrainConfig.recipe("quickstart", minutes=10.0, val_every=5.0)
    assert (config.preset, config.batch_size, config.lr, config.minutes, config.val_every) == (
        "small",
        4,
        1e-3,
        10.0,
        5.0,
    )
    assert config.model_arguments()["min_size"] == 128  # the small preset's input size
    with pytest.raises(InstasegError, match="--minutes must be a positive number"):
        TrainConfig.recipe("quickstart", minutes=0)
    with pytest.raises(InstasegError, match="no training recipe 'huge'; available: quickstart"):
        TrainConfig.recipe("huge")
