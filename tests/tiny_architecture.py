"""A deliberately tiny architecture: proof that adding one is a module plus one ``@register_model``.

Two convolutions (a few hundred parameters) predict per pixel a foreground logit and K class
logits. An instance is a connected region of foreground; its box is the region's extent, its
score the mean foreground probability over it, its class probabilities the mean class softmax,
and its mask grid the RoIAlign of its own foreground probabilities over its box. Everything is
plain torch (connected components by repeated 3x3 max-pooling of pixel ids), so the same code
runs eagerly and traces for ONNX / TorchScript.

Nothing here is meant to segment well; it is meant to go through every verb.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from instaseg.models.base import BoxPredictions, Detections, InputSizes, InstanceSegmenter
from instaseg.models.registry import register_model

MASK_SIZE = 14
FOREGROUND = 0.5


class TinySegmenter(InstanceSegmenter):
    """Per-pixel foreground and class logits; instances are connected foreground regions."""

    def __init__(self, *, num_classes: int, short_side: int, max_side: int, width: int, max_detections: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.sizes = InputSizes(short_side=short_side, max_side=max_side, train_short_sides=(short_side,))
        self.cap = max_detections
        self.features = nn.Conv2d(3, width, 3, padding=1)
        self.logits = nn.Conv2d(width, 1 + num_classes, 1)

    @property
    def input_sizes(self) -> InputSizes:
        return self.sizes

    @property
    def max_detections(self) -> int:
        return self.cap

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, H, W) image in [0, 1] -> (H, W) foreground probability and (K, H, W) class softmax."""
        logits = self.logits(torch.relu(self.features(image[None] - 0.5)))[0]
        return torch.sigmoid(logits[0]), torch.softmax(logits[1:], 0)

    def detect(self, images, *, scales=None, score_threshold=0.05, max_detections=None):
        cap = self.max_detections if max_detections is None else max_detections
        return [
            self._detect_one(image, self._scale(image, scales, i), score_threshold, cap)[0]
            for i, image in enumerate(images)
        ]

    def predict_boxes(self, images, boxes, *, scales=None, masks=True):
        results = []
        for i, (image, image_boxes) in enumerate(zip(images, boxes, strict=True)):
            resized, ratios = _resize(image, self._scale(image, scales, i))
            foreground, class_probs = self(resized)
            rois = _rois(image_boxes.float() * ratios)
            grids = roi_align(foreground[None, None], rois, MASK_SIZE, 1.0, 2)[:, 0]
            object_share = grids.mean((1, 2))
            classes = roi_align(class_probs[None], rois, MASK_SIZE, 1.0, 2).mean((2, 3))
            classes = classes / classes.sum(1, keepdim=True).clamp_min(1e-12)
            probs = torch.cat([1 - object_share[:, None], object_share[:, None] * classes], 1)
            results.append(
                BoxPredictions(probs, grids[:, None].expand(-1, self.num_classes, -1, -1) if masks else None)
            )
        return results

    def losses(self, images, targets, *, resize=True):
        foreground_loss = class_loss = images[0].new_zeros(())
        for image, target in zip(images, targets, strict=True):
            masks = target["masks"].float()
            if resize:
                scale = self.input_sizes.scale(*image.shape[-2:])
                image, _ = _resize(image, scale)
                if len(masks):
                    masks = F.interpolate(masks[None], size=image.shape[-2:], mode="nearest")[0]
            if len(masks) == 0:
                masks = masks.new_zeros((0, *image.shape[-2:]))
            foreground, class_probs = self(image)
            inside = masks.amax(0) > 0 if len(masks) else torch.zeros_like(foreground, dtype=torch.bool)
            foreground_loss = foreground_loss + F.binary_cross_entropy(foreground, inside.float())
            if inside.any():
                # Each foreground pixel's class: that of the last mask covering it.
                owner = (masks * torch.arange(1, len(masks) + 1, device=masks.device)[:, None, None]).argmax(0)
                wanted = (target["labels"] - 1)[owner][inside]
                class_loss = class_loss + F.nll_loss(class_probs.clamp_min(1e-6).log()[:, inside].T, wanted)
        return {"loss_foreground": foreground_loss / len(images), "loss_class": class_loss / len(images)}

    def export_module(self, size):
        return _TinyExport(self, size)

    def _scale(self, image: torch.Tensor, scales: list[float] | None, index: int) -> float:
        return self.input_sizes.scale(*image.shape[-2:]) if scales is None else scales[index]

    def _detect_one(
        self, image: torch.Tensor, scale: float, score_threshold: float, cap: int
    ) -> tuple[Detections, torch.Tensor]:
        """One image's detections, and their (N, h, w) foreground probabilities at the input size."""
        resized, ratios = _resize(image, scale)
        foreground, class_probs = self(resized)
        regions = _components(foreground > FOREGROUND)
        ids = torch.unique(regions)
        ids = ids[ids > 0]
        members = (regions[None] == ids[:, None, None]).float()
        area = members.sum((1, 2))
        scores = (members * foreground).sum((1, 2)) / area
        probs = (members[:, None] * class_probs[None]).sum((2, 3)) / area[:, None]
        order = torch.argsort(scores, descending=True)
        order = order[scores[order] >= score_threshold][:cap]
        members, scores, probs = members[order], scores[order], probs[order]
        boxes = _boxes(members)
        own = members * foreground
        grids = roi_align(own[:, None], _rois(boxes, per_box=True), MASK_SIZE, 1.0, 2)[:, 0]
        found = Detections(boxes / ratios, probs.argmax(1), scores, grids, probs)
        return found, own


