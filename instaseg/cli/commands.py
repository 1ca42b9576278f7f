"""The ``instaseg`` command: its verbs in pipeline order, and one-line errors.

Errors in the user's input arrive here as ``InstasegError`` and leave as one line on stderr with
exit status 2; Python warnings leave as one ``warning:`` line each.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator

import typer
from typer.core import TyperGroup

from instaseg.cli import app as app_verb
from instaseg.cli import check, data, evaluate, export, models, predict, review, serve, train, users, worker
from instaseg.cli.progress import ConsoleListener
from instaseg.core import events
from instaseg.core.errors import InstasegError

# The order ``instaseg --help`` lists the verbs in: the pipeline's.
PIPELINE_ORDER = (
    "convert",
    "check",
    "stats",
    "show",
    "synth",
    "models",
    "train",
    "quickstart",
    "predict",
    "eval",
    "review",
    "noise",
    "export",
    "app",
    "users",
    "worker",
    "serve",
)


class _InPipelineOrder(TyperGroup):
    """Lists the verbs in ``PIPELINE_ORDER``; typer would list groups (``review``) after every command."""

    def list_commands(self, ctx: typer.Context) -> list[str]:  # type: ignore[override]  # typer's bundled click Context
        known = [name for name in PIPELINE_ORDER if name in self.commands]
        return known + [name for name in self.commands if name not in PIPELINE_ORDER]


app = typer.Typer(
    cls=_InPipelineOrder,
    name="instaseg",
    help="Instance segmentation toolkit: data, models, metric and label review, offline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Verbs in the order of the pipeline: data, models, training, prediction, the metric, the review, export.
for verb in (
    data.convert,
    check.check,
    check.stats,
    check.show,
    data.synth,
    models.models,
    train.train,
    train.quickstart,
    predict.predict,
):
    app.command()(verb)
app.command("eval")(evaluate.eval_command)
app.add_typer(review.review_app, name="review")
app.command()(review.noise)
app.command()(export.export)
app.command("app")(app_verb.app)
app.add_typer(users.users_app, name="users")
app.command()(worker.worker)
app.command()(serve.serve)

EXIT_INPUT_ERROR = 2


def main(argv: list[str] | None = None) -> None:
    """Entry point: run ``app`` and turn every failure into a one-line message and an exit status."""
    console = ConsoleListener()
    try:
        with _one_line_warnings(), events.listen(console):
            app(args=argv, prog_name="instaseg")
    except InstasegError as exc:
        # A value quoted from the user's file may hold line breaks; the message stays one line.
        print(f"error: {exc}".replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug of ours: still one line, with the way to the traceback
        if os.environ.get("INSTASEG_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"error: unexpected {type(exc).__name__}: {message} (set INSTASEG_DEBUG=1 to see the traceback)",
            file=sys.stderr,
        )
        sys.exit(3)
    finally:
        console.close()


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Show Python warnings as ``warning: <message>``: the source line that raised one means nothing to users."""
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        yield
    finally:
        warnings.showwarning = shown


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)
