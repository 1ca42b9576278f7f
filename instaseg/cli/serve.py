"""CLI verb ``serve``: one trained model over HTTP, without a project."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from instaseg.app.settings import AppSettings

MIB = 1024 * 1024


def serve(
    model: Annotated[Path, typer.Argument(help="Checkpoint file (best.pt or last.pt of `instaseg train`).")],
    host: Annotated[str, typer.Option(help="Address to serve on; off loopback a token is required.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8000,
    max_upload_mb: Annotated[int, typer.Option(min=1, help="Largest image upload accepted, in MiB.")] = (
        AppSettings.max_upload_bytes // MIB
    ),
    per_minute: Annotated[
        int, typer.Option(min=1, help="Predictions one client may request per minute.")
    ] = AppSettings.predict_per_minute,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="INSTASEG_SERVE_TOKEN",
            help="Requests must send `Authorization: Bearer TOKEN` (required off loopback).",
        ),
    ] = None,
) -> None:
    """Serve one model over HTTP: POST /api/predict, GET /api/health, the API at /docs."""
    import uvicorn

    from instaseg.app.serving import create_serve_app

    app = create_serve_app(model, host=host, token=token, max_upload_bytes=max_upload_mb * MIB, per_minute=per_minute)
    typer.echo(f"instaseg serve: {model} at http://{host}:{port}/api/predict (API at http://{host}:{port}/docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
