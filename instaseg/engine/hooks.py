"""Hooks: what a training run does around its steps, in the style of detectron2's ``HookBase``.

The loop (``instaseg.engine.train.Trainer``) only builds, steps and decides when to stop; everything
else is a hook called at fixed points, in the order the hooks were given:

* ``before_train``: once, after the model, optimizer and data are built (and a resume restored);
* ``after_step``: after every optimizer step, once the trainer has counted it, moved on to the
  next epoch if this one ended (``trainer.end_of_epoch``) and decided whether to stop
  (``trainer.stopping``, which a hook may set);
* ``after_epoch``: after ``after_step`` when the step ended an epoch;
* ``after_train``: once, after the last step.

Every process of a data-parallel run calls every hook; a hook that writes files or reports
progress does so on the main process only (``trainer.main``). A hook that runs a collective
operation (``trainer.broadcast``) must run it on every process in the same order.

The standard hooks, in their order: ``StepMetrics`` (averaged losses into the history and as
``events.metrics``, progress as ``events.Progress``), ``Validation`` (mask and box mAP, best.pt),
``LastCheckpoint`` (last.pt) and ``MetricsFiles`` (metrics.jsonl and curves.png).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch.distributed as dist

from instaseg.core import events, io

if TYPE_CHECKING:
    from instaseg.engine.train import Trainer

# Losses are averaged over this many steps before they are logged and reported.
LOG_EVERY = 10


class HookBase:
    """Does nothing at every point; subclass and override the points you need.

    ``self.trainer`` is set when the run starts; read the run's state from it (``iteration``,
    ``epoch``, ``model``, ``history``, ``config``, ...).
    """

    trainer: Trainer

    def before_train(self) -> None:
        """Once, before the first step."""

    def after_step(self) -> None:
        """After every optimizer step."""

    def after_epoch(self) -> None:
        """After the step that ended an epoch (after ``after_step``)."""

    def after_train(self) -> None:
        """Once, after the last step."""


class StepMetrics(HookBase):
    """The training losses, averaged over ``LOG_EVERY`` steps, into the history and as events; step progress.

    Emits ``events.Progress("train", iteration, total)`` (``total`` None with a time budget only) and,
    on the first and every ``LOG_EVERY``-th step, ``events.metrics("train", iteration, loss=..., lr=...)``.
    """

    def __init__(self) -> None:
        self.window: list[dict[str, float]] = []

    def before_train(self) -> None:
        self._progress()

    def after_step(self) -> None:
        trainer = self.trainer
        self.window.append(trainer.step_losses)
        if trainer.iteration % LOG_EVERY == 0 or trainer.iteration == 1:
            row = {k: float(np.mean([w[k] for w in self.window])) for k in self.window[0]}
            self.window.clear()
            record = {
                "iteration": trainer.iteration,
                "epoch": trainer.step_epoch + 1,
                **row,
                "lr": trainer.learning_rate(),
                "elapsed": round(trainer.elapsed(), 1),
            }
            trainer.history.append(record)
            if trainer.main:
                events.metrics("train", trainer.iteration, **{k: v for k, v in record.items() if k != "iteration"})
        self._progress()

    def after_train(self) -> None:
        self._progress(finished=True)

    def _progress(self, finished: bool = False) -> None:
        trainer = self.trainer
        if trainer.main:
            events.emit(events.Progress("train", trainer.iteration, trainer.total_steps, "it", finished=finished))


class Validation(HookBase):
    """Mask and box mAP on the validation set (by the main process) when due; keeps best.pt at the best mask mAP.

    Due every ``val_every`` epochs (default 1) or, with a time budget, every ``val_every`` minutes
    (default an eighth of the budget), and always at the end. Reports ``events.metrics("validation",
    iteration, mask_mAP=..., mask_mAP50=..., box_mAP=...)`` and one ``events.info`` line. A run
    without validation data, or whose validations never made a best.pt, ends with best.pt = its last weights.
    """

    def before_train(self) -> None:
        self.trainer.last_val_time = self.trainer.elapsed()

    def after_step(self) -> None:
        trainer = self.trainer
        trainer.validated = trainer.stopping or self._due()
        if trainer.validated:
            self.validate()
            # A validation that used up the budget has just judged the final weights: stop here
            # rather than train one more step and validate them again.
            trainer.stopping = trainer.stopping or trainer.should_stop()

    def _due(self) -> bool:
        trainer, config = self.trainer, self.trainer.config
        if trainer.val_set is None:
            return False
        if config.minutes is not None:
            interval = (config.val_every if config.val_every is not None else config.minutes / 8) * 60
            due = trainer.elapsed() - trainer.last_val_time >= interval
        else:
            due = trainer.end_of_epoch and trainer.epoch % max(1, round(config.val_every or 1)) == 0
        return bool(trainer.broadcast(float(due)))

    def validate(self) -> None:
        """Evaluate the current weights on the validation set; save best.pt when they are the best yet."""
        trainer = self.trainer
        if trainer.val_set is None:
            return
        started = trainer.elapsed()
        if trainer.main:
            from instaseg.engine.predictor import Predictor
            from instaseg.evaluation import evaluate

            predictor = Predictor(trainer.model, trainer.class_names, device=trainer.device)
            predictions = predictor.iter_dataset(trainer.val_set, score_threshold=0.05)
            result = evaluate(trainer.val_set, predictions, ("segm", "bbox"), errors=False)
            mask_map, box_map = result.stat("AP", "segm"), result.stat("AP", "bbox")
            values = {"mask_mAP": mask_map, "mask_mAP50": result.stat("AP50", "segm"), "box_mAP": box_map}
            trainer.history.append(
                {
                    "iteration": trainer.iteration,
                    "epoch": trainer.epoch,
                    **{f"val_{k}": v for k, v in values.items()},
                    "elapsed": round(trainer.elapsed(), 1),
                }
            )
            events.metrics("validation", trainer.iteration, **values)
            events.info(
                f"validation after {trainer.iteration} iterations: mask mAP {mask_map:.3f}, box mAP {box_map:.3f}"
            )
            if mask_map > trainer.best_map:
                trainer.best_map = mask_map
                trainer.save("best.pt", with_optimizer=False)
        trainer.val_seconds = trainer.elapsed() - started
        trainer.last_val_time = trainer.elapsed()
        if trainer.world > 1:
            dist.barrier()

    def after_train(self) -> None:
        trainer = self.trainer
        if trainer.main and (trainer.val_set is None or not (trainer.out / "best.pt").exists()):
            trainer.save("best.pt", with_optimizer=False)


class LastCheckpoint(HookBase):
    """last.pt (with the optimizer, to resume from) after each validation and epoch, and every
    ``checkpoint_every`` iterations."""

    def after_step(self) -> None:
        if self.trainer.save_due():
            self.trainer.save("last.pt", with_optimizer=True)


class MetricsFiles(HookBase):
    """metrics.jsonl (one JSON object per logged step and per validation) and curves.png, written
    with each last.pt and at the end."""

    def after_step(self) -> None:
        if self.trainer.save_due():
            self.write()

    def after_train(self) -> None:
        self.write()

    def write(self) -> None:
        """Rewrite both files from the run's history (main process only)."""
        trainer = self.trainer
        if not trainer.main:
            return
        lines = "".join(io.dumps_json(row).decode() + "\n" for row in trainer.history)
        io.write_text(trainer.out / "metrics.jsonl", lines, overwrite=True)
        io.write_bytes(trainer.out / "curves.png", plot_curves(trainer.history), overwrite=True)


