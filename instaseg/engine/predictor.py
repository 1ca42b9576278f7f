"""Inference: ``instaseg.load(path) -> Predictor``."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch
from torchvision.models.detection.transform import resize_boxes
from tqdm import tqdm

from instaseg.core import io
from instaseg.data import Dataset
from instaseg.core.errors import InstasegError
from instaseg.core.masks import paste
from instaseg.engine.checkpoint import model_from_checkpoint, read_checkpoint
from instaseg.engine.predict import check_classes
from instaseg.core.structures import Instances

# Longest image side the model is run at; larger images are shrunk first and the results mapped back,
# because a 10000 px image would need tens of GB in the backbone.
MAX_INFERENCE_SIDE = 4096
# Most an image is rescaled, either way, to give its objects a size the model trained on (and never
# past MAX_INFERENCE_SIDE): a stray label size must not blow the image up or shrink it to nothing.
MAX_OBJECT_RESCALE = 4.0


def auto_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(path: str | Path, device: str | torch.device | None = None) -> "Predictor":
    """Load a checkpoint (``best.pt`` / ``last.pt``) for inference.

    Args:
        path: the checkpoint written by ``instaseg train``.
        device: where to run ("cpu", "cuda", ...); CUDA when available by default.
    """
    model, config = model_from_checkpoint(read_checkpoint(path), path)
    return Predictor(model, config["class_names"], device=device, object_sizes=config.get("object_sizes"), config=config)


def input_scale(model: torch.nn.Module, height: int, width: int) -> float:
    """The factor by which ``model``'s own transform resizes an (height, width) image at inference."""
    transform = model.transform
    return min(transform.min_size[-1] / min(height, width), transform.max_size / max(height, width))


