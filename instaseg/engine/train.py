"""Training: ``train(TrainConfig(epochs=... | minutes=...), train_set, val_set, out=...)``.

One loop serves a laptop CPU, a GPU (with mixed precision) and several processes under
``torchrun`` or ``processes=N`` (DistributedDataParallel: gloo on CPU, NCCL on GPU; only rank 0
writes files and reports events; with ``processes`` the parent process re-emits them).

A run reads top to bottom in ``Trainer.run``: build (model, optimizer, data), resume, loop (steps
until the schedule ends), with validation and saving done by hooks (``instaseg.engine.hooks``).
The out folder receives ``last.pt`` (every epoch, and every ``checkpoint_every`` iterations),
``best.pt`` (best validation mask mAP), ``metrics.jsonl`` (one JSON object per logged step and per
validation) and ``curves.png`` (losses and mAP). Checkpoints carry the training config, the
optimizer, the schedule position and the RNG state, so ``resume=True`` continues exactly where
``last.pt`` was written.

The learning rate follows a linear warmup then a cosine decay over the run; with a time budget
(``minutes``) the decay follows the elapsed fraction of the budget, so a run always ends at a low
learning rate, whatever the machine's speed. The warmup ends after ``WARMUP_ITERS`` iterations or
a tenth of the run, whichever comes first: a short run (a few epochs, or minutes on a CPU) that
warmed up for longer would decay before ever reaching the peak.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import socket
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from instaseg.core import events
from instaseg.core.errors import InstasegError
from instaseg.data import Dataset
from instaseg.engine.checkpoint import load_weights, make_checkpoint, read_checkpoint, resume_point, save_checkpoint
from instaseg.engine.config import TrainConfig
from instaseg.engine.data import TrainingImages, check_training_data, collate, epoch_batches, training_object_sizes
from instaseg.engine.hooks import HookBase, default_hooks
from instaseg.engine.predictor import auto_device
from instaseg.models import model_entry
from instaseg.models.base import InstanceSegmenter
from instaseg.models.registry import default_preset

OUTPUT_FILES = ("best.pt", "last.pt", "metrics.jsonl", "curves.png")
WARMUP_ITERS = 100
WARMUP_FRACTION = 0.1


def train(
    config: TrainConfig,
    train_set: Dataset,
    val_set: Dataset | None = None,
    *,
    out: str | Path = "runs/train",
    overwrite: bool = False,
    resume: bool = False,
    resume_anyway: bool = False,
    hooks: Sequence[HookBase] = (),
) -> Path:
    """Train an instance segmentation model as ``config`` says and return the path of its best checkpoint.

    Args:
        config: the recipe; it must give a length (``epochs`` or ``minutes``).
        train_set: the training images and annotations.
        val_set: validation data; the best checkpoint is chosen by its mask mAP@[.5:.95].
        out: folder for checkpoints, logs and curves.
        overwrite: replace an earlier run's files in ``out``.
        resume: continue the run in ``out`` from its ``last.pt``, with the model and augmentation
            it recorded (``TrainConfig.resumed_from``); the length, batch size and learning rate
            are ``config``'s. Refused when the training images are not the ones the run recorded
            (their SHA-1s), unless ``resume_anyway``.
        resume_anyway: resume (as ``resume``) even on other training images than the run's.
        hooks: run after the standard hooks at each point (see ``instaseg.engine.hooks``); with
            ``config.processes`` above 1 they are pickled into every process.
    """
    if config.epochs is None and config.minutes is None:
        raise InstasegError("give a training length: --epochs N or --minutes M")
    out = Path(out)
    resume = resume or resume_anyway
    check_training_data(train_set, val_set)
    if config.processes != 1:
        return _train_in_processes(
            config,
            train_set,
            val_set,
            out=out,
            overwrite=overwrite,
            resume=resume,
            resume_anyway=resume_anyway,
            hooks=hooks,
        )
    return _train_this_process(
        config,
        train_set,
        val_set,
        out=out,
        overwrite=overwrite,
        resume=resume,
        resume_anyway=resume_anyway,
        hooks=hooks,
    )


def earlier_run_files(out: Path, overwrite: bool) -> list[Path]:
    """The files of an earlier run in ``out`` that a new run replaces; refused unless ``overwrite``."""
    clashes = [out / name for name in OUTPUT_FILES if (out / name).exists()]
    if clashes and not overwrite:
        raise InstasegError("holds an earlier run; pass --overwrite to replace it or --resume to continue", file=out)
    return clashes


def resume_checkpoint(out: Path, train_set: Dataset, anyway: bool = False) -> tuple[dict[str, Any], TrainConfig]:
    """``out``'s last.pt and the ``TrainConfig`` it recorded, refused when it cannot continue on
    ``train_set``: other classes, or other images than the SHA-1s it records (unless ``anyway``)."""
    last = out / "last.pt"
    if not last.exists():
        raise InstasegError("nothing to resume: no last.pt", file=out)
    checkpoint = read_checkpoint(last)
    config, recorded = resume_point(checkpoint, last)
    if config["class_names"] != list(train_set.class_names):
        raise InstasegError(
            f"last.pt was trained on classes {config['class_names']}, this data has {train_set.class_names}", file=last
        )
    if not anyway:
        known = set(config.get("train_image_sha1", []))
        current = {train_set.image_sha1(image) for image in train_set.images}
        new, gone = len(current - known), len(known - current)
        if new or gone:
            raise InstasegError(
                f"the run trained on other images: {new} of these {len(current)} training images are not among its "
                f"{len(known)}, and {gone} of its images are not among these; pass --resume-anyway to continue",
                file=last,
            )
    return checkpoint, recorded


def usable_cores() -> int:
    """The cores this process may use (a container's CPU set), not all the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class _Start:
    """How a process starts its part of the run: fresh (replacing ``clashes``) or from ``resumed``."""

    config: TrainConfig
    resumed: dict[str, Any] | None
    clashes: list[Path]


def _plan(
    config: TrainConfig, train_set: Dataset, out: Path, *, overwrite: bool, resume: bool, resume_anyway: bool
) -> _Start:
    """Read the checkpoint to resume from, or find the earlier run's files to replace; changes nothing."""
    if resume:
        checkpoint, recorded = resume_checkpoint(out, train_set, resume_anyway)
        return _Start(config.resumed_from(recorded), checkpoint, [])
    # The preset a run builds with is recorded, so a resume elsewhere builds the same model.
    return _Start(config.replace(preset=config.preset or default_preset()), None, earlier_run_files(out, overwrite))


def _train_this_process(
    config: TrainConfig,
    train_set: Dataset,
    val_set: Dataset | None,
    *,
    out: Path,
    overwrite: bool,
    resume: bool,
    resume_anyway: bool,
    hooks: Sequence[HookBase],
) -> Path:
    """This process's part of the run: all of it, or one rank's under torchrun or ``processes``."""
    started = time.monotonic()  # the budget counts the setup too: users time the whole command
    start = _plan(config, train_set, out, overwrite=overwrite, resume=resume, resume_anyway=resume_anyway)
    rank, world, device = _setup_distributed()
    try:
        trainer = Trainer(
            start.config,
            train_set,
            val_set,
            out=out,
            rank=rank,
            world=world,
            device=device,
            hooks=[*default_hooks(), *hooks],
            started=started,
        )
        return trainer.run(start.resumed, start.clashes, add_seen_images=resume_anyway)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _train_in_processes(
    config: TrainConfig,
    train_set: Dataset,
    val_set: Dataset | None,
    *,
    out: Path,
    overwrite: bool,
    resume: bool,
    resume_anyway: bool,
    hooks: Sequence[HookBase],
) -> Path:
    """``train`` as ``config.processes`` CPU processes that meet on a free local port and share each batch.

    Rank 0's events come back over a queue and are emitted here, so this process's listeners see the run.
    """
    # Before starting processes, so that a bad checkpoint or an occupied folder fails fast and plainly.
    _plan(config, train_set, out, overwrite=overwrite, resume=resume, resume_anyway=resume_anyway)
    if torch.cuda.is_available():
        raise InstasegError(
            "--processes is for training on a CPU; for several GPUs launch one process each with torchrun"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InstasegError("--processes cannot be combined with torchrun, which starts the processes itself")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    queue = multiprocessing.get_context("spawn").SimpleQueue()
    run = dict(out=out, overwrite=overwrite, resume=resume, resume_anyway=resume_anyway, hooks=tuple(hooks))
    # torch logs a warning as it stops the other processes after one failed; the error below says it all.
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)
    try:
        processes = mp.spawn(
            _training_process,
            (config.processes, port, config, train_set, val_set, run, queue),
            nprocs=config.processes,
            join=False,
        )
        while not processes.join(timeout=0.1):
            _reemit_events(queue)
        _reemit_events(queue)
    except mp.ProcessRaisedException as exc:
        # The child's traceback ends with "ExceptionType: message"; the message is what to show.
        raise InstasegError(f"training failed: {str(exc).strip().splitlines()[-1].split(': ', 1)[-1]}") from None
    finally:
        spawn_log.setLevel(level)
    return out / "best.pt"


def _training_process(
    rank: int,
    world: int,
    port: int,
    config: TrainConfig,
    train_set: Dataset,
    val_set: Dataset | None,
    run: dict[str, Any],
    queue: Any,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(max(1, usable_cores() // world))
    with events.listen(queue.put) if rank == 0 else nullcontext():
        _train_this_process(config, train_set, val_set, **run)


def _reemit_events(queue: Any) -> None:
    """Emit here the events a training process sent, as if this process had reported them."""
    while not queue.empty():
        event = queue.get()
        if isinstance(event, events.Message):
            (events.warn if event.level == "warning" else events.info)(event.text)
        elif isinstance(event, events.Metrics):
            events.metrics(event.task, event.step, **event.values)
        else:
            events.emit(event)


def _setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun or ``processes``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, auto_device()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


@dataclass(frozen=True)
class Schedule:
    """The learning rate and the end of a run, from its position (iterations and/or seconds)."""

    lr: float
    epochs: int | None
    minutes: float | None
    batches_per_epoch: int

    def fraction(self, iteration: int, seconds: float) -> float:
        """How far through the run ``iteration`` after ``seconds`` is, 0..1, by iterations and/or by time."""
        fractions = []
        if self.epochs is not None:
            fractions.append(iteration / max(1, self.epochs * self.batches_per_epoch))
        if self.minutes is not None:
            fractions.append(seconds / (self.minutes * 60))
        return min(1.0, max(fractions))

    def learning_rate(self, iteration: int, seconds: float) -> float:
        """Linear warmup, then a cosine decay to 2% of ``lr`` at the end of the run."""
        progress = self.fraction(iteration, seconds)
        warmup = min(1.0, max((iteration + 1) / WARMUP_ITERS, progress / WARMUP_FRACTION))
        return self.lr * warmup * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


class _Losses(torch.nn.Module):
    """The model's ``losses`` as a forward pass, so that DistributedDataParallel can wrap it."""

    def __init__(self, model: InstanceSegmenter, resize: bool):
        super().__init__()
        self.model = model
        self.resize = resize

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return self.model.losses(images, targets, resize=self.resize)


class Trainer:
    """One process's part of a training run: the steps, the schedule and the state hooks read.

    Hooks (``instaseg.engine.hooks``) read and may change: ``config``, ``model``, ``optimizer``,
    ``iteration`` (steps done), ``epoch`` (epochs done), ``batch_in_epoch``, ``step_epoch`` (the
    epoch of the last step), ``step_losses`` (its losses), ``end_of_epoch``, ``stopping``,
    ``validated``, ``best_map``, ``history`` (the rows of metrics.jsonl), ``val_seconds``,
    ``last_val_time``; ``main`` is true on the process that writes.
    """

    def __init__(
        self,
        config: TrainConfig,
        train_set: Dataset,
        val_set: Dataset | None,
        *,
        out: Path,
        rank: int,
        world: int,
        device: torch.device,
        hooks: Sequence[HookBase],
        started: float,
    ):
        self.config, self.train_set, self.val_set, self.out = config, train_set, val_set, out
        self.rank, self.world, self.device = rank, world, device
        self.main = rank == 0
        self.hooks = list(hooks)
        self.class_names = train_set.class_names
        self.started = started
        self.elapsed_before = 0.0  # seconds spent in earlier sessions of a resumed run
        self.history: list[dict] = []
        self.iteration, self.epoch, self.batch_in_epoch, self.step_epoch = 0, 0, 0, 0
        self.step_losses: dict[str, float] = {}
        self.end_of_epoch = self.stopping = self.validated = False
        self.best_map = -1.0
        self.last_val_time = 0.0
        self.val_seconds = 0.0  # how long the last validation took: kept in reserve at the end of a budget
        # The images of one step in this process: a run in ``processes`` shares out each batch.
        self.batch_size = config.batch_size // config.processes

    # -- the run ------------------------------------------------------------------------------------
    def run(self, resumed: dict[str, Any] | None, clashes: list[Path], add_seen_images: bool = False) -> Path:
        """Build, resume, loop until the schedule ends; returns best.pt's path (written by the main process)."""
        self.build(resumed, add_seen_images)
        if resumed is not None:
            self.restore(resumed)
        self._claim_out(clashes)
        if self.world > 1:
            dist.barrier()
        self._loop()
        if self.world > 1:
            dist.barrier()
        return self.out / "best.pt"

    def _loop(self) -> None:
        # Shrink images to the largest size the model trains at, so its resize never works on more pixels
        # (or, with crop_size, resize and crop them here instead of in the model).
        sizes = self.model.input_sizes
        images = TrainingImages(
            self.train_set,
            augment=True,
            min_sizes=sizes.train_short_sides,
            max_size=sizes.max_side,
            seed=self.config.seed,
            crop_size=self.config.crop_size,
            flips=self.config.flips,
            photometric=self.config.photometric,
        )
        # On a CPU the model needs every core; loading small images in the main process costs little.
        workers = min(4, os.cpu_count() or 1) if self.device.type == "cuda" else 0
        self.schedule = Schedule(self.config.lr, self.config.epochs, self.config.minutes, len(self._batches(epoch=0)))
        for hook in self.hooks:
            hook.trainer = self
            hook.before_train()
        self.stopping = self.should_stop()
        while not self.stopping:
            images.epoch = self.epoch
            batches = self._batches(self.epoch)
            if self.batch_in_epoch >= len(batches):
                # Resumed past the end of this epoch's batches (fewer images or a larger batch than the run had).
                self.epoch += 1
                self.batch_in_epoch = 0
                self.stopping = self.should_stop()
                continue
            loader = torch.utils.data.DataLoader(
                images,
                batch_sampler=batches[self.batch_in_epoch :],
                collate_fn=collate,
                num_workers=workers,
                generator=torch.Generator(),  # leaves the global RNG (restored on resume) untouched
            )
            for batch in loader:
                self.step_losses = self.run_step(batch)
                self.iteration += 1
                self.batch_in_epoch += 1
                self.step_epoch = self.epoch
                self.end_of_epoch = self.batch_in_epoch == len(batches)
                if self.end_of_epoch:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                self.stopping = self.should_stop()
                self.validated = False
                for hook in self.hooks:
                    hook.after_step()
                if self.end_of_epoch:
                    for hook in self.hooks:
                        hook.after_epoch()
                if self.stopping:
                    break
        for hook in self.hooks:
            hook.after_train()

    def _batches(self, epoch: int) -> list[list[int]]:
        return epoch_batches(self.train_set, self.batch_size, self.config.seed, epoch, self.rank, self.world)

    @property
    def total_steps(self) -> int | None:
        """The run's steps when its length is in epochs (None with a time budget only; a budget
        given with epochs may end it sooner)."""
        epochs = self.config.epochs
        return epochs * self.schedule.batches_per_epoch if epochs is not None else None

    # -- build and resume ---------------------------------------------------------------------------
    def build(self, resumed: dict[str, Any] | None, add_seen_images: bool = False) -> None:
        """The model (fresh, from ``config.weights``, or as ``resumed`` describes it), the optimizer and
        the gradient scaler; ``model_config`` is what checkpoints record for inference."""
        torch.manual_seed(self.config.seed)
        if resumed is not None:
            model_config = resumed["config"]
            if add_seen_images:  # the model has now seen these images too (see `instaseg review --model`)
                seen = {self.train_set.image_sha1(image) for image in self.train_set.images}
                model_config["train_image_sha1"] = sorted(seen | set(model_config.get("train_image_sha1", [])))
        else:
            model_config = {
                "model": self.config.model,
                "preset": self.config.preset,
                "kwargs": self.config.model_arguments(),
                "class_names": list(self.class_names),
                # So `instaseg review --model` can tell which of the images it judges this model has seen.
                "train_image_sha1": sorted({self.train_set.image_sha1(image) for image in self.train_set.images}),
            }
        self.model_config = model_config
        self.model: InstanceSegmenter = model_entry(model_config["model"]).builder(
            num_classes=len(self.class_names), **model_config["kwargs"]
        )
        if resumed is None:
            model_config["object_sizes"] = training_object_sizes(self.train_set, self.model)
            if self.config.weights is not None:
                not_loaded = load_weights(self.model, self.config.weights)
                if self.main and not_loaded:
                    events.info(
                        f"from {self.config.weights}: {len(not_loaded)} tensors not loaded "
                        "(left at their initialisation):"
                    )
                    for line in not_loaded:
                        events.info(f"  {line}")
        self.model.to(self.device)
        decay = [p for n, p in self.model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim <= 1]
        # fused: one kernel for all parameters instead of a loop over the tensors.
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.config.lr,
            fused=True,
        )
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        losses = _Losses(self.model, resize=self.config.crop_size is None)  # crops come resized already
        self.losses = (
            torch.nn.parallel.DistributedDataParallel(losses, device_ids=[self.device.index] if self.amp else None)
            if self.world > 1
            else losses
        )

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from ``checkpoint``: its weights, optimizer, position, history and RNG state."""
        state = checkpoint["train_state"]
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when saved without AMP
            self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.epoch, self.batch_in_epoch = state["iteration"], state["epoch"], state["batch_in_epoch"]
        self.elapsed_before = state["elapsed"]
        self.best_map = state["best_map"]
        self.history = state["history"]
        torch.set_rng_state(state["rng"])
        if self.main:
            events.info(f"resuming from {self.out / 'last.pt'}: epoch {self.epoch + 1}, iteration {self.iteration}")

    def _claim_out(self, clashes: list[Path]) -> None:
        """Remove the earlier run's files and make the folder, once the whole run is known to start."""
        if self.main:
            for path in clashes:
                path.unlink()
            self.out.mkdir(parents=True, exist_ok=True)

    # -- one step -----------------------------------------------------------------------------------
    def run_step(self, batch: tuple[list, list]) -> dict[str, float]:
        """One optimizer step on ``batch``; returns its losses (their sum as ``loss``)."""
        images, targets = batch
        images = [img.to(self.device, non_blocking=True) for img in images]
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
        lr = self.broadcast(self.learning_rate())  # a time budget is measured on rank 0 only
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.losses.train()
        with torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext():
            losses = self.losses(images, targets)
            loss = sum(losses.values())
        if self._any_rank(not torch.isfinite(loss).item()):
            raise InstasegError(
                f"the loss became non-finite (NaN or infinite) at iteration {self.iteration + 1}; try a lower --lr",
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": float(loss.item()), **{k: float(v.item()) for k, v in losses.items()}}

    # -- schedule -----------------------------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds the run has taken, earlier sessions of a resumed run included."""
        return self.elapsed_before + time.monotonic() - self.started

    def learning_rate(self) -> float:
        """The learning rate of the next step."""
        return self.schedule.learning_rate(self.iteration, self.elapsed() + self.val_seconds)

    def should_stop(self) -> bool:
        """Whether the run is over; rank 0 decides (time differs per process) and tells the others."""
        epochs = self.config.epochs
        done = self.schedule.fraction(self.iteration, self.elapsed() + self.val_seconds) >= 1.0
        return bool(self.broadcast(float(done or (epochs is not None and self.epoch >= epochs))))

    def save_due(self) -> bool:
        """Whether last.pt and the metrics files are written after this step."""
        return self.validated or self.end_of_epoch or self.iteration % self.config.checkpoint_every == 0

    # -- between processes --------------------------------------------------------------------------
    def broadcast(self, value: float) -> float:
        """Rank 0's ``value`` on every process (a collective: every process must call it)."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, 0)
        return float(tensor.item())

    def _any_rank(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process, so all stop together instead of the rest hanging."""
        if self.world == 1:
            return flag
        tensor = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    # -- outputs ------------------------------------------------------------------------------------
    def save(self, name: str, with_optimizer: bool) -> None:
        """Write checkpoint ``name`` into the out folder (main process only); last.pt carries the optimizer."""
        if not self.main:
            return
        state = {
            "iteration": self.iteration,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "elapsed": self.elapsed(),
            "best_map": self.best_map,
            "history": self.history,
            "rng": torch.get_rng_state(),
            "scaler": self.scaler.state_dict(),
        }
        if with_optimizer:
            state["optimizer"] = self.optimizer.state_dict()
        checkpoint = make_checkpoint(
            config=self.model_config, weights=self.model.state_dict(), train_config=self.config, train_state=state
        )
        save_checkpoint(self.out / name, checkpoint)