def default_hooks() -> list[HookBase]:
    """The standard hooks of a run, in the order they must run (see the module docstring)."""
    return [StepMetrics(), Validation(), LastCheckpoint(), MetricsFiles()]


def plot_curves(history: list[dict]) -> bytes:
    """A PNG of the training losses and the validation mAP against iterations."""
    import io as bytes_io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    steps = [r for r in history if "loss" in r]
    vals = [r for r in history if "val_mask_mAP" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"):
        if steps and key in steps[0]:
            left.plot([r["iteration"] for r in steps], [r[key] for r in steps], label=key, lw=2 if key == "loss" else 1)
    left.set(xlabel="iteration", ylabel="loss", yscale="log", title="training losses")
    left.legend(fontsize=7)
    if vals:
        its = [r["iteration"] for r in vals]
        right.plot(its, [r["val_mask_mAP"] for r in vals], "o-", label="mask mAP@[.5:.95]")
        right.plot(its, [r["val_mask_mAP50"] for r in vals], "s--", label="mask mAP@.5")
        right.plot(its, [r["val_box_mAP"] for r in vals], "^:", label="box mAP@[.5:.95]")
        right.legend(fontsize=7)
    right.set(xlabel="iteration", ylabel="mAP", ylim=(0, 1), title="validation")
    fig.tight_layout()
    buffer = bytes_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
