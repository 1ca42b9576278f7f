"""The checkpoint format: ``save_checkpoint`` / ``read_checkpoint``, its version, and what a run resumes from.

A checkpoint is a ``torch.save`` dict holding only tensors and plain Python values, so it is read
with ``weights_only=True`` (no code runs on load)::

    format        CHECKPOINT_FORMAT
    version       CHECKPOINT_VERSION (1: before the training config was stored)
    config        what inference needs: model name, preset, the exact builder ``kwargs``,
                  ``class_names``, the SHA-1s of the training images, the typical object sizes
    model         the state dict
    train_config  the whole ``TrainConfig`` of the run (``to_dict``); version 2 on
    train_state   where the run was: ``TRAIN_STATE_KEYS`` (best.pt leaves out the optimizer)

``load`` rebuilds the model from ``config`` and ``model`` alone, so every version loads for
inference and as ``--weights``; only a run written with version 2 or later can be resumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from instaseg.core import io
from instaseg.core.errors import InstasegError
from instaseg.engine.config import TrainConfig
from instaseg.models import MODELS, model_entry
from instaseg.models.base import InstanceSegmenter

CHECKPOINT_FORMAT = "instaseg-checkpoint"
CHECKPOINT_VERSION = 2
# The oldest version a run can be resumed from: version 1 did not record the training config.
RESUMABLE_SINCE = 2
# What last.pt must hold to resume from; best.pt holds the same but the optimizer.
TRAIN_STATE_KEYS = frozenset(
    {"iteration", "epoch", "batch_in_epoch", "elapsed", "best_map", "history", "rng", "scaler", "optimizer"}
)


def make_checkpoint(
    *,
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    train_config: TrainConfig,
    train_state: dict[str, Any],
) -> dict[str, Any]:
    """A checkpoint of the current version (see the module docstring for its parts)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config,
        "model": weights,
        "train_config": train_config.to_dict(),
        "train_state": train_state,
    }


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint`` atomically: a kill at any moment leaves the previous file intact."""
    with io.atomic_path(path, overwrite=True) as tmp:
        torch.save(checkpoint, tmp)
    return Path(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ``.pt`` file (any tensor dict), reporting a missing or unreadable file as one line."""
    path = Path(path)
    if not path.is_file():
        raise InstasegError("checkpoint not found" if not path.exists() else "not a file", file=path)
    if path.stat().st_size == 0:
        raise InstasegError("not a readable PyTorch checkpoint (the file is empty)", file=path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt, truncated or foreign files
        text = str(exc).strip()
        reason = text.splitlines()[0][:200] if text else type(exc).__name__
        raise InstasegError(f"not a readable PyTorch checkpoint ({reason})", file=path) from None


def checkpoint_config(checkpoint: Any, path: str | Path) -> dict[str, Any]:
    """The config of an instaseg checkpoint, refusing any other file or one whose parts are malformed."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise InstasegError(
            "not an instaseg checkpoint (a plain state dict can be used with `instaseg train --weights`)", file=path
        )
    check_version(checkpoint, path)
    config, weights = checkpoint.get("config"), checkpoint.get("model")
    well_formed = (
        isinstance(config, dict)
        and isinstance(config.get("model"), str)
        and isinstance(config.get("kwargs"), dict)
        and isinstance(config.get("class_names"), list)
        and all(isinstance(name, str) for name in config["class_names"])
        and isinstance(weights, dict)
        and all(isinstance(tensor, torch.Tensor) for tensor in weights.values())
    )
    if not well_formed or not isinstance(config, dict):  # the second test tells the type checker
        raise InstasegError(
            "not a usable instaseg checkpoint (its config or weights are missing or malformed)", file=path
        )
    if config["model"] not in MODELS:
        raise InstasegError(f"not a usable instaseg checkpoint: unknown model {config['model']!r}", file=path)
    return config


def check_version(checkpoint: dict[str, Any], path: str | Path) -> int:
    """The format version of an instaseg checkpoint, refusing one this instaseg cannot read."""
    version = checkpoint.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InstasegError(f"not a usable instaseg checkpoint (format version {version!r})", file=path)
    if version > CHECKPOINT_VERSION:
        raise InstasegError(
            f"written by a newer instaseg (checkpoint format version {version}; this one reads versions up to "
            f"{CHECKPOINT_VERSION}); upgrade instaseg to use it",
            file=path,
        )
    return version


def resume_point(checkpoint: dict[str, Any], path: str | Path) -> tuple[dict[str, Any], TrainConfig]:
    """The model config and the ``TrainConfig`` a run resumes with, refusing a checkpoint that cannot continue."""
    config = checkpoint_config(checkpoint, path)
    version = check_version(checkpoint, path)
    if version < RESUMABLE_SINCE:
        raise InstasegError(
            f"written by an older instaseg (checkpoint format version {version}), which did not record the "
            "training config: it can start a new run with --weights, not be resumed",
            file=path,
        )
    state = checkpoint.get("train_state")
    if not isinstance(state, dict) or not TRAIN_STATE_KEYS <= state.keys():
        raise InstasegError("holds no complete training state to resume from", file=path)
    recorded = checkpoint.get("train_config")
    if not isinstance(recorded, dict):
        raise InstasegError("not a usable instaseg checkpoint (its training config is missing)", file=path)
    try:
        train_config = TrainConfig.from_dict(recorded)
    except (InstasegError, TypeError) as exc:
        raise InstasegError(f"not a usable instaseg checkpoint (its training config: {exc})", file=path) from None
    return config, train_config


def state_dict_of(stored: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: an instaseg checkpoint's, or a state dict (torchvision style,
    optionally under a ``"model"`` or ``"state_dict"`` key, ``module.`` prefixes dropped)."""
    if isinstance(stored, dict) and stored.get("format") == CHECKPOINT_FORMAT:
        check_version(stored, path)
        stored = stored.get("model")
    elif isinstance(stored, dict):
        stored = stored.get("model", stored.get("state_dict", stored))
    if not isinstance(stored, dict) or not all(isinstance(v, torch.Tensor) for v in stored.values()):
        raise InstasegError("not a state dict of tensors", file=path)
    return {k.removeprefix("module."): v for k, v in stored.items()}


def load_weights(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Copy every tensor of ``path`` whose name and shape fit ``model``; returns what was not loaded.

    ``path`` is an instaseg checkpoint or a state dict (see ``state_dict_of``). Returns lines
    describing the model's tensors left at their initialisation (e.g. class-specific heads when
    the class count differs).
    """
    stored = state_dict_of(read_checkpoint(path), path)
    own = model.state_dict()
    fitting = {k: v for k, v in stored.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise InstasegError("no tensor in the file fits this model; is it another architecture?", file=path)
    model.load_state_dict(fitting, strict=False)
    not_loaded = []
    for name, tensor in own.items():
        if name in fitting or name.endswith("num_batches_tracked"):  # a step counter, not a weight
            continue
        if name in stored:
            not_loaded.append(f"{name} (shape {tuple(stored[name].shape)} in file, {tuple(tensor.shape)} in model)")
        else:
            not_loaded.append(f"{name} (not in file)")
    return not_loaded


def model_from_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> tuple[InstanceSegmenter, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights; returns (model, config)."""
    config = checkpoint_config(checkpoint, path)
    # The stored arguments already include the preset's; build with exactly those.
    try:
        model = model_entry(config["model"]).builder(num_classes=len(config["class_names"]), **config["kwargs"])
    except (TypeError, ValueError) as exc:
        raise InstasegError(
            f"not a usable instaseg checkpoint: its arguments do not build {config['model']} ({exc})", file=path
        ) from None
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise InstasegError(f"weights do not fit {config['model']} ({str(exc).splitlines()[0]})", file=path) from None
    return model, config