class Predictor:
    """A trained model ready for inference on images of any size and mode.

    Attributes:
        class_names: the names the model's class ids index.
        model: the underlying torch module (in eval mode).
        device: where it runs.
        object_sizes: (low, high): the range of typical object sides (square root of the area, in
            pixels) at the model's input in its training images, when the checkpoint records it;
            ``predict`` uses it to rescale images whose object size is known.
        config: what the checkpoint records about the model's training (architecture, recipe,
            class names, the SHA-1s of its training images, ...); empty for a model not loaded
            from a checkpoint.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        class_names: Sequence[str],
        device: str | torch.device | None = None,
        object_sizes: Sequence[float] | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.device = torch.device(device) if device is not None else auto_device()
        self.model = model.to(self.device).eval()
        self.class_names = tuple(class_names)
        self.object_sizes = tuple(object_sizes) if object_sizes is not None else None
        self.config = dict(config or {})

    @property
    def max_detections(self) -> int:
        """The model's own cap on the instances ``predict`` returns per image."""
        return self.model.roi_heads.detections_per_img

    def __repr__(self) -> str:
        return f"Predictor({type(self.model).__name__}, classes={list(self.class_names)}, device={self.device})"

    @torch.inference_mode()
    def predict(
        self,
        image: np.ndarray | str | Path,
        score_threshold: float = 0.5,
        classes: Sequence[str] | None = None,
        max_detections: int | None = None,
        object_size: float | None = None,
    ) -> Instances:
        """Instances found in one image.

        Args:
            image: an (H, W, 3) uint8 RGB array, or an image file (any mode; see ``io.read_image``).
            score_threshold: drop detections scoring below this.
            classes: keep only these class names (all when None).
            max_detections: return at most this many instances, best first (default: the model's
                own cap, 100 for every preset but "small"). Raise it for crowded images; the
                proposals the detections are picked from grow in proportion.
            object_size: the typical side (square root of the area, in pixels) of the objects in
                this image, when known (e.g. from its labels). When they would be smaller or larger
                at the model's input than the objects of most of its training images
                (``object_sizes``), the image is rescaled to bring them to the nearer end of that
                range (Cellpose does the same with the cell diameter), at most
                ``MAX_OBJECT_RESCALE`` times from the model's own input size. Ignored when the
                checkpoint does not record the range.

        Returns:
            ``Instances`` at the image's full resolution; ``data["class_probs"]`` is (N, K): the
            softmax over the K classes (background excluded) of each detection.
        """
        wanted = check_classes(classes, self.class_names)
        tensor, scale, (height, width) = self._prepare(image)
        roi_heads = self.model.roi_heads
        factor = self._input_factor(tensor, object_size, scale)
        with _inference_limits(self.model, score_threshold, max_detections), self._resizing_by(tensor, factor):
            detections = self._detect(tensor)
        keep = detections["scores"] >= score_threshold
        if wanted is not None:
            wanted_ids = torch.tensor([self.class_names.index(c) + 1 for c in wanted], device=self.device)
            keep &= torch.isin(detections["labels"], wanted_ids)
        boxes = (detections["boxes"][keep] / scale).float().cpu().numpy()
        # Boxes are in the caller's pixels, so pasting them there undoes any shrinking of a huge image.
        masks = paste(detections["masks"][keep, 0].float().cpu().numpy(), boxes, height, width)
        return Instances(
            boxes,
            masks,
            (detections["labels"][keep] - 1).cpu().numpy(),
            detections["scores"][keep].cpu().numpy(),
            self.class_names,
            {"class_probs": roi_heads.last_class_probs[0][keep].float().cpu().numpy()},
        )

    @torch.inference_mode()
    def classify_boxes(
        self, image: np.ndarray | str | Path, boxes: np.ndarray, augment: bool = False, object_size: float | None = None
    ) -> np.ndarray:
        """The box head's class probabilities for given boxes, e.g. the labels' own boxes.

        This is the model's second stage judging a region it did not propose itself: the label
        review asks it "what is in this labelled box?".

        Args:
            image: as for ``predict``.
            boxes: (N, 4) xyxy boxes in the image's pixels.
            augment: average four views (test-time augmentation): the input size the model
                predicts at and the largest size it trained at (small objects are classified
                better larger), each also mirrored. Four forward passes instead of one.
            object_size: as for ``predict``: the image is judged at the scale ``predict`` runs it at.

        Returns:
            (N, 1 + K) softmax over background (column 0) and the K classes.
        """
        tensor, scale, _ = self._prepare(image)
        boxes = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4) * scale, device=self.device)
        factor = self._input_factor(tensor, object_size, scale)
        if not augment:
            with self._resizing_by(tensor, factor):
                return self._classify(tensor, boxes).cpu().numpy()
        width = tensor.shape[-1]
        flipped = tensor.flip(-1)
        mirrored = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
        sizes = self.model.transform.min_size  # the training sizes; inference uses the last one only
        views = []
        for view_factor in sorted({factor, factor * max(sizes) / sizes[-1]}):
            with self._resizing_by(tensor, view_factor):
                views += [self._classify(tensor, boxes), self._classify(flipped, mirrored)]
        return torch.stack(views).mean(0).cpu().numpy()

    def _classify(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Softmax of the box head over background and classes for ``boxes`` in ``image``'s pixels."""
        model = self.model
        batch, _ = model.transform([image])
        features = model.backbone(batch.tensors)
        regions = [resize_boxes(boxes, image.shape[-2:], batch.image_sizes[0])]
        pooled = model.roi_heads.box_roi_pool(features, regions, batch.image_sizes)
        class_logits, _ = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
        return torch.softmax(class_logits.float(), -1)

    def _input_factor(self, tensor: torch.Tensor, object_size: float | None, scale: float) -> float:
        """How much to resize ``tensor`` (the image shrunk by ``scale``) for the model, given its objects' size."""
        own = input_scale(self.model, *tensor.shape[-2:])
        if object_size is None or self.object_sizes is None or object_size <= 0:
            return own
        at_input = object_size * scale * own
        wanted = float(np.clip(at_input, *self.object_sizes)) / at_input
        factor = own * float(np.clip(wanted, 1 / MAX_OBJECT_RESCALE, MAX_OBJECT_RESCALE))
        return min(factor, max(own, MAX_INFERENCE_SIDE / max(tensor.shape[-2:])))

    @contextmanager
    def _resizing_by(self, tensor: torch.Tensor, factor: float) -> Iterator[None]:
        """Have the model's transform resize ``tensor`` by ``factor`` inside the block."""
        transform = self.model.transform
        saved = transform.min_size, transform.max_size
        short, long = sorted(tensor.shape[-2:])
        # The transform resizes by min(min_size / short, max_size / long): a whole-pixel short side
        # (as the model's own sizes are) with the long side's bound just out of reach.
        target = max(1, round(short * factor))
        transform.min_size, transform.max_size = (target,), long * target / short + 1
        try:
            yield
        finally:
            transform.min_size, transform.max_size = saved

    def _prepare(self, image: np.ndarray | str | Path) -> tuple[torch.Tensor, float, tuple[int, int]]:
        """The model's input tensor, the scale applied to fit ``MAX_INFERENCE_SIDE``, and the original (H, W)."""
        pixels = io.read_image(image) if isinstance(image, (str, Path)) else io.as_rgb(image)
        height, width = pixels.shape[:2]
        scale = min(1.0, MAX_INFERENCE_SIDE / max(height, width))
        if scale < 1.0:
            warnings.warn(
                f"image is {width}x{height}; running the model at {MAX_INFERENCE_SIDE} px on the long side "
                "and scaling the results back",
                stacklevel=3,
            )
            pixels = cv2.resize(pixels, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        tensor = torch.from_numpy(np.array(pixels)).to(self.device).permute(2, 0, 1).float().div_(255)
        return tensor, scale, (height, width)

    def _detect(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's forward pass on one image, stopping before torchvision pastes the masks.

        Returns boxes in ``image``'s pixels, scores, labels (1-based) and (N, 1, M, M) mask probabilities.
        """
        model = self.model
        batch, _ = model.transform([image])
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        detections = model.roi_heads(features, proposals, batch.image_sizes)[0][0]
        detections["boxes"] = resize_boxes(detections["boxes"], batch.image_sizes[0], image.shape[-2:])
        return detections

    def predict_dataset(
        self, dataset: Dataset, score_threshold: float = 0.05, progress: bool = True
    ) -> dict[int, Instances]:
        """Predict every image of ``dataset``; returns image id -> Instances (input to ``evaluate``)."""
        return dict(self.iter_dataset(dataset, score_threshold, progress))

    def iter_dataset(
        self, dataset: Dataset, score_threshold: float = 0.05, progress: bool = True
    ) -> Iterator[tuple[int, Instances]]:
        """``predict_dataset`` one image at a time: ``evaluate`` takes these pairs as they come, so
        only one image's full-size masks are alive at once (100 at 2048 px are 300 MB per image)."""
        for image in tqdm(dataset.images, desc="predict", unit="img", disable=None if progress else True, leave=False):
            yield image["id"], self.predict(dataset.read_image(image), score_threshold)


@contextmanager
def _inference_limits(model: torch.nn.Module, score_threshold: float, max_detections: int | None) -> Iterator[None]:
    """Run ``model`` with a score floor and a detection cap of the caller's, restoring its own after.

    Dropping low scores inside the model spares computing masks that would be thrown away; the
    model's own floor still holds. A larger cap raises the RPN's proposal counts by the same factor,
    since proposals are what the detections are chosen from.
    """
    roi_heads, rpn = model.roi_heads, model.rpn
    saved = (roi_heads.score_thresh, roi_heads.detections_per_img, rpn._pre_nms_top_n["testing"],
             rpn._post_nms_top_n["testing"])
    if max_detections is not None and max_detections < 1:
        raise InstasegError(f"max_detections must be at least 1, got {max_detections}")
    roi_heads.score_thresh = max(saved[0], score_threshold)
    if max_detections is not None:
        factor = max(1.0, max_detections / saved[1])
        roi_heads.detections_per_img = max_detections
        rpn._pre_nms_top_n["testing"] = round(saved[2] * factor)
        rpn._post_nms_top_n["testing"] = round(saved[3] * factor)
    try:
        yield
    finally:
        (roi_heads.score_thresh, roi_heads.detections_per_img, rpn._pre_nms_top_n["testing"],
         rpn._post_nms_top_n["testing"]) = saved
