"""The model protocol: what every architecture offers, and all that the rest of instaseg may use.

Training, the predictor, export and the label review talk to a model only through
``InstanceSegmenter``; nothing outside ``instaseg.models`` looks behind it. An architecture is an
``nn.Module`` subclassing it, built by a keyword-only builder registered with ``@register_model``.

Conventions shared by every method:

* images are float (3, H, W) tensors in [0, 1], RGB, on the model's device, at any size;
* boxes are (N, 4) float ``[x1, y1, x2, y2]`` in the pixels of the image they belong to;
* class ids are 0-based indices into the model's K classes (no background id);
* a mask comes as an (M, M) grid of probabilities covering its box (``masks.paste`` puts it
  into the image), so a model never allocates full-image masks for detections it returns.

Per-call options are arguments: no method changes the module's state, so one loaded model can serve
concurrent calls with different options.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class InputSizes:
    """The input scaling a model trained and predicts at.

    Attributes:
        short_side: the short side images are resized to at inference.
        max_side: the bound on the long side, which wins over ``short_side`` for very elongated images.
        train_short_sides: the short sides drawn at random per training batch (scale jitter);
            ``short_side`` when the model trains at one scale.
    """

    short_side: int
    max_side: int
    train_short_sides: tuple[int, ...]

    def scale(self, height: int, width: int) -> float:
        """The factor by which an (height, width) image is resized at inference."""
        return min(self.short_side / min(height, width), self.max_side / max(height, width))


@dataclass(frozen=True)
class Detections:
    """What ``detect`` returns for one image, in that image's pixels, best score first.

    Attributes:
        boxes: (N, 4) float boxes.
        class_ids: (N,) int64 class ids.
        scores: (N,) float confidences in [0, 1].
        masks: (N, M, M) float mask probabilities over each box.
        class_probs: (N, K) float: the softmax over the K classes of each detection.
    """

    boxes: torch.Tensor
    class_ids: torch.Tensor
    scores: torch.Tensor
    masks: torch.Tensor
    class_probs: torch.Tensor


@dataclass(frozen=True)
class BoxPredictions:
    """What ``predict_boxes`` returns for given boxes of one image, one row per box.

    Attributes:
        class_probs: (N, 1 + K) softmax over background (column 0) and the K classes.
        masks: (N, K, M, M) mask probabilities over each box, one grid per class; None when
            ``predict_boxes`` was asked for the class probabilities only.
    """

    class_probs: torch.Tensor
    masks: torch.Tensor | None


class InstanceSegmenter(nn.Module, ABC):
    """The protocol every architecture implements (see the module docstring for the conventions)."""

    num_classes: int

    @property
    @abstractmethod
    def input_sizes(self) -> InputSizes:
        """The input scaling the model trained at and predicts at."""

    @property
    @abstractmethod
    def max_detections(self) -> int:
        """The most detections ``detect`` returns per image when the caller gives no cap."""

    @abstractmethod
    def detect(
        self,
        images: list[torch.Tensor],
        *,
        scales: list[float] | None = None,
        score_threshold: float = 0.05,
        max_detections: int | None = None,
    ) -> list[Detections]:
        """Instances in each image (inference: call under ``torch.inference_mode`` in eval mode).

        Args:
            images: the images, each at its own size.
            scales: per image, the factor to resize it by before the network sees it (default:
                ``input_sizes.scale``); results are always in the given images' pixels.
            score_threshold: leave out detections scoring below this (the model may keep a higher
                floor of its own).
            max_detections: most detections per image (default ``max_detections``).
        """

    @abstractmethod
    def predict_boxes(
        self,
        images: list[torch.Tensor],
        boxes: list[torch.Tensor],
        *,
        scales: list[float] | None = None,
        masks: bool = True,
    ) -> list[BoxPredictions]:
        """The model's judgement of regions it was given: the class probabilities and masks for ``boxes``.

        This is "what is in this box?": the label review asks it of the labels' boxes, and a
        box-to-mask assistant of the box a user drew. ``boxes`` holds an (N, 4) tensor per image;
        ``scales`` as for ``detect``. Without ``masks`` only the class probabilities are computed
        (the mask head costs as much again on many boxes).
        """

    @abstractmethod
    def losses(
        self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]], *, resize: bool = True
    ) -> dict[str, torch.Tensor]:
        """The training losses by name (their sum is what training minimises), in train mode.

        ``targets`` hold, per image, ``boxes`` (N, 4), ``labels`` (N,) int64 class ids + 1 (0 is
        the background) and ``masks`` (N, H, W) uint8. With ``resize`` the model draws a short side
        from ``input_sizes.train_short_sides`` and resizes the batch itself; without it the images
        are taken at the size given (the caller has scaled and cropped them already).
        """

    @abstractmethod
    def export_module(self, size: int) -> nn.Module:
        """A module for ONNX / TorchScript export: ``forward((S, S, 3) uint8 image)`` returns
        ``(boxes, class_ids, scores, masks (N, S, S), class_probs)`` for an S x S input, with every
        detection above the model's own score floor."""
