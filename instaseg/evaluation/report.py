"""The evaluation report on disk: metrics.json, precision-recall curves, the confusion matrix and error tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from instaseg.core import io
from instaseg.evaluation.breakdown import ERROR_KINDS, MATCH_IOU, ErrorBreakdown
from instaseg.evaluation.metric import EvalResult


def write_report(result: EvalResult, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``metrics.json``, precision-recall curves, the confusion matrix and the error tables to ``out``.

    Files: ``metrics.json`` (``EvalResult.to_dict``), ``pr_<iou type>_iou50.png``, ``..._iou75.png``
    and ``..._iou50-95.png`` (one curve per class), and, with an error breakdown,
    ``confusion_matrix.png``, ``errors.json`` and ``errors.csv`` (per image, worst first). The
    folder appears complete or not at all.
    """
    with io.atomic_path(out, overwrite) as folder:
        folder.mkdir()
        io.write_json(folder / "metrics.json", result.to_dict(), indent=True)
        for iou_type, precision in result.precision.items():
            for label, curves in _pr_curve_sets(precision, result.iou_thresholds):
                io.write_bytes(
                    folder / f"pr_{iou_type}_iou{label}.png",
                    _plot_pr_curves(
                        curves, result.recall_thresholds, result.class_names, f"{iou_type}, IoU {_IOU_TITLES[label]}"
                    ),
                )
        if result.errors is not None:
            io.write_bytes(folder / "confusion_matrix.png", _plot_confusion(result.errors, result.class_names))
            io.write_json(folder / "errors.json", result.errors.to_dict(), indent=True)
            io.write_text(folder / "errors.csv", _errors_csv(result.errors))
    return Path(out)


_IOU_TITLES = {"50": "0.50", "75": "0.75", "50-95": "0.50:0.95 (mean)"}


def _pr_curve_sets(precision: np.ndarray, iou_thresholds: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(file label, R x K precision) at IoU 0.5, 0.75 and the mean over 0.50:0.95."""
    at = {label: int(np.argmin(abs(iou_thresholds - value))) for label, value in (("50", 0.5), ("75", 0.75))}
    # a class is -1 at every threshold (no ground truth) or at none, so the plain mean keeps -1 intact
    return [("50", precision[at["50"]]), ("75", precision[at["75"]]), ("50-95", precision.mean(0))]


def _figure_png(figure: Any) -> bytes:
    import io as bytes_io

    import matplotlib.pyplot as plt

    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _plot_pr_curves(curves: np.ndarray, recall: np.ndarray, class_names: list[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    drawn = 0
    for k, name in enumerate(class_names):
        if (curves[:, k] > -1).all():
            axes.plot(recall, curves[:, k], label=f"{name} (AP {curves[:, k].mean():.3f})", linewidth=1.2)
            drawn += 1
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"Precision-recall, {title}")
    axes.grid(alpha=0.3)
    if drawn == 0:
        axes.text(0.5, 0.5, "no class has ground truth", ha="center", va="center")
    elif drawn <= 30:  # beyond that a legend hides the plot; metrics.json has every number
        axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _figure_png(figure)


def _plot_confusion(errors: ErrorBreakdown, class_names: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*class_names, "background"]
    counts = errors.confusion
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)  # colour by row share, so rare classes show
    side = min(3 + 0.45 * len(labels), 30)
    figure, axes = plt.subplots(figsize=(side + 1.5, side))
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.set(xlabel="predicted class", ylabel="ground-truth class")
    axes.set_title(f"Confusion ({errors.iou_type} IoU >= {MATCH_IOU}, score >= {errors.score_threshold:g})")
    if len(labels) <= 25:
        for (row, column), value in np.ndenumerate(counts):
            if value:
                axes.text(column, row, str(value), ha="center", va="center", fontsize=7,
                          color="white" if share[row, column] > 0.6 else "black")  # fmt: skip
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the row")
    return _figure_png(figure)


def _errors_csv(errors: ErrorBreakdown) -> str:
    import csv
    import io as text_io

    columns = ["image_id", "file_name", "gt", "predictions", "true_positives", *ERROR_KINDS, "errors"]
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(errors.images)
    return buffer.getvalue()
