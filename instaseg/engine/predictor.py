"""Inference: ``instaseg.load(path) -> Predictor``.

The predictor talks to its model only through the model protocol (``instaseg.models.base``), so
it serves any registered architecture the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from instaseg.core import events, io
from instaseg.core.errors import InstasegError
from instaseg.core.masks import paste
from instaseg.core.structures import Instances
from instaseg.data import Dataset
from instaseg.engine.checkpoint import model_from_checkpoint, read_checkpoint
from instaseg.engine.predict import check_classes
from instaseg.models.base import InstanceSegmenter

# Longest image side the model is run at; larger images are shrunk first and the results mapped back,
# because a 10000 px image would need tens of GB in the backbone.
MAX_INFERENCE_SIDE = 4096
# Most an image is rescaled, either way, to give its objects a size the model trained on (and never
# past MAX_INFERENCE_SIDE): a stray label size must not blow the image up or shrink it to nothing.
MAX_OBJECT_RESCALE = 4.0


def auto_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load(path: str | Path, device: str | torch.device | None = None) -> Predictor:
    """Load a checkpoint (``best.pt`` / ``last.pt``) for inference.

    Args:
        path: the checkpoint written by ``instaseg train``.
        device: where to run ("cpu", "cuda", ...); CUDA when available by default.
    """
    model, config = model_from_checkpoint(read_checkpoint(path), path)
    return Predictor(
        model, config["class_names"], device=device, object_sizes=config.get("object_sizes"), config=config
    )


class Predictor:
    """A trained model ready for inference on images of any size and mode.

    The predictor is stateless: every option is an argument of the call, and no call writes to
    the model or to the predictor. One predictor (its weights loaded once) can therefore serve
    concurrent calls from many threads, each with its own options, and every call gives what it
    would give alone.

    Attributes:
        class_names: the names the model's class ids index.
        model: the underlying ``InstanceSegmenter`` (in eval mode).
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
        model: InstanceSegmenter,
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
        return self.model.max_detections

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
        if max_detections is not None and max_detections < 1:
            raise InstasegError(f"max_detections must be at least 1, got {max_detections}")
        found = self.model.detect(
            [tensor],
            scales=[self._input_factor(tensor, object_size, scale)],
            score_threshold=score_threshold,
            max_detections=max_detections,
        )[0]
        keep = torch.ones_like(found.scores, dtype=torch.bool)
        if wanted is not None:
            wanted_ids = torch.tensor([self.class_names.index(c) for c in wanted], device=found.class_ids.device)
            keep = torch.isin(found.class_ids, wanted_ids)
        boxes = (found.boxes[keep] / scale).float().cpu().numpy()
        # Boxes are in the caller's pixels, so pasting them there undoes any shrinking of a huge image.
        masks = paste(found.masks[keep].float().cpu().numpy(), boxes, height, width)
        return Instances(
            boxes,
            masks,
            found.class_ids[keep].cpu().numpy(),
            found.scores[keep].cpu().numpy(),
            self.class_names,
            {"class_probs": found.class_probs[keep].float().cpu().numpy()},
        )

    @torch.inference_mode()
    def classify_boxes(
        self, image: np.ndarray | str | Path, boxes: np.ndarray, augment: bool = False, object_size: float | None = None
    ) -> np.ndarray:
        """The model's class probabilities for given boxes, e.g. the labels' own boxes.

        This is the model judging a region it did not propose itself: the label review asks it
        "what is in this labelled box?".

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
        regions = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4) * scale, device=self.device)
        factor = self._input_factor(tensor, object_size, scale)
        if not augment:
            return self._class_probs(tensor, regions, factor).cpu().numpy()
        width = tensor.shape[-1]
        flipped = tensor.flip(-1)
        mirrored = torch.stack([width - regions[:, 2], regions[:, 1], width - regions[:, 0], regions[:, 3]], 1)
        sizes = self.model.input_sizes
        views = []
        for view_factor in sorted({factor, factor * max(sizes.train_short_sides) / sizes.short_side}):
            views += [
                self._class_probs(tensor, regions, view_factor),
                self._class_probs(flipped, mirrored, view_factor),
            ]
        return torch.stack(views).mean(0).cpu().numpy()

    @torch.inference_mode()
    def box_masks(
        self,
        image: np.ndarray | str | Path,
        boxes: np.ndarray,
        class_ids: np.ndarray | Sequence[int] | None = None,
        *,
        object_size: float | None = None,
    ) -> np.ndarray:
        """The model's mask of the object in each given box, e.g. a box a user drew.

        Args:
            image: as for ``predict``.
            boxes: (N, 4) xyxy boxes in the image's pixels.
            class_ids: per box, the class whose mask to take (0-based ids into ``class_names``);
                by default each box's most probable class.
            object_size: as for ``predict``.

        Returns:
            (N, H, W) bool masks at the image's full resolution.
        """
        tensor, scale, (height, width) = self._prepare(image)
        pixel_boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        regions = torch.as_tensor(pixel_boxes * scale, device=self.device)
        found = self.model.predict_boxes([tensor], [regions], scales=[self._input_factor(tensor, object_size, scale)])[
            0
        ]
        assert found.masks is not None  # predict_boxes gives masks unless told not to
        if class_ids is None:
            chosen = found.class_probs[:, 1:].argmax(1)
        else:
            chosen = torch.as_tensor(np.asarray(class_ids, np.int64).reshape(-1), device=found.masks.device)
            if len(chosen) != len(pixel_boxes):
                raise InstasegError(f"got {len(chosen)} class ids for {len(pixel_boxes)} boxes")
            if len(chosen) and (int(chosen.min()) < 0 or int(chosen.max()) >= len(self.class_names)):
                raise InstasegError(f"class ids must lie in 0..{len(self.class_names) - 1}")
        grids = found.masks[torch.arange(len(chosen), device=chosen.device), chosen]
        return paste(grids.float().cpu().numpy(), pixel_boxes, height, width)

    def _class_probs(self, image: torch.Tensor, boxes: torch.Tensor, factor: float) -> torch.Tensor:
        """Softmax over background and classes for ``boxes`` in ``image``'s pixels, ``image`` resized by ``factor``."""
        return self.model.predict_boxes([image], [boxes], scales=[factor], masks=False)[0].class_probs

    def _input_factor(self, tensor: torch.Tensor, object_size: float | None, scale: float) -> float:
        """How much to resize ``tensor`` (the image shrunk by ``scale``) for the model, given its objects' size."""
        own = self.model.input_sizes.scale(*tensor.shape[-2:])
        if object_size is None or self.object_sizes is None or object_size <= 0:
            return own
        low, high = self.object_sizes
        at_input = object_size * scale * own
        wanted = min(max(at_input, low), high) / at_input
        factor = own * float(np.clip(wanted, 1 / MAX_OBJECT_RESCALE, MAX_OBJECT_RESCALE))
        return min(factor, max(own, MAX_INFERENCE_SIDE / max(tensor.shape[-2:])))

    def _prepare(self, image: np.ndarray | str | Path) -> tuple[torch.Tensor, float, tuple[int, int]]:
        """The model's input tensor, the scale applied to fit ``MAX_INFERENCE_SIDE``, and the original (H, W)."""
        pixels = io.read_image(image) if isinstance(image, (str, Path)) else io.as_rgb(image)
        height, width = pixels.shape[:2]
        scale = min(1.0, MAX_INFERENCE_SIDE / max(height, width))
        if scale < 1.0:
            events.warn(
                f"image is {width}x{height}; running the model at {MAX_INFERENCE_SIDE} px on the long side "
                "and scaling the results back",
                stacklevel=3,
            )
            pixels = cv2.resize(pixels, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        tensor = torch.from_numpy(np.array(pixels)).to(self.device).permute(2, 0, 1).float().div_(255)
        return tensor, scale, (height, width)

    def predict_dataset(
        self, dataset: Dataset, score_threshold: float = 0.05, progress: bool = True
    ) -> dict[int, Instances]:
        """Predict every image of ``dataset``; returns image id -> Instances (input to ``evaluate``)."""
        return dict(self.iter_dataset(dataset, score_threshold, progress))

    def iter_dataset(
        self, dataset: Dataset, score_threshold: float = 0.05, progress: bool = True
    ) -> Iterator[tuple[int, Instances]]:
        """``predict_dataset`` one image at a time: ``evaluate`` takes these pairs as they come, so
        only one image's full-size masks are alive at once (100 at 2048 px are 300 MB per image).

        With ``progress``, reports a "predict" task to the event listeners."""
        images = events.track(dataset.images, "predict", unit="img") if progress else dataset.images
        for image in images:
            yield image["id"], self.predict(dataset.read_image(image), score_threshold)
