"""CLI verbs ``review`` (with ``review apply``) and ``noise``.

``instaseg review DATA ...`` runs a review and ``instaseg review apply REVIEW ...`` applies one:
the ``review`` group falls back to its ``run`` command when the first word is not a subcommand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from instaseg.cli.options import ImageFolder, Overwrite


class _RunByDefault(TyperGroup):
    """A group whose ``run`` command is used when the first argument names no subcommand."""

    # typer calls this with its public ``typer.Context``; the base class names the Context of the click
    # that typer vendors privately (``typer._click``), which this module should not import.
    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


review_app = typer.Typer(
    cls=_RunByDefault,
    no_args_is_help=True,
    help="Find label errors: instaseg review DATA (--model M | --pred P | --folds K); then instaseg review apply.",
)


@review_app.command("run")
def review_run(
    data: Annotated[
        Path, typer.Argument(help="Dataset to review: a COCO JSON, or any format `instaseg convert` reads.")
    ],
    model: Annotated[
        Path | None, typer.Option(help="Checkpoint that predicts every image (must not have trained on them).")
    ] = None,
    pred: Annotated[
        Path | None, typer.Option(help="Predictions: an `instaseg predict` folder or a COCO results JSON.")
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(min=2, help="Train K out-of-fold models, so no image is judged by a model that saw its labels."),
    ] = None,
    minutes_per_fold: Annotated[
        float, typer.Option(min=0.1, help="Training time of each fold model (with --folds).")
    ] = 5.0,
    epochs_per_fold: Annotated[
        int | None, typer.Option(min=1, help="Epochs of each fold model, instead of a time budget.")
    ] = None,
    arch: Annotated[str | None, typer.Option(help="Architecture of the fold models (default: the trainer's).")] = None,
    preset: Annotated[
        str | None, typer.Option(help="Preset of the fold models: cpu, gpu or small (images of 128-256 px).")
    ] = None,
    crop_size: Annotated[
        int | None,
        typer.Option(help="Fold models train on random crops of this many pixels (large images, small objects)."),
    ] = None,
    flips: Annotated[
        str,
        typer.Option(
            help="Random flips of the fold models' training images: horizontal, or all (images with no up: microscopy, aerial views)."
        ),
    ] = "horizontal",
    photometric: Annotated[
        str,
        typer.Option(
            help="Random colour changes of the fold models' training images: jitter, or all (also grey and inverted: stained and fluorescent cells in one dataset)."
        ),
    ] = "jitter",
    processes: Annotated[
        int, typer.Option(min=1, help="Each fold model trains as this many CPU processes (2 on a 2-core machine).")
    ] = 1,
    out: Annotated[Path | None, typer.Option(help="Report folder (default: review-<DATA name>).")] = None,
    images: ImageFolder = None,
    max_pictures: Annotated[
        int, typer.Option(min=0, help="Draw pictures for this many suggestions, worst first.")
    ] = 200,
    min_score: Annotated[float, typer.Option(min=0.0, max=1.0, help="Leave out suggestions scoring below this.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the fold split and training.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Rank suspected label errors (missing, extra, wrong class, bad mask, duplicate) with suggested fixes.

    OUT holds review.json, review.csv, report.html and pictures/ (label | suggested fix).
    """
    from instaseg.core import io
    from instaseg.data.convert import ReadOptions, open_dataset
    from instaseg.review import ReviewSettings, run_review

    target = out if out is not None else Path(f"review-{data.stem}")
    io.guard_outputs([target], [data, model, pred], [images or data])
    dataset = open_dataset(data, options=ReadOptions(images=images), outputs=[target])
    document = run_review(
        dataset,
        out=target,
        model=model,
        pred=pred,
        folds=folds,
        minutes_per_fold=None if epochs_per_fold else minutes_per_fold,
        epochs_per_fold=epochs_per_fold,
        architecture=arch,
        preset=preset,
        crop_size=crop_size,
        flips=flips,
        photometric=photometric,
        processes=processes,
        max_pictures=max_pictures,
        seed=seed,
        settings=ReviewSettings(min_score=min_score),
        overwrite=overwrite,
    )
    counts = ", ".join(f"{n} {t}" for t, n in document["counts"].items() if n) or "no suggestions"
    typer.echo(f"{len(document['suggestions'])} suggestions ({counts})")
    for s in document["suggestions"][:10]:
        where = f"annotation {s['annotation_id']}" if s["annotation_id"] is not None else f"new {s['suggested_class']}"
        typer.echo(f"  #{s['id']:<4} {s['score']:.2f}  {s['type']:<13} {s['file_name']}  {where}")
    typer.echo(f"wrote {target}/report.html")


