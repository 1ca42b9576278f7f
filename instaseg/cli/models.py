"""CLI verb ``models``: the registered architectures."""

from __future__ import annotations

import typer


def models(
    num_classes: int = typer.Option(80, "--num-classes", help="Class count the parameter counts assume."),
) -> None:
    """List the model architectures with their backbones, parameter counts and measured results."""
    from rich.console import Console
    from rich.table import Table

    from instaseg.core.errors import InstasegError
    from instaseg.models import DEFAULT_MODEL, MODELS, count_parameters, list_models

    if num_classes < 1:
        raise InstasegError(f"--num-classes must be at least 1, not {num_classes}")
    table = Table(title=f"Mask R-CNN models (parameters for {num_classes} classes; presets: cpu, gpu, small)")
    table.add_column("name", no_wrap=True)
    table.add_column("params cpu", no_wrap=True, justify="right")
    table.add_column("params gpu", no_wrap=True, justify="right")
    table.add_column("about", overflow="fold")
    for name in list_models():
        entry = MODELS[name]
        measured = "; ".join(f"{k}: {v}" for k, v in entry.metrics.items())
        table.add_row(
            name + (" *" if name == DEFAULT_MODEL else ""),
            f"{count_parameters(name, num_classes, 'cpu') / 1e6:.1f} M",
            f"{count_parameters(name, num_classes, 'gpu') / 1e6:.1f} M",
            entry.description + (f" ({measured})" if measured else ""),
        )
    table.caption = "* default. cpu preset: BatchNorm backbone, lighter heads; gpu: GroupNorm, paper sizes."
    Console().print(table)
