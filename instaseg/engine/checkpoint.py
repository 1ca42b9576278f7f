"""The checkpoint format: ``save_checkpoint`` / ``read_checkpoint`` and rebuilding the model a checkpoint holds.

A checkpoint is a ``torch.save`` dict holding the model's weights, the exact builder arguments and
the class names, so ``load`` rebuilds the model without any other file. It contains only tensors
and plain Python values, so it is read with ``weights_only=True`` (no code runs on load).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from instaseg.core import io
from instaseg.core.errors import InstasegError
from instaseg.models import MODELS, model_entry

CHECKPOINT_FORMAT = "instaseg-checkpoint"


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
    if not well_formed:
        raise InstasegError(
            "not a usable instaseg checkpoint (its config or weights are missing or malformed)", file=path
        )
    if config["model"] not in MODELS:
        raise InstasegError(f"not a usable instaseg checkpoint: unknown model {config['model']!r}", file=path)
    return config


def model_from_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
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