class _TinyExport(nn.Module):
    """``forward((S, S, 3) uint8)`` -> boxes, class ids, scores, (N, S, S) masks, class probabilities."""

    def __init__(self, model: TinySegmenter, size: int) -> None:
        super().__init__()
        self.model, self.size = model, size
        self.training = model.training  # the ONNX exporter restores this mode on the whole model afterwards

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pixels = image.permute(2, 0, 1).float() / 255.0
        scale = self.model.input_sizes.scale(self.size, self.size)
        found, own = self.model._detect_one(pixels, scale, 0.0, self.model.max_detections)
        masks = F.interpolate(own[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        return found.boxes, found.class_ids, found.scores, masks, found.class_probs


def _resize(image: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` resized by ``scale`` to whole pixels, and the factors that map xyxy boxes along."""
    height, width = (int(side) for side in image.shape[-2:])
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    ratios = torch.tensor([size[1] / width, size[0] / height] * 2, device=image.device)
    if size == (height, width):
        return image, ratios
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0], ratios


def _components(foreground: torch.Tensor) -> torch.Tensor:
    """(H, W) region ids (0 = background): every pixel takes the largest pixel id connected to it."""
    height, width = (int(side) for side in foreground.shape)
    mask = foreground.float()
    ids = (
        torch.arange(1, height * width + 1, dtype=torch.float32, device=foreground.device).reshape(height, width) * mask
    )
    tracing = torch.jit.is_tracing()
    for _ in range(height + width):
        grown = F.max_pool2d(ids[None, None], 3, 1, 1)[0, 0] * mask
        if not tracing and torch.equal(grown, ids):
            break
        ids = grown
    return ids.long()


def _boxes(members: torch.Tensor) -> torch.Tensor:
    """(N, 4) xyxy boxes enclosing each (N, H, W) region, in pixel edges."""
    rows, cols = members.amax(2), members.amax(1)
    # argmax gives the first occupied row / column; the last is the largest occupied index.
    last_row = (rows * torch.arange(1, rows.shape[1] + 1, device=rows.device)).amax(1)
    last_col = (cols * torch.arange(1, cols.shape[1] + 1, device=cols.device)).amax(1)
    return torch.stack([cols.argmax(1).float(), rows.argmax(1).float(), last_col, last_row], 1)


def _rois(boxes: torch.Tensor, *, per_box: bool = False) -> torch.Tensor:
    """RoIAlign's (N, 5) rows: the feature map index (the box's own with ``per_box``, else 0) then the box."""
    index = torch.arange(len(boxes), dtype=boxes.dtype, device=boxes.device) if per_box else boxes.new_zeros(len(boxes))
    return torch.cat([index[:, None], boxes], 1)


PRESET = {"short_side": 64, "max_side": 128, "width": 8, "max_detections": 20}


@register_model(
    "tiny_test_segmenter",
    description="test only: two convolutions, instances as connected foreground regions",
    backbone="2 convs",
    presets={"cpu": PRESET, "gpu": PRESET, "small": PRESET},
)
def tiny_test_segmenter(*, num_classes: int, **kw) -> TinySegmenter:
    """The tiny test architecture; ``kw`` as in ``TinySegmenter``."""
    return TinySegmenter(num_classes=num_classes, **kw)
