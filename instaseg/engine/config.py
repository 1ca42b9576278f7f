"""The training recipe: one frozen, validated ``TrainConfig``, built once and passed whole to ``train``.

The CLI builds it from its options, quickstart from a named recipe, the label review's folds from
their options; ``train`` stores it in every checkpoint (``to_dict``) and a resumed run reads it back
(``from_dict``). Where a run writes, and whether it may replace or continue an earlier one, are
options of the run (``train(out=, overwrite=, resume=)``), not of the recipe.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instaseg.core.errors import InstasegError
from instaseg.models import DEFAULT_MODEL
from instaseg.models.registry import resolve_config

FLIPS = ("horizontal", "all")
PHOTOMETRIC = ("jitter", "all")

# A resumed run goes on with the model and augmentation it started with, whatever the resuming
# command says; its length, batch size, learning rate and intervals come from the command.
RECORDED_FIELDS = ("model", "preset", "model_kwargs", "weights", "crop_size", "flips", "photometric")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: the model, the run's length, the optimisation and the augmentation.

    Every value is checked when the config is made, naming the option, so a bad one never leaves
    a half-made output behind. A config without a length (``epochs`` or ``minutes``) is a valid
    recipe; ``train`` refuses to start one.

    Attributes:
        model: a name from ``instaseg.models.list_models()``.
        preset: model preset ("cpu", "gpu", "small"); by default "gpu" with CUDA, else "cpu".
        model_kwargs: builder arguments overriding the preset's (see ``build_maskrcnn``); read-only.
        epochs: passes over the training set; give this or ``minutes`` (both: whichever ends first).
        minutes: wall-clock budget for the whole run, validation included.
        batch_size: images per step (per process under torchrun; shared out with ``processes``).
        lr: peak AdamW learning rate.
        seed: seeds model initialisation, shuffling and augmentation.
        weights: start from this file: an instaseg checkpoint or a torchvision-style state dict.
            Tensors whose name or shape do not fit (e.g. heads for another class count) keep their
            fresh initialisation and are listed.
        crop_size: train on random square crops of this many pixels of each image, taken after
            resizing it as the model would (scale jitter included), instead of whole images: more
            steps per minute where images are large and objects small (cells, aerial views).
        flips: "horizontal" mirrors images left-right at random; "all" also upside down and
            across the diagonal (all eight flips and quarter turns), for images with no up or
            down (microscopy, aerial and satellite views): four times the variety from the same
            labels.
        photometric: "jitter" changes brightness, contrast and saturation at random; "all" also
            turns images grey and inverts them (each half the time), for data whose objects may be
            lighter or darker than their background from one image to the next (stained and
            fluorescent microscopy): a model that has seen only bright nuclei on black learns the
            dark ones on pink too.
        val_every: validate every this many epochs (default 1), or with ``minutes``, every this
            many minutes (default an eighth of the budget); always at the end.
        checkpoint_every: also write ``last.pt`` every this many iterations.
        processes: on a CPU, train as this many data-parallel processes (DDP over gloo), each
            with ``batch_size / processes`` images per step and an equal share of the cores: one
            process keeps only part of a small machine's cores busy.
    """

    model: str = DEFAULT_MODEL
    preset: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    minutes: float | None = None
    batch_size: int = 4
    lr: float = 1e-3
    seed: int = 0
    weights: str | Path | None = None  # kept as a str
    crop_size: int | None = None
    flips: str = "horizontal"
    photometric: str = "jitter"
    val_every: float | None = None
    checkpoint_every: int = 500
    processes: int = 1

    def __post_init__(self) -> None:
        # Copies, so that neither the caller's dict nor a Path can change or leak into a checkpoint.
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs or {}))
        if self.weights is not None:
            object.__setattr__(self, "weights", str(self.weights))
        whole_numbers = {
            "--epochs": (self.epochs, 1),
            "--batch-size": (self.batch_size, 1),
            "--crop-size": (self.crop_size, 32),
            "--processes": (self.processes, 1),
            "checkpoint_every": (self.checkpoint_every, 1),
        }
        for name, (value, least) in whole_numbers.items():
            if value is not None and value < least:
                raise InstasegError(f"{name} must be at least {least}, not {value}")
        positive: dict[str, float | None] = {"--minutes": self.minutes, "--lr": self.lr, "val_every": self.val_every}
        for name, number in positive.items():
            if number is not None and not (0 < number < math.inf):
                raise InstasegError(f"{name} must be a positive number, not {number}")
        if self.flips not in FLIPS:
            raise InstasegError(f"--flips must be one of {', '.join(FLIPS)}, not {self.flips!r}")
        if self.photometric not in PHOTOMETRIC:
            raise InstasegError(f"--photometric must be one of {', '.join(PHOTOMETRIC)}, not {self.photometric!r}")
        if self.batch_size % self.processes:
            raise InstasegError(f"--batch-size {self.batch_size} must be a multiple of --processes {self.processes}")
        self.model_arguments()  # an unknown model or preset is refused here, not when the run builds it

    def model_arguments(self) -> dict[str, Any]:
        """The builder's full keyword arguments: the preset's values with ``model_kwargs`` on top."""
        return resolve_config(self.model, self.preset, **self.model_kwargs)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def resumed_from(self, recorded: TrainConfig) -> TrainConfig:
        """This config with the model and augmentation of ``recorded``, the run being resumed."""
        return self.replace(**{name: getattr(recorded, name) for name in RECORDED_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (what a checkpoint stores and ``from_dict`` reads back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config ``to_dict`` wrote; an unknown or missing field is a one-line error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InstasegError(f"unknown training options {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def recipe(cls, name: str, **changes: Any) -> TrainConfig:
        """The named recipe of ``RECIPES`` with ``changes`` on top (e.g. the run's length)."""
        if name not in RECIPES:
            raise InstasegError(f"no training recipe {name!r}; available: {', '.join(RECIPES)}")
        return cls(**{**RECIPES[name], **changes})


RECIPES: dict[str, dict[str, Any]] = {
    # The synthetic shapes on a CPU: more distinct images beat more epochs, so quickstart makes many
    # images and trains the small preset on them for its time budget.
    "quickstart": {"model": DEFAULT_MODEL, "preset": "small", "batch_size": 4, "lr": 1e-3},
}
