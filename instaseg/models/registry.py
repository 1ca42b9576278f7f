"""The model registry: a plain dict from name to builder plus the metadata shown by ``instaseg models``.

In the style of torchvision and timm, a model module registers each architecture with the
``@register_model`` decorator; ``get_model(name, num_classes, **kw)`` builds one. Every entry carries
its presets (keyword-argument sets such as a CPU-friendly one) and the metrics measured with it,
so the table that ``instaseg models`` prints is the single place to compare architectures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from instaseg.core.errors import InstasegError
from instaseg.models.base import InstanceSegmenter


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture.

    Attributes:
        name: the name users pass to ``--model``.
        builder: keyword-only callable ``builder(*, num_classes, **kw) -> InstanceSegmenter``.
        description: one line for the models table.
        backbone: the backbone's name, for the models table.
        presets: named keyword-argument sets; ``"cpu"`` and ``"gpu"`` are the device defaults.
        metrics: measured results, e.g. ``{"synthetic mask mAP": "0.61 (10 min, 2 CPU cores)"}``.
    """

    name: str
    builder: Callable[..., InstanceSegmenter]
    description: str
    backbone: str
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)


MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    description: str,
    backbone: str,
    presets: dict[str, dict[str, Any]],
    metrics: dict[str, str] | None = None,
) -> Callable[[Callable[..., InstanceSegmenter]], Callable[..., InstanceSegmenter]]:
    """Decorator adding a keyword-only builder to ``MODELS`` under ``name``."""

    def register(builder: Callable[..., InstanceSegmenter]) -> Callable[..., InstanceSegmenter]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = ModelEntry(name, builder, description, backbone, presets, dict(metrics or {}))
        return builder

    return register


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(MODELS)


def model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; an unknown name is a one-line error listing the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise InstasegError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None


def default_preset() -> str:
    """ "gpu" when CUDA is available, else the lighter "cpu" preset."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def resolve_config(name: str, preset: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The full keyword arguments for ``name``: the preset's values, then ``overrides`` on top."""
    entry = model_entry(name)
    preset = preset or default_preset()
    if preset not in entry.presets:
        raise InstasegError(f"model {name!r} has no preset {preset!r}; available: {', '.join(entry.presets)}")
    return {**entry.presets[preset], **overrides}


def get_model(name: str, num_classes: int, *, preset: str | None = None, **kw: Any) -> InstanceSegmenter:
    """Build ``name`` with random weights for ``num_classes`` object classes (background excluded).

    Args:
        name: a name from ``list_models()``.
        num_classes: number of object classes.
        preset: a preset of the entry (default: "gpu" with CUDA, else "cpu").
        **kw: builder arguments overriding the preset's.
    """
    return model_entry(name).builder(num_classes=num_classes, **resolve_config(name, preset, **kw))


def count_parameters(name: str, num_classes: int = 80, preset: str | None = None) -> int:
    """Parameter count of ``name``, measured without allocating weights (built on the meta device)."""
    with torch.device("meta"):
        model = get_model(name, num_classes, preset=preset)
    return sum(p.numel() for p in model.parameters())
