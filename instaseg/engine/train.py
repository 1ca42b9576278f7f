"""Training: ``instaseg.engine.train.train(train, val, model=..., epochs=... | minutes=..., out=...)``.

One loop serves a laptop CPU, a GPU (with mixed precision) and several processes under
``torchrun`` (DistributedDataParallel: gloo on CPU, NCCL on GPU; only rank 0 writes files).

The out folder receives ``last.pt`` (every epoch, and every ``checkpoint_every`` iterations),
``best.pt`` (best validation mask mAP), ``metrics.jsonl`` (one JSON object per logged step and per
validation) and ``curves.png`` (losses and mAP). Checkpoints carry the optimizer, the schedule
position and the RNG state, so ``resume=True`` continues exactly where ``last.pt`` was written.

The learning rate follows a linear warmup then a cosine decay over the run; with a time budget
(``minutes``) the decay follows the elapsed fraction of the budget, so a run always ends at a low
learning rate, whatever the machine's speed. The warmup ends after ``WARMUP_ITERS`` iterations or
a tenth of the run, whichever comes first: a short run (a few epochs, or minutes on a CPU) that
warmed up for longer would decay before ever reaching the peak.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from instaseg.core import io
from instaseg.core import masks as mask_ops
from instaseg.data import Dataset
from instaseg.data.stats import object_size
from instaseg.core.errors import InstasegError
from instaseg.models import DEFAULT_MODEL, model_entry
from instaseg.models.registry import default_preset, resolve_config
from instaseg.engine.checkpoint import CHECKPOINT_FORMAT, checkpoint_config, read_checkpoint, save_checkpoint
from instaseg.engine.predictor import Predictor, auto_device, input_scale
from instaseg.core.structures import Instances

OUTPUT_FILES = ("best.pt", "last.pt", "metrics.jsonl", "curves.png")
# What last.pt must hold to resume from (``_Run._save`` with the optimizer).
TRAIN_STATE_KEYS = {"iteration", "epoch", "batch_in_epoch", "elapsed", "best_map", "history", "rng", "scaler",
                    "optimizer"}
WARMUP_ITERS = 100
WARMUP_FRACTION = 0.1
FLIPS = ("horizontal", "all")
PHOTOMETRIC = ("jitter", "all")
# The range of object sizes a checkpoint records as known to the model: most of its training images,
# leaving out the extremes it saw only a few times.
TYPICAL_OBJECT_PERCENTILES = (10, 90)


def train(
    train: Dataset,
    val: Dataset | None = None,
    *,
    model: str = DEFAULT_MODEL,
    epochs: int | None = None,
    minutes: float | None = None,
    weights: str | Path | None = None,
    out: str | Path = "runs/train",
    seed: int = 0,
    overwrite: bool = False,
    resume: bool = False,
    batch_size: int = 4,
    lr: float = 1e-3,
    preset: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    val_every: float | None = None,
    checkpoint_every: int = 500,
    progress: bool = True,
    crop_size: int | None = None,
    flips: str = "horizontal",
    photometric: str = "jitter",
    processes: int = 1,
    resume_anyway: bool = False,
) -> Path:
    """Train an instance segmentation model and return the path of its best checkpoint.

    Args:
        train: the training images and annotations.
        val: validation data; the best checkpoint is chosen by its mask mAP@[.5:.95].
        model: a name from ``instaseg.models.list_models()``.
        epochs: passes over ``train``; give this or ``minutes`` (both: whichever ends first).
        minutes: wall-clock budget for the whole run, validation included.
        weights: start from this file: an instaseg checkpoint or a torchvision-style state dict.
            Tensors whose name or shape do not fit (e.g. heads for another class count) keep their
            fresh initialisation and are listed.
        out: folder for checkpoints, logs and curves.
        seed: seeds model initialisation, shuffling and augmentation.
        overwrite: replace an earlier run's files in ``out``.
        resume: continue the run in ``out`` from its ``last.pt``, with the model and augmentation
            (``crop_size``, ``flips``, ``photometric``) it recorded. Refused when the training images
            are not the ones the run recorded (their SHA-1s), unless ``resume_anyway``.
        batch_size: images per step (per process under torchrun).
        lr: peak AdamW learning rate.
        preset: model preset ("cpu", "gpu", "small"); by default "gpu" with CUDA, else "cpu".
        model_kwargs: builder arguments overriding the preset's (see ``build_maskrcnn``).
        val_every: validate every this many epochs (default 1), or with ``minutes``, every this
            many minutes (default an eighth of the budget); always at the end.
        checkpoint_every: also write ``last.pt`` every this many iterations.
        progress: show a progress bar.
        crop_size: train on random square crops of this many pixels of each image, taken after
            resizing it as the model would (scale jitter included), instead of whole images: more
            steps per minute where images are large and objects small (cells, aerial views).
        flips: "horizontal" mirrors images left-right at random; "all" also upside down and
            across the diagonal (all eight flips and quarter turns), for images with no up or
            down (microscopy, aerial and satellite views): four times the variety from the same
            labels.
        photometric: "jitter" changes brightness, contrast and saturation at random; "all" also
            turns images grey and inverts them (each half the time), for data whose objects may be
            lighter or darker than their background from one image to the next (stained and
            fluorescent microscopy): a model that has seen only bright nuclei on black learns the
            dark ones on pink too.
        processes: on a CPU, train as this many data-parallel processes (DDP over gloo), each
            with ``batch_size / processes`` images per step and an equal share of the cores: one
            process keeps only part of a small machine's cores busy (BENCHMARKS.md, quickstart).
        resume_anyway: resume (as ``resume``) even on other training images than the run's.
    """
    if epochs is None and minutes is None:
        raise InstasegError("give a training length: --epochs N or --minutes M")
    check_options(
        model=model, preset=preset, model_kwargs=model_kwargs, epochs=epochs, minutes=minutes, batch_size=batch_size,
        lr=lr, crop_size=crop_size, flips=flips, photometric=photometric, processes=processes, val_every=val_every,
        checkpoint_every=checkpoint_every,
    )
    options = dict(
        model=model, epochs=epochs, minutes=minutes, weights=weights, out=Path(out), seed=seed, overwrite=overwrite,
        resume=resume or resume_anyway, resume_anyway=resume_anyway, batch_size=batch_size, lr=lr, preset=preset,
        model_kwargs=model_kwargs or {}, val_every=val_every, checkpoint_every=checkpoint_every, progress=progress,
        crop_size=crop_size, flips=flips, photometric=photometric,
    )
    if processes != 1:
        return _train_in_processes(train, val, processes, options)
    rank, world, device = _setup_distributed()
    try:
        return _Run(train, val, rank=rank, world=world, device=device, **options).run()
    finally:
        if world > 1:
            dist.destroy_process_group()


def check_options(
    *,
    model: str | None = None,
    preset: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    epochs: int | None = None,
    minutes: float | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    crop_size: int | None = None,
    flips: str | None = None,
    photometric: str | None = None,
    processes: int | None = None,
    val_every: float | None = None,
    checkpoint_every: int | None = None,
) -> None:
    """Refuse, naming the option, any ``train`` option that cannot make a run; those left None are not checked.

    Called before anything is read or written, so a bad option never leaves a half-made output behind.
    """
    whole_numbers = {"--epochs": (epochs, 1), "--batch-size": (batch_size, 1), "--crop-size": (crop_size, 32),
                     "--processes": (processes, 1), "checkpoint_every": (checkpoint_every, 1)}
    for name, (value, least) in whole_numbers.items():
        if value is not None and value < least:
            raise InstasegError(f"{name} must be at least {least}, not {value}")
    positive = {"--minutes": minutes, "--lr": lr, "val_every": val_every}
    for name, value in positive.items():
        if value is not None and not (0 < value < math.inf):
            raise InstasegError(f"{name} must be a positive number, not {value}")
    if flips is not None and flips not in FLIPS:
        raise InstasegError(f"--flips must be one of {', '.join(FLIPS)}, not {flips!r}")
    if photometric is not None and photometric not in PHOTOMETRIC:
        raise InstasegError(f"--photometric must be one of {', '.join(PHOTOMETRIC)}, not {photometric!r}")
    if model is not None:
        resolve_config(model, preset, **(model_kwargs or {}))


def earlier_run_files(out: Path, overwrite: bool) -> list[Path]:
    """The files of an earlier run in ``out`` that a new run replaces; refused unless ``overwrite``."""
    clashes = [out / name for name in OUTPUT_FILES if (out / name).exists()]
    if clashes and not overwrite:
        raise InstasegError("holds an earlier run; pass --overwrite to replace it or --resume to continue", file=out)
    return clashes


def resume_checkpoint(out: Path, train_set: Dataset, anyway: bool = False) -> dict[str, Any]:
    """``out``'s last.pt, refused when it cannot continue on ``train_set``: other classes, or other
    images than the SHA-1s it records (unless ``anyway``)."""
    last = out / "last.pt"
    if not last.exists():
        raise InstasegError("nothing to resume: no last.pt", file=out)
    checkpoint = read_checkpoint(last)
    config = checkpoint_config(checkpoint, last)
    state = checkpoint.get("train_state")
    if not isinstance(state, dict) or not TRAIN_STATE_KEYS <= state.keys():
        raise InstasegError("holds no complete training state to resume from", file=last)
    if config["class_names"] != list(train_set.class_names):
        raise InstasegError(
            f"last.pt was trained on classes {config['class_names']}, this data has {train_set.class_names}", file=last
        )
    if not anyway:
        recorded = set(config.get("train_image_sha1", []))
        current = {train_set.image_sha1(image) for image in train_set.images}
        new, gone = len(current - recorded), len(recorded - current)
        if new or gone:
            raise InstasegError(
                f"the run trained on other images: {new} of these {len(current)} training images are not among its "
                f"{len(recorded)}, and {gone} of its images are not among these; pass --resume-anyway to continue",
                file=last,
            )
    return checkpoint


def usable_cores() -> int:
    """The cores this process may use (a container's CPU set), not all the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _train_in_processes(train_set: Dataset, val: Dataset | None, processes: int, options: dict[str, Any]) -> Path:
    """``train`` as ``processes`` CPU processes that meet on a free local port and share each batch."""
    if options["batch_size"] % processes:
        raise InstasegError(f"--batch-size {options['batch_size']} must be a multiple of --processes {processes}")
    # Before starting processes, so that bad data or an occupied folder fails fast and plainly.
    check_training_data(train_set, val)
    if options["resume"]:
        resume_checkpoint(options["out"], train_set, options["resume_anyway"])
    else:
        earlier_run_files(options["out"], options["overwrite"])
    if torch.cuda.is_available():
        raise InstasegError("--processes is for training on a CPU; for several GPUs launch one process each with torchrun")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InstasegError("--processes cannot be combined with torchrun, which starts the processes itself")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = {**options, "batch_size": options["batch_size"] // processes}
    # torch logs a warning as it stops the other processes after one failed; the error below says it all.
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)
    try:
        mp.spawn(_training_process, (processes, port, train_set, val, options), nprocs=processes)
    except mp.ProcessRaisedException as exc:
        # The child's traceback ends with "ExceptionType: message"; the message is what to show.
        raise InstasegError(f"training failed: {str(exc).strip().splitlines()[-1].split(': ', 1)[-1]}") from None
    finally:
        spawn_log.setLevel(level)
    return Path(options["out"]) / "best.pt"


def _training_process(rank: int, world: int, port: int, train_set: Dataset, val: Dataset | None,
                      options: dict[str, Any]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(max(1, usable_cores() // world))
    train(train_set, val, **{**options, "progress": options["progress"] and rank == 0})


def _setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun."""
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


# -- data ---------------------------------------------------------------------------------------------
class TrainingImages(torch.utils.data.Dataset):
    """A ``Dataset``'s images as (image tensor, target dict) pairs for torchvision's detection models.

    Images larger than the model's largest training scale (short side ``max(min_sizes)``, long side
    at most ``max_size``: ``model.transform``'s) are shrunk to it here, masks included, so the
    model's own resize never interpolates hundreds of full-resolution masks each iteration; smaller
    images are left as they are. With ``crop_size``, each image is instead resized here to one of
    ``min_sizes`` drawn at random (the model's scale jitter, which must then skip its own resize)
    and a random ``crop_size`` square of it is returned; only the window is resized, never the whole
    image. Crowd regions and empty or one-pixel masks (at the size handed to the model) are left
    out of the targets. With ``augment``, images are flipped at random (``flips``: see ``train``)
    and their colours changed (``photometric``: see ``train``).
    """

    def __init__(self, dataset: Dataset, augment: bool, min_sizes: tuple[int, ...], max_size: int, seed: int = 0,
                 crop_size: int | None = None, flips: str = "horizontal", photometric: str = "jitter"):
        self.dataset = dataset
        self.augment = augment
        self.flips = flips
        self.photometric = photometric
        self.min_sizes, self.max_size = tuple(min_sizes), max_size
        self.crop_size = crop_size
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = self.dataset.images[index]
        pixels = self.dataset.read_image(image)
        gt = self.dataset.ground_truth(image)
        gt = gt[~gt.data["iscrowd"]]
        # Seeded by (seed, epoch, image): the same whatever the worker, process or resume point.
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 100_003 + index)
        height, width = pixels.shape[:2]
        if self.crop_size is None:
            scale = min(1.0, max(self.min_sizes) / min(height, width), self.max_size / max(height, width))
            left, top, right, bottom = 0, 0, width, height
        else:
            short = self.min_sizes[int(torch.randint(len(self.min_sizes), (), generator=rng))]
            scale = min(short / min(height, width), self.max_size / max(height, width))
            crop_w, crop_h = (min(side, math.ceil(self.crop_size / scale)) for side in (width, height))
            left = int(torch.randint(width - crop_w + 1, (), generator=rng))
            top = int(torch.randint(height - crop_h + 1, (), generator=rng))
            right, bottom = left + crop_w, top + crop_h
        cropped = (left, top, right, bottom) != (0, 0, width, height)
        if cropped or scale != 1.0:
            pixels, masks = pixels[top:bottom, left:right], gt.masks[:, top:bottom, left:right]
            if scale != 1.0:
                size = (round((bottom - top) * scale), round((right - left) * scale))
                pixels = cv2.resize(pixels, size[::-1], interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
                masks = mask_ops.resize(masks, *size)
            gt = Instances.from_masks(masks, gt.class_ids, class_names=gt.class_names)  # boxes once, from the final masks
        keep = ((gt.boxes[:, 2] - gt.boxes[:, 0]) >= 1) & ((gt.boxes[:, 3] - gt.boxes[:, 1]) >= 1) & (gt.areas > 1)
        gt = gt[keep]
        pixels = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float().div_(255)
        boxes = torch.from_numpy(gt.boxes)
        masks = torch.from_numpy(gt.masks).to(torch.uint8)
        if self.augment:
            if torch.rand((), generator=rng) < 0.5:
                pixels, masks = pixels.flip(-1), masks.flip(-1)
                width = pixels.shape[-1]
                boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
            if self.flips == "all":
                if torch.rand((), generator=rng) < 0.5:
                    pixels, masks = pixels.flip(-2), masks.flip(-2)
                    height = pixels.shape[-2]
                    boxes = torch.stack([boxes[:, 0], height - boxes[:, 3], boxes[:, 2], height - boxes[:, 1]], 1)
                if torch.rand((), generator=rng) < 0.5:
                    pixels, masks = pixels.transpose(-1, -2), masks.transpose(-1, -2)
                    boxes = boxes[:, [1, 0, 3, 2]]
            pixels = _colour_jitter(pixels, rng)
            if self.photometric == "all":
                if torch.rand((), generator=rng) < 0.5:
                    pixels = pixels.mean(0, keepdim=True).expand_as(pixels).clone()
                if torch.rand((), generator=rng) < 0.5:
                    pixels = 1.0 - pixels
        target = {"boxes": boxes, "labels": torch.from_numpy(gt.class_ids + 1), "masks": masks}
        return pixels, target


def _colour_jitter(pixels: torch.Tensor, rng: torch.Generator, strength: float = 0.3) -> torch.Tensor:
    """Random brightness, contrast and saturation changes of up to +-``strength``."""
    brightness, contrast, saturation = (1 + (torch.rand(3, generator=rng) * 2 - 1) * strength).tolist()
    pixels = pixels * brightness
    mean = pixels.mean()
    pixels = (pixels - mean) * contrast + mean
    gray = pixels.mean(0, keepdim=True)
    pixels = (pixels - gray) * saturation + gray
    return pixels.clamp_(0, 1)


def epoch_batches(
    dataset: Dataset, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1
) -> list[list[int]]:
    """This process's batches of image indices for one epoch, grouped by orientation.

    Images are sharded across processes by ``DistributedSampler``, then batched so that landscape
    and portrait images rarely share a batch (less padding). Every process gets the same number of
    batches, which DDP requires; any leftovers go into mixed batches.
    """
    sampler = DistributedSampler(range(len(dataset.images)), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    indices = list(sampler)
    landscape = [img["width"] >= img["height"] for img in dataset.images]
    groups: dict[bool, list[int]] = {True: [], False: []}
    batches: list[list[int]] = []
    for index in indices:
        group = groups[landscape[index]]
        group.append(index)
        if len(group) == batch_size:
            batches.append(list(group))
            group.clear()
    leftovers = groups[True] + groups[False]
    batches += [leftovers[i : i + batch_size] for i in range(0, len(leftovers), batch_size)]
    return batches[: max(1, len(indices) // batch_size)]


def _collate(items: list) -> tuple[list, list]:
    return [image for image, _ in items], [target for _, target in items]


# -- data checks ----------------------------------------------------------------------------------------
def check_training_data(train: Dataset, val: Dataset | None) -> None:
    """Refuse data that cannot train a model; warn about classes that have no instances."""
    for dataset in (train, val):
        if dataset is not None:
            dataset.validate()  # a Dataset made in Python was never validated; sizes of 0 would divide by zero
    if not train.images:
        raise InstasegError("the training set has no images", file=train.source)
    if not train.categories:
        raise InstasegError("the training set has no categories", file=train.source)
    if not any(not ann.get("iscrowd", 0) for ann in train.annotations):
        raise InstasegError("the training set has no (non-crowd) annotations", file=train.source)
    names = train.class_names
    if len(set(names)) != len(names):
        raise InstasegError("two categories share a name; class names must be unique", file=train.source)
    for ann in train.annotations:
        if ann["category_id"] not in train.category_index:
            raise InstasegError(
                f"category_id {ann['category_id']} is not among the categories", file=train.source,
                record=f"annotation id {ann['id']}",
            )
    used = {ann["category_id"] for ann in train.annotations}
    empty = [cat["name"] for cat in train.categories if cat["id"] not in used]
    if empty:
        warnings.warn(f"{train.source or 'training set'}: no instances of {', '.join(empty)}; the model cannot learn them")
    if val is not None:
        if not val.images:
            raise InstasegError("the validation set has no images", file=val.source)
        unknown = [n for n in val.class_names if n not in names]
        if unknown:
            raise InstasegError(f"validation classes {unknown} are not in the training set", file=val.source)


# -- weights --------------------------------------------------------------------------------------------
def load_weights(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Copy every tensor of ``path`` whose name and shape fit ``model``; returns what was not loaded.

    ``path`` is an instaseg checkpoint or a state dict (torchvision style, optionally under a
    ``"model"`` or ``"state_dict"`` key). Returns lines describing the model's tensors left at their
    initialisation (e.g. class-specific heads when the class count differs).
    """
    stored = read_checkpoint(path)
    if isinstance(stored, dict) and stored.get("format") == CHECKPOINT_FORMAT:
        stored = stored.get("model")
    elif isinstance(stored, dict):
        stored = stored.get("model", stored.get("state_dict", stored))
    if not isinstance(stored, dict) or not all(isinstance(v, torch.Tensor) for v in stored.values()):
        raise InstasegError("not a state dict of tensors", file=path)
    stored = {k.removeprefix("module."): v for k, v in stored.items()}
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


def training_object_sizes(dataset: Dataset, model: torch.nn.Module) -> list[float] | None:
    """The object sizes the model learns at its input size: the 10th and 90th percentiles over images
    of each image's median object side, resized as the model resizes that image at inference.

    Stored in the checkpoint, so a caller that knows the objects' size in a new image (the label
    review does) can run it at a scale the model knows (``Predictor.predict(object_size=)``).
    """
    sides = [size * input_scale(model, image["height"], image["width"]) for image in dataset.images
             if (size := object_size(dataset, image)) is not None]
    return np.percentile(sides, TYPICAL_OBJECT_PERCENTILES).tolist() if sides else None


# -- the run --------------------------------------------------------------------------------------------
class _Run:
    """The state of one training run (kept in one object so that checkpoints can capture it)."""

    def __init__(self, train: Dataset, val: Dataset | None, **options: Any):
        self.__dict__.update(options)
        self.train_set, self.val_set = train, val
        self.main = self.rank == 0
        check_training_data(train, val)
        self.class_names = train.class_names
        self.history: list[dict] = []
        self.iteration, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.elapsed_before = 0.0  # seconds spent in earlier sessions of a resumed run
        self.best_map = -1.0
        self.last_val_time = 0.0
        self.val_seconds = 0.0  # how long the last validation took: kept in reserve at the end of a budget
        self.started = time.monotonic()  # the budget counts the setup too: users time the whole command

    # -- setup ---------------------------------------------------------------------------------------
    def _check_out(self) -> tuple[dict | None, list[Path]]:
        """The checkpoint to resume from, or the earlier run's files to replace; changes nothing."""
        if self.resume:
            return resume_checkpoint(self.out, self.train_set, self.resume_anyway), []
        return None, earlier_run_files(self.out, self.overwrite)

    def _claim_out(self, clashes: list[Path]) -> None:
        """Remove the earlier run's files and make the folder, once the whole run is known to start."""
        if self.main:
            for path in clashes:
                path.unlink()
            self.out.mkdir(parents=True, exist_ok=True)

    def _build(self, resumed: dict | None) -> None:
        torch.manual_seed(self.seed)
        if resumed is not None:
            config = resumed["config"]
            if self.resume_anyway:  # the model has now seen these images too (see `instaseg review --model`)
                seen = {self.train_set.image_sha1(image) for image in self.train_set.images}
                config["train_image_sha1"] = sorted(seen | set(config.get("train_image_sha1", [])))
            self.config = config
            # The run goes on with the recipe it started with, whatever the resuming command says.
            self.crop_size = config.get("crop_size")
            self.flips = config.get("flips", "horizontal")
            self.photometric = config.get("photometric", "jitter")
        else:
            preset = self.preset or default_preset()
            self.config = {
                "model": self.model,
                "preset": preset,
                "kwargs": resolve_config(self.model, preset, **self.model_kwargs),
                "class_names": list(self.class_names),
                # So `instaseg review --model` can tell which of the images it judges this model has seen.
                "train_image_sha1": sorted({self.train_set.image_sha1(image) for image in self.train_set.images}),
                "crop_size": self.crop_size,
                "flips": self.flips,
                "photometric": self.photometric,
            }
        self.net = model_entry(self.config["model"]).builder(num_classes=len(self.class_names), **self.config["kwargs"])
        if resumed is None:
            self.config["object_sizes"] = training_object_sizes(self.train_set, self.net)
        if self.weights is not None and resumed is None:
            not_loaded = load_weights(self.net, self.weights)
            if self.main and not_loaded:
                print(f"from {self.weights}: {len(not_loaded)} tensors not loaded (left at their initialisation):")
                for line in not_loaded:
                    print(f"  {line}")
        self.net.to(self.device)
        decay = [p for n, p in self.net.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in self.net.named_parameters() if p.ndim <= 1]
        # fused: one kernel for all parameters, half the update time of the per-tensor loop on a CPU.
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=self.lr, fused=True
        )
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        if resumed is not None:
            self._restore(resumed)
        self.ddp_net = (
            torch.nn.parallel.DistributedDataParallel(self.net, device_ids=[self.device.index] if self.amp else None)
            if self.world > 1
            else self.net
        )

    def _restore(self, checkpoint: dict) -> None:
        state = checkpoint["train_state"]
        self.net.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when saved without AMP
            self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.epoch, self.batch_in_epoch = state["iteration"], state["epoch"], state["batch_in_epoch"]
        self.elapsed_before = state["elapsed"]
        self.best_map = state["best_map"]
        self.history = state["history"]
        torch.set_rng_state(state["rng"])
        if self.main:
            print(f"resuming from {self.out / 'last.pt'}: epoch {self.epoch + 1}, iteration {self.iteration}")

    # -- schedule ------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def progress_fraction(self) -> float:
        """How far through the run we are, 0..1, by iterations and/or by time."""
        fractions = []
        if self.epochs is not None:
            fractions.append(self.iteration / max(1, self.epochs * self.batches_per_epoch))
        if self.minutes is not None:
            fractions.append((self.elapsed() + self.val_seconds) / (self.minutes * 60))
        return min(1.0, max(fractions))

    def learning_rate(self) -> float:
        progress = self.progress_fraction()
        warmup = min(1.0, max((self.iteration + 1) / WARMUP_ITERS, progress / WARMUP_FRACTION))
        return self.lr * warmup * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))

    def should_stop(self) -> bool:
        """Rank 0 decides (time differs per process) and tells the others."""
        stop = self.progress_fraction() >= 1.0 or (self.epochs is not None and self.epoch >= self.epochs)
        return bool(self._broadcast(float(stop)))

    def _any_rank(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process, so all stop together instead of the rest hanging."""
        if self.world == 1:
            return flag
        tensor = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def _broadcast(self, value: float) -> float:
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, 0)
        return float(tensor.item())

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> Path:
        resumed, clashes = self._check_out()
        self._build(resumed)
        self._claim_out(clashes)
        if self.world > 1:
            dist.barrier()
        # Shrink images to the largest size the model trains at, so its resize never works on more pixels
        # (or, with crop_size, resize and crop them here instead of in the model).
        images = TrainingImages(
            self.train_set, augment=True, min_sizes=self.net.transform.min_size,
            max_size=self.net.transform.max_size, seed=self.seed, crop_size=self.crop_size, flips=self.flips,
            photometric=self.photometric,
        )
        # torchvision's switch for loaders that resize themselves; it applies in training mode only.
        self.net.transform._skip_resize = self.crop_size is not None
        # On a CPU the model needs every core; loading small images in the main process costs little.
        workers = min(4, os.cpu_count() or 1) if self.device.type == "cuda" else 0
        self.batches_per_epoch = len(epoch_batches(self.train_set, self.batch_size, self.seed, 0, self.rank, self.world))
        self.last_val_time = self.elapsed()
        total = self.epochs * self.batches_per_epoch if self.epochs is not None else None
        bar = tqdm(
            total=total, initial=self.iteration if total else 0, desc="train", unit="it",
            disable=None if (self.progress and self.main) else True, dynamic_ncols=True,
        )
        window: list[dict[str, float]] = []
        stopped = self.should_stop()
        while not stopped:
            images.epoch = self.epoch
            batches = epoch_batches(self.train_set, self.batch_size, self.seed, self.epoch, self.rank, self.world)
            if self.batch_in_epoch >= len(batches):
                # Resumed past the end of this epoch's batches (fewer images or a larger batch than the run had).
                self.epoch += 1
                self.batch_in_epoch = 0
                stopped = self.should_stop()
                continue
            loader = torch.utils.data.DataLoader(
                images, batch_sampler=batches[self.batch_in_epoch :], collate_fn=_collate, num_workers=workers,
                generator=torch.Generator(),  # leaves the global RNG (restored on resume) untouched
            )
            for batch in loader:
                window.append(self._step(batch))
                self.iteration += 1
                self.batch_in_epoch += 1
                bar.update(1)
                if self.iteration % 10 == 0 or self.iteration == 1:
                    row = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                    window.clear()
                    self._log({"iteration": self.iteration, "epoch": self.epoch + 1, **row, "lr": self.learning_rate(),
                               "elapsed": round(self.elapsed(), 1)})
                    postfix = {"loss": f"{row['loss']:.3f}", "epoch": self.epoch + 1}
                    if self.minutes is not None:  # the bar cannot know the total, so show the time left
                        postfix["left"] = f"{max(0.0, self.minutes * 60 - self.elapsed()) / 60:.1f} min"
                    bar.set_postfix(postfix)
                end_of_epoch = self.batch_in_epoch == len(batches)
                if end_of_epoch:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                stopped = self.should_stop()
                validated = stopped or self._validation_due(end_of_epoch)
                if validated:
                    self._validate()
                    # A validation that used up the budget has just judged the final weights: stop here
                    # rather than train one more step and validate them again.
                    stopped = stopped or self.should_stop()
                if validated or end_of_epoch or self.iteration % self.checkpoint_every == 0:
                    self._save("last.pt", with_optimizer=True)
                    self._write_logs()
                if stopped:
                    break
        bar.close()
        if self.main and (self.val_set is None or not (self.out / "best.pt").exists()):
            self._save("best.pt", with_optimizer=False)
        self._write_logs()
        if self.world > 1:
            dist.barrier()
        return self.out / "best.pt"

    def _step(self, batch: tuple[list, list]) -> dict[str, float]:
        images, targets = batch
        images = [img.to(self.device, non_blocking=True) for img in images]
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
        lr = self._broadcast(self.learning_rate())  # a time budget is measured on rank 0 only
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.ddp_net.train()
        with torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext():
            losses = self.ddp_net(images, targets)
            loss = sum(losses.values())
        if self._any_rank(not torch.isfinite(loss).item()):
            raise InstasegError(
                f"the loss became non-finite (NaN or infinite) at iteration {self.iteration + 1}; try a lower --lr",
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 10.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": float(loss.item()), **{k: float(v.item()) for k, v in losses.items()}}

    def _validation_due(self, end_of_epoch: bool) -> bool:
        if self.val_set is None:
            return False
        if self.minutes is not None:
            interval = (self.val_every if self.val_every is not None else self.minutes / 8) * 60
            due = self.elapsed() - self.last_val_time >= interval
        else:
            due = end_of_epoch and self.epoch % max(1, round(self.val_every or 1)) == 0
        return bool(self._broadcast(float(due)))

    def _validate(self) -> None:
        """Mask and box mAP on the validation set (rank 0); keeps best.pt at the best mask mAP."""
        if self.val_set is None:
            return
        started = self.elapsed()
        if self.main:
            from instaseg.evaluation import evaluate

            predictor = Predictor(self.net, self.class_names, device=self.device)
            predictions = predictor.iter_dataset(self.val_set, score_threshold=0.05, progress=self.progress)
            result = evaluate(self.val_set, predictions, ("segm", "bbox"), errors=False)
            mask_map, box_map = result.stat("AP", "segm"), result.stat("AP", "bbox")
            self._log({"iteration": self.iteration, "epoch": self.epoch, "val_mask_mAP": mask_map,
                       "val_mask_mAP50": result.stat("AP50", "segm"), "val_box_mAP": box_map,
                       "elapsed": round(self.elapsed(), 1)})
            tqdm.write(f"validation after {self.iteration} iterations: mask mAP {mask_map:.3f}, box mAP {box_map:.3f}")
            if mask_map > self.best_map:
                self.best_map = mask_map
                self._save("best.pt", with_optimizer=False)
        self.val_seconds = self.elapsed() - started
        self.last_val_time = self.elapsed()
        if self.world > 1:
            dist.barrier()

    # -- outputs -------------------------------------------------------------------------------------
    def _save(self, name: str, with_optimizer: bool) -> None:
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
        checkpoint = {"format": CHECKPOINT_FORMAT, "version": 1, "config": self.config, "model": self.net.state_dict(),
                      "train_state": state}
        save_checkpoint(self.out / name, checkpoint)

    def _log(self, row: dict) -> None:
        self.history.append(row)

    def _write_logs(self) -> None:
        if not self.main:
            return
        io.write_text(self.out / "metrics.jsonl", "".join(io.dumps_json(r).decode() + "\n" for r in self.history), overwrite=True)
        io.write_bytes(self.out / "curves.png", plot_curves(self.history), overwrite=True)


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
