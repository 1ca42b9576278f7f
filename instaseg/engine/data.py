"""The training images: augmented (image, target) pairs, the batches of an epoch, and the checks on the data.

``TrainingImages`` turns a ``Dataset`` into what a model's ``losses`` takes; ``epoch_batches``
shards and batches one epoch for one process; ``check_training_data`` refuses data that cannot
train a model before anything is written.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from torch.utils.data import DistributedSampler

from instaseg.core import events
from instaseg.core import masks as mask_ops
from instaseg.core.errors import InstasegError
from instaseg.core.structures import Instances
from instaseg.data import Dataset
from instaseg.data.stats import object_size
from instaseg.models.base import InstanceSegmenter

# The range of object sizes a checkpoint records as known to the model: most of its training images,
# leaving out the extremes it saw only a few times.
TYPICAL_OBJECT_PERCENTILES = (10, 90)


class TrainingImages(torch.utils.data.Dataset):
    """A ``Dataset``'s images as (image tensor, target dict) pairs for a model's ``losses``.

    Images larger than the model's largest training scale (short side ``max(min_sizes)``, long side
    at most ``max_size``: its ``input_sizes``) are shrunk to it here, masks included, so the
    model's own resize never interpolates hundreds of full-resolution masks each iteration; smaller
    images are left as they are. With ``crop_size``, each image is instead resized here to one of
    ``min_sizes`` drawn at random (the model's scale jitter; the model must then not resize again)
    and a random ``crop_size`` square of it is returned; only the window is resized, never the whole
    image. Crowd regions and empty or one-pixel masks (at the size handed to the model) are left
    out of the targets. With ``augment``, images are flipped at random (``flips``: see ``TrainConfig``)
    and their colours changed (``photometric``: see ``TrainConfig``).
    """

    def __init__(
        self,
        dataset: Dataset,
        augment: bool,
        min_sizes: tuple[int, ...],
        max_size: int,
        seed: int = 0,
        crop_size: int | None = None,
        flips: str = "horizontal",
        photometric: str = "jitter",
    ):
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
            gt = Instances.from_masks(
                masks, gt.class_ids, class_names=gt.class_names
            )  # boxes once, from the final masks
        keep = ((gt.boxes[:, 2] - gt.boxes[:, 0]) >= 1) & ((gt.boxes[:, 3] - gt.boxes[:, 1]) >= 1) & (gt.areas > 1)
        gt = gt[keep]
        tensor = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float().div_(255)
        boxes = torch.from_numpy(gt.boxes)
        target_masks = torch.from_numpy(gt.masks).to(torch.uint8)
        if self.augment:
            if torch.rand((), generator=rng) < 0.5:
                tensor, target_masks = tensor.flip(-1), target_masks.flip(-1)
                width = tensor.shape[-1]
                boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
            if self.flips == "all":
                if torch.rand((), generator=rng) < 0.5:
                    tensor, target_masks = tensor.flip(-2), target_masks.flip(-2)
                    height = tensor.shape[-2]
                    boxes = torch.stack([boxes[:, 0], height - boxes[:, 3], boxes[:, 2], height - boxes[:, 1]], 1)
                if torch.rand((), generator=rng) < 0.5:
                    tensor, target_masks = tensor.transpose(-1, -2), target_masks.transpose(-1, -2)
                    boxes = boxes[:, [1, 0, 3, 2]]
            tensor = _colour_jitter(tensor, rng)
            if self.photometric == "all":
                if torch.rand((), generator=rng) < 0.5:
                    tensor = tensor.mean(0, keepdim=True).expand_as(tensor).clone()
                if torch.rand((), generator=rng) < 0.5:
                    tensor = 1.0 - tensor
        target = {"boxes": boxes, "labels": torch.from_numpy(gt.class_ids + 1), "masks": target_masks}
        return tensor, target


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
    # The sampler only needs the length; a range stands in for the dataset.
    sampler: DistributedSampler = DistributedSampler(
        range(len(dataset.images)),  # type: ignore[arg-type]
        num_replicas=world,
        rank=rank,
        shuffle=True,
        seed=seed,
    )
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


def collate(items: list) -> tuple[list, list]:
    """A batch as (list of images, list of targets): the images keep their own sizes."""
    return [image for image, _ in items], [target for _, target in items]


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
                f"category_id {ann['category_id']} is not among the categories",
                file=train.source,
                record=f"annotation id {ann['id']}",
            )
    used = {ann["category_id"] for ann in train.annotations}
    empty = [cat["name"] for cat in train.categories if cat["id"] not in used]
    if empty:
        events.warn(
            f"{train.source or 'training set'}: no instances of {', '.join(empty)}; the model cannot learn them"
        )
    if val is not None:
        if not val.images:
            raise InstasegError("the validation set has no images", file=val.source)
        unknown = [n for n in val.class_names if n not in names]
        if unknown:
            raise InstasegError(f"validation classes {unknown} are not in the training set", file=val.source)


def training_object_sizes(dataset: Dataset, model: InstanceSegmenter) -> list[float] | None:
    """The object sizes the model learns at its input size: the 10th and 90th percentiles over images
    of each image's median object side, resized as the model resizes that image at inference.

    Stored in the checkpoint, so a caller that knows the objects' size in a new image (the label
    review does) can run it at a scale the model knows (``Predictor.predict(object_size=)``).
    """
    sizes = model.input_sizes
    sides = [
        size * sizes.scale(image["height"], image["width"])
        for image in dataset.images
        if (size := object_size(dataset, image)) is not None
    ]
    return np.percentile(sides, TYPICAL_OBJECT_PERCENTILES).tolist() if sides else None