@review_app.command("apply")
def review_apply(
    review: Annotated[Path, typer.Argument(help="review.json (or the review folder) written by `instaseg review`.")],
    out: Annotated[Path, typer.Option(help="Corrected COCO JSON to write.")],
    accept: Annotated[str, typer.Option(help="Suggestions to apply: ids like 3,7,10-12, 'all', or 'all-above SCORE'.")],
    reject: Annotated[str | None, typer.Option(help="Suggestion ids never to apply, e.g. 4,9.")] = None,
    data: Annotated[Path | None, typer.Option(help="Apply to this COCO JSON instead of the reviewed one.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Write the dataset with the accepted suggestions applied; everything else stays exactly as it was."""
    from instaseg.core import io
    from instaseg.review import apply_review_file
    from instaseg.review.apply import parse_accept, parse_ids

    io.guard_outputs([out], [review, data])
    io.check_output(out, overwrite)
    ids, above = parse_accept(accept)
    fixed, changes = apply_review_file(review, accept=ids, accept_above=above, reject=parse_ids(reject), data=data)
    io.guard_outputs([out], [fixed.source], [fixed.image_root])  # the reviewed dataset, when --data did not name it
    fixed.save(out, overwrite=overwrite, record_image_root=True)
    for change in changes:
        detail = change.get("reason") or (f"category {change['from']} -> {change['to']}" if "to" in change else "")
        typer.echo(
            f"  #{change['suggestion']:<4} {change['type']:<13} image {change['image_id']}  "
            f"annotation {change['annotation_id']}: {change['action']}" + (f" ({detail})" if detail else "")
        )
    applied = sum(c["action"] != "skipped" for c in changes)
    typer.echo(f"applied {applied} of {len(changes)} accepted suggestions; wrote {out}")


def noise(
    data: Annotated[Path, typer.Argument(help="Clean dataset: a COCO JSON, or any format `instaseg convert` reads.")],
    out: Annotated[Path, typer.Option(help="Noisy COCO JSON to write (the list of errors goes beside it).")],
    rates: Annotated[
        str | None,
        typer.Option(help="Error rates, e.g. 'missing=0.1,extra=0.1,wrong_class=0.05,bad_mask=0.1,duplicate=0.03'."),
    ] = None,
    images: ImageFolder = None,
    seed: Annotated[int, typer.Option(help="The same seed gives the same errors.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Inject known label errors into a dataset; the list of errors goes beside OUT as <OUT>.errors.json."""
    from instaseg.core import io
    from instaseg.data.convert import ReadOptions, open_dataset
    from instaseg.review import inject_noise

    errors_path = out.with_name(f"{out.stem}.errors.json")
    io.guard_outputs([out, errors_path], [data], [images or data])
    io.check_output(out, overwrite)
    io.check_output(errors_path, overwrite)
    noisy, injected = inject_noise(
        open_dataset(data, options=ReadOptions(images=images), outputs=[out, errors_path]),
        **_parse_rates(rates),
        seed=seed,
    )
    noisy.save(out, overwrite=overwrite, record_image_root=True)
    io.write_json(errors_path, injected, overwrite=overwrite, indent=True)
    counts = {t: sum(e["type"] == t for e in injected) for t in dict.fromkeys(e["type"] for e in injected)}
    typer.echo(f"injected {len(injected)} errors ({', '.join(f'{n} {t}' for t, n in counts.items()) or 'none'})")
    typer.echo(f"wrote {out} and {errors_path}")


def _parse_rates(text: str | None) -> dict[str, float]:
    from instaseg.core.errors import InstasegError

    names = ("missing", "extra", "wrong_class", "bad_mask", "duplicate")
    rates: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        name = name.strip().replace("-", "_")
        if name not in names:
            raise InstasegError(f"unknown error type {name!r} in --rates; known: {', '.join(names)}")
        try:
            rates[name] = float(value)
        except ValueError:
            raise InstasegError(f"cannot read rate {part.strip()!r} in --rates (expected e.g. missing=0.1)") from None
    return rates
