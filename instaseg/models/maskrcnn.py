"""Mask R-CNN (He et al. 2017) assembled from torchvision's parts, built to train from scratch.

Backbone (a ResNet/ResNeXt or MobileNetV3) + FPN neck + RPN + box and mask heads. Every part is
torchvision's own; what this module chooses is how they are configured:

* no pretrained weights are ever requested (``weights=None``), so nothing is downloaded;
* normalisation trains from scratch: GroupNorm (default, independent of batch size, which is small
  on a CPU) or BatchNorm in train mode -- never torchvision's FrozenBatchNorm, which only makes
  sense on top of ImageNet statistics;
* the sizes (input size, anchors, proposal counts, RoI samples, head widths) are plain keyword
  arguments, so a preset in the registry can shrink the model for CPUs and small images.

Detection also returns the softmax class probabilities of every kept detection, which review
tools use to spot labels the model disagrees with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, paste_masks_in_image
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.models.detection.transform import GeneralizedRCNNTransform, _resize_image_and_masks, resize_boxes
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import initLevelMapper

from instaseg.models.base import BoxPredictions, Detections, InputSizes, InstanceSegmenter
from instaseg.models.registry import register_model

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d")
BACKBONES = (*RESNETS, "mobilenet_v3_large")
# Index of the last block of mobilenet_v3_large.features at strides 4, 8, 16 and 32, so that
# ``returned_layers`` means the same strides for every backbone.
MOBILENET_STAGE_ENDS = {1: 3, 2: 6, 3: 12, 4: 16}


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups; fewer when the channel count is not a multiple of 32."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """The normalisation factory for ``norm``: "gn" or "bn" (both train from scratch)."""
    if norm == "gn":
        return group_norm
    if norm == "bn":
        return nn.BatchNorm2d
    raise ValueError(f"norm must be 'gn' or 'bn', got {norm!r}")


def build_backbone(name: str, *, norm: str, fpn_channels: int, returned_layers: Sequence[int]) -> BackboneWithFPN:
    """A randomly initialised backbone with an FPN neck (max-pooled extra level on top).

    ``norm`` applies to the backbone; the FPN always uses GroupNorm.

    ``returned_layers`` counts stages from 1 (for ResNets layer1..layer4, strides 4..32); the
    FPN gives one output per returned stage plus the pooled level.
    """
    layer = norm_layer(norm)
    if name in RESNETS:
        body = getattr(resnet, name)(weights=None, norm_layer=layer)
        stage_channels = [64, 128, 256, 512] if name in ("resnet18", "resnet34") else [256, 512, 1024, 2048]
        return BackboneWithFPN(
            body,
            return_layers={f"layer{k}": str(i) for i, k in enumerate(returned_layers)},
            in_channels_list=[stage_channels[k - 1] for k in returned_layers],
            out_channels=fpn_channels,
            extra_blocks=LastLevelMaxPool(),
            norm_layer=group_norm,
        )
    if name == "mobilenet_v3_large":
        # MobileNetV3's own BatchNorm settings (eps 1e-3) suit it better than the defaults.
        body = mobilenet_v3_large(weights=None, norm_layer=layer if norm == "gn" else partial(nn.BatchNorm2d, eps=1e-3))
        features = body.features
        return BackboneWithFPN(
            features,
            return_layers={str(MOBILENET_STAGE_ENDS[k]): str(i) for i, k in enumerate(returned_layers)},
            in_channels_list=[features[MOBILENET_STAGE_ENDS[k]].out_channels for k in returned_layers],
            out_channels=fpn_channels,
            extra_blocks=LastLevelMaxPool(),
            norm_layer=group_norm,
        )
    raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")


class MaskRCNNSegmenter(MaskRCNN, InstanceSegmenter):
    """torchvision's ``MaskRCNN`` behind the model protocol (same modules, so the same state dict).

    Inference runs torchvision's own parts step by step rather than through ``forward``, because
    ``forward`` reads its options (input size, proposal counts, score floor, detection cap) from
    the modules; here they are arguments, so concurrent calls with different options never race.
    """

    backbone: nn.Module
    transform: GeneralizedRCNNTransform
    rpn: RegionProposalNetwork
    roi_heads: RoIHeads

    def __init__(self, backbone: nn.Module, num_classes: int, **kwargs) -> None:
        super().__init__(backbone, **kwargs)
        self.num_classes = num_classes

    @property
    def input_sizes(self) -> InputSizes:
        sizes = tuple(int(s) for s in self.transform.min_size)
        return InputSizes(short_side=sizes[-1], max_side=int(self.transform.max_size), train_short_sides=sizes)

    @property
    def max_detections(self) -> int:
        return self.roi_heads.detections_per_img

    def losses(self, images, targets, *, resize=True):
        # torchvision's transform resizes only in training and only when _skip_resize is unset.
        self.transform._skip_resize = not resize
        return self(images, targets)

    def detect(self, images, *, scales=None, score_threshold=0.05, max_detections=None):
        cap = self.max_detections if max_detections is None else max_detections
        if cap < 1:
            raise ValueError(f"max_detections must be at least 1, got {cap}")
        batch, features = self._features(images, scales)
        # Detections are chosen from the proposals, so a larger cap needs proportionally more of them.
        growth = max(1.0, cap / self.max_detections)
        proposals = self._proposals(
            batch,
            features,
            pre_nms_top_n=round(self.rpn._pre_nms_top_n["testing"] * growth),
            post_nms_top_n=round(self.rpn._post_nms_top_n["testing"] * growth),
        )
        heads = self.roi_heads
        class_logits, box_regression = heads.box_predictor(
            heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes))
        )
        # Dropping low scores before the mask head spares masks that would be thrown away.
        found = _select_detections(
            heads,
            class_logits,
            box_regression,
            proposals,
            batch.image_sizes,
            score_floor=max(heads.score_thresh, score_threshold),
            cap=cap,
        )
        labels = [labels for _, _, labels, _ in found]
        mask_logits = self._mask_logits(features, [boxes for boxes, _, _, _ in found], batch.image_sizes)
        masks = maskrcnn_inference(mask_logits, labels)
        return [
            Detections(
                boxes=resize_boxes(boxes, input_size, image.shape[-2:]),
                class_ids=labels - 1,
                scores=scores,
                masks=grids[:, 0],
                class_probs=class_probs,
            )
            for (boxes, scores, labels, class_probs), grids, input_size, image in zip(
                found, masks, batch.image_sizes, images, strict=True
            )
        ]

    def predict_boxes(self, images, boxes, *, scales=None, masks=True):
        batch, features = self._features(images, scales)
        regions = [
            resize_boxes(image_boxes.float(), image.shape[-2:], input_size)
            for image_boxes, image, input_size in zip(boxes, images, batch.image_sizes, strict=True)
        ]
        heads = self.roi_heads
        class_logits, _ = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, regions, batch.image_sizes)))
        per_image = [len(r) for r in regions]
        class_probs = torch.softmax(class_logits.float(), -1).split(per_image)
        if not masks:
            return [BoxPredictions(class_probs=p, masks=None) for p in class_probs]
        # Column 0 of the mask predictor is the background's, which has no mask.
        grids = self._mask_logits(features, regions, batch.image_sizes).sigmoid()[:, 1:].split(per_image)
        return [BoxPredictions(class_probs=p, masks=m) for p, m in zip(class_probs, grids, strict=True)]

    def export_module(self, size):
        return _ExportModule(self, size)

    def _features(
        self, images: list[torch.Tensor], scales: list[float] | None
    ) -> tuple[ImageList, dict[str, torch.Tensor]]:
        """The normalised, resized and padded batch and the backbone's feature maps."""
        if scales is None:
            scales = [self.input_sizes.scale(*image.shape[-2:]) for image in images]
        resized = [_resize(self.transform.normalize(image), scale) for image, scale in zip(images, scales, strict=True)]
        batch = ImageList(
            self.transform.batch_images(resized, size_divisible=self.transform.size_divisible),
            [(image.shape[-2], image.shape[-1]) for image in resized],
        )
        return batch, self.backbone(batch.tensors)

    def _proposals(
        self, batch: ImageList, features: dict[str, torch.Tensor], *, pre_nms_top_n: int, post_nms_top_n: int
    ) -> list[torch.Tensor]:
        """The RPN's proposals per image (``RegionProposalNetwork.forward`` at inference, counts as arguments)."""
        rpn = self.rpn
        levels = list(features.values())
        objectness, deltas = rpn.head(levels)
        anchors = _anchors(rpn.anchor_generator, batch, levels)
        anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        return _filter_proposals(
            rpn,
            proposals,
            objectness,
            batch.image_sizes,
            anchors_per_level,
            pre_nms_top_n=pre_nms_top_n,
            post_nms_top_n=post_nms_top_n,
        )

    def _mask_logits(
        self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> torch.Tensor:
        """The mask head's (N, 1 + K, M, M) logits for ``boxes`` (in input pixels) of every image."""
        heads = self.roi_heads
        return heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, boxes, image_sizes)))


class _ExportModule(nn.Module):
    """Plain tensors in and out, for tracing: ``forward((S, S, 3) uint8)`` -> boxes, class ids, scores,
    (N, S, S) masks and class probabilities of every detection above the model's own score floor."""

    def __init__(self, model: MaskRCNNSegmenter, size: int) -> None:
        super().__init__()
        self.model = model
        self.size = size
        # The ONNX exporter puts the module back in the mode it found it in, which would otherwise be
        # nn.Module's default (training) and leave the shared model in training mode after an export.
        self.training = model.training

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pixels = image.permute(2, 0, 1).float() / 255.0
        scale = self.model.input_sizes.scale(self.size, self.size)
        found = self.model.detect([pixels], scales=[scale], score_threshold=self.model.roi_heads.score_thresh)[0]
        # torchvision's pasting traces (the predictor's own, numpy, does not).
        masks = paste_masks_in_image(found.masks[:, None], found.boxes, (self.size, self.size))
        return found.boxes, found.class_ids, found.scores, masks[:, 0], found.class_probs


def _resize(image: torch.Tensor, scale: float) -> torch.Tensor:
    """``image`` resized by ``scale``, as torchvision's transform resizes it.

    The short side becomes a whole number of pixels (as the model's own sizes are), with the long
    side's bound just out of reach, so the factor is exactly the one asked for after that rounding.
    """
    # int(): while tracing, the sides are tensors; an export is for one fixed size anyway.
    short, long = sorted(int(side) for side in image.shape[-2:])
    target = max(1, round(short * scale))
    resized, _ = _resize_image_and_masks(image, float(target), long * target / short + 1)
    return resized


def _anchors(generator: AnchorGenerator, batch: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """``AnchorGenerator.forward`` without storing its cell anchors, moved to the features' device, on the module."""
    grid_sizes = [feature_map.shape[-2:] for feature_map in feature_maps]
    image_size = batch.tensors.shape[-2:]
    dtype, device = feature_maps[0].dtype, feature_maps[0].device
    strides = [
        [
            torch.empty((), dtype=torch.int64, device=device).fill_(image_size[0] // g[0]),
            torch.empty((), dtype=torch.int64, device=device).fill_(image_size[1] // g[1]),
        ]
        for g in grid_sizes
    ]
    grid = []
    for (grid_height, grid_width), (stride_height, stride_width), cell in zip(
        grid_sizes, strides, generator.cell_anchors, strict=True
    ):
        cell = cell.to(dtype=dtype, device=device)
        shifts_x = torch.arange(0, grid_width, dtype=torch.int32, device=device) * stride_width
        shifts_y = torch.arange(0, grid_height, dtype=torch.int32, device=device) * stride_height
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        grid.append((shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4))
    return [torch.cat(grid) for _ in batch.image_sizes]


def _filter_proposals(
    rpn: RegionProposalNetwork,
    proposals: torch.Tensor,
    objectness: torch.Tensor,
    image_shapes: list[tuple[int, int]],
    anchors_per_level: list[int],
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
) -> list[torch.Tensor]:
    """``RegionProposalNetwork.filter_proposals`` with the proposal counts as arguments.

    Per level, the ``pre_nms_top_n`` best-scoring proposals; per image, after dropping tiny and
    low-scoring ones and NMS per level, the ``post_nms_top_n`` best.
    """
    num_images, device = proposals.shape[0], proposals.device
    objectness = objectness.detach().reshape(num_images, -1)
    levels = (
        torch.cat(
            [torch.full((n,), index, dtype=torch.int64, device=device) for index, n in enumerate(anchors_per_level)]
        )
        .reshape(1, -1)
        .expand_as(objectness)
    )
    top_n, offset = [], 0
    for level_objectness in objectness.split(anchors_per_level, 1):
        count = det_utils._topk_min(level_objectness, pre_nms_top_n, 1)
        top_n.append(level_objectness.topk(count, dim=1)[1] + offset)
        offset += level_objectness.shape[1]
    top_n_idx = torch.cat(top_n, dim=1)
    batch_idx = torch.arange(num_images, device=device)[:, None]
    objectness, levels, proposals = (
        objectness[batch_idx, top_n_idx],
        levels[batch_idx, top_n_idx],
        proposals[batch_idx, top_n_idx],
    )
    kept = []
    for boxes, scores, level, image_shape in zip(
        proposals, torch.sigmoid(objectness), levels, image_shapes, strict=True
    ):
        boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
        keep = box_ops.remove_small_boxes(boxes, rpn.min_size)
        boxes, scores, level = boxes[keep], scores[keep], level[keep]
        keep = torch.where(scores >= rpn.score_thresh)[0]
        boxes, scores, level = boxes[keep], scores[keep], level[keep]
        keep = box_ops.batched_nms(boxes, scores, level, rpn.nms_thresh)[:post_nms_top_n]
        kept.append(boxes[keep])
    return kept


def _select_detections(
    heads: RoIHeads,
    class_logits: torch.Tensor,
    box_regression: torch.Tensor,
    proposals: list[torch.Tensor],
    image_shapes: list[tuple[int, int]],
    *,
    score_floor: float,
    cap: int,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``RoIHeads.postprocess_detections`` with the score floor and the cap as arguments, also
    returning the class probabilities of each kept detection.

    Per image: (boxes, scores, labels (1-based), (N, K) class probabilities): the scores above
    ``score_floor``, boxes that are not tiny, class-wise NMS, then the best ``cap``. The class
    probabilities are the softmax over the K object classes (background left out and the rest
    renormalised) of the proposal each detection came from.
    """
    num_classes = class_logits.shape[-1]
    per_image = [len(p) for p in proposals]
    all_boxes = heads.box_coder.decode(box_regression, proposals).split(per_image)
    all_scores = torch.softmax(class_logits, -1).split(per_image)
    results = []
    for boxes, scores, image_shape in zip(all_boxes, all_scores, image_shapes, strict=True):
        boxes = box_ops.clip_boxes_to_image(boxes, image_shape)[:, 1:].reshape(-1, 4)
        rows = torch.arange(len(scores), device=scores.device)[:, None].expand(-1, num_classes - 1).reshape(-1)
        labels = torch.arange(1, num_classes, device=scores.device).repeat(len(scores))
        flat_scores = scores[:, 1:].reshape(-1)
        keep = torch.where(flat_scores > score_floor)[0]
        keep = keep[box_ops.remove_small_boxes(boxes[keep], min_size=1e-2)]
        keep = keep[box_ops.batched_nms(boxes[keep], flat_scores[keep], labels[keep], heads.nms_thresh)]
        keep = keep[:cap]
        foreground = scores[rows[keep], 1:]
        class_probs = foreground / foreground.sum(1, keepdim=True).clamp_min(1e-12)
        results.append((boxes[keep], flat_scores[keep], labels[keep], class_probs))
    return results


def build_maskrcnn(
    *,
    num_classes: int,
    backbone: str = "resnet50",
    norm: str = "gn",
    fpn_channels: int = 256,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    min_size: int = 800,
    max_size: int = 1333,
    train_scales: Sequence[float] = (1.0,),
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 512,
    box_head_convs: int = 4,
    box_head_fc: int = 1024,
    mask_head_convs: int = 4,
    box_detections_per_img: int = 100,
) -> MaskRCNNSegmenter:
    """A Mask R-CNN with random weights; the defaults are the paper's (torchvision's "v2" heads).

    Args:
        num_classes: object classes, background excluded.
        backbone: one of ``BACKBONES``.
        norm: "gn" (GroupNorm everywhere) or "bn" (BatchNorm in the backbone, GroupNorm in neck and heads).
        fpn_channels: width of the FPN and of the heads.
        returned_layers: backbone stages fed to the FPN (1 = stride 4 ... 4 = stride 32).
        anchor_sizes: one anchor size in input pixels per FPN level (returned stages + pooled level).
        aspect_ratios: anchor aspect ratios, shared by every level.
        min_size, max_size: images are resized so the short side is ``min_size`` (long side at most ``max_size``).
        train_scales: multiples of ``min_size`` drawn at random per training batch (scale jitter).
        rpn_*: proposals kept before/after NMS per level and image, and RPN anchors sampled per image.
        box_batch_size_per_image: RoIs sampled per image to train the box head.
        box_head_convs, box_head_fc: 3x3 convs (GroupNorm) then one hidden FC layer of the box head.
        mask_head_convs: 3x3 convs (GroupNorm) of the mask head before its 2x upsampling.
        box_detections_per_img: most detections returned per image.
    """
    if num_classes < 1:
        raise ValueError("num_classes must be at least 1")
    levels = len(returned_layers) + 1
    if len(anchor_sizes) != levels:
        raise ValueError(f"need one anchor size per FPN level ({levels}), got {len(anchor_sizes)}")
    body = build_backbone(backbone, norm=norm, fpn_channels=fpn_channels, returned_layers=returned_layers)
    head_norm = group_norm
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), (tuple(aspect_ratios),) * levels)
    box_head = FastRCNNConvFCHead(
        (fpn_channels, 7, 7), [fpn_channels] * box_head_convs, [box_head_fc], norm_layer=head_norm
    )
    min_sizes = tuple(sorted({round(min_size * s) for s in train_scales} - {min_size})) + (min_size,)
    model = MaskRCNNSegmenter(
        body,
        num_classes,
        min_size=min_sizes,
        max_size=max(max_size, round(max_size * max(train_scales))),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(fpn_channels, len(aspect_ratios)),
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_roi_pool=_roi_align(returned_layers, 7),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(box_head_fc, num_classes + 1),
        box_batch_size_per_image=box_batch_size_per_image,
        box_detections_per_img=box_detections_per_img,
        mask_roi_pool=_roi_align(returned_layers, 14),
        mask_head=MaskRCNNHeads(fpn_channels, [fpn_channels] * mask_head_convs, 1, norm_layer=head_norm),
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1),
    )
    return model


def _roi_align(returned_layers: Sequence[int], output_size: int) -> MultiScaleRoIAlign:
    """RoIAlign over the FPN levels of the backbone stages ``returned_layers`` (stage k has stride 2^(k+1)).

    torchvision infers the levels' scales from the first feature maps it pools and stores them on
    the module; giving them here keeps every call read-only and independent of that first image.
    """
    pool = MultiScaleRoIAlign(
        featmap_names=[str(i) for i in range(len(returned_layers))], output_size=output_size, sampling_ratio=2
    )
    pool.scales = [2.0 ** -(k + 1) for k in returned_layers]
    pool.map_levels = initLevelMapper(
        returned_layers[0] + 1,
        returned_layers[-1] + 1,
        canonical_scale=pool.canonical_scale,
        canonical_level=pool.canonical_level,
    )
    return pool


# -- presets ----------------------------------------------------------------------------------------
# "gpu": the paper's sizes, GroupNorm throughout. "cpu": what keeps a training step affordable on a
# CPU: BatchNorm in the backbone (GroupNorm is much slower there), a smaller input, a 128-channel FPN
# and heads (at 256 channels the stride-4 FPN and RPN convs cost more than the ResNet-18 body),
# lighter proposal counts and RoI sampling, an MLP box head and a 2-conv mask head. "small": for
# images of about 128-256 px (the synthetic shapes): no upscaling, three FPN stages, anchors from
# 16 px, narrow heads.
PRESETS: dict[str, dict] = {
    "gpu": {"train_scales": (0.8, 0.9, 1.0, 1.1, 1.2)},
    "cpu": {
        "norm": "bn",
        "min_size": 512,
        "max_size": 853,
        "train_scales": (0.8, 0.9, 1.0, 1.1, 1.2),
        "fpn_channels": 128,
        "anchor_sizes": (16, 32, 64, 128, 256),
        "rpn_pre_nms_top_n_train": 1000,
        "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 500,
        "rpn_post_nms_top_n_test": 300,
        "box_batch_size_per_image": 128,
        "box_head_convs": 0,
        "mask_head_convs": 2,
    },
    "small": {
        "norm": "bn",
        "min_size": 128,
        "max_size": 256,
        "train_scales": (0.8, 0.9, 1.0, 1.1, 1.2),
        "fpn_channels": 128,
        "returned_layers": (1, 2, 3),
        "anchor_sizes": (16, 32, 64, 128),
        "rpn_pre_nms_top_n_train": 400,
        "rpn_post_nms_top_n_train": 200,
        "rpn_pre_nms_top_n_test": 300,
        "rpn_post_nms_top_n_test": 100,
        "box_batch_size_per_image": 64,
        "box_head_convs": 0,
        "box_head_fc": 512,
        "mask_head_convs": 2,
        "box_detections_per_img": 50,
    },
}


@register_model(
    "maskrcnn_resnet18_fpn",
    description="ResNet-18 + FPN: the fast default for CPUs",
    backbone="resnet18",
    presets=PRESETS,
    metrics={  # from scratch on 2 CPU cores; commands and YOLOv8n-seg's numbers in BENCHMARKS.md
        "synthetic val mask mAP": "0.555 after 1000 steps of batch 4, small preset",
        "dsb2018 nuclei val mask mAP": "0.209 after 15 minutes, cpu preset",
        "balloon val mask mAP": "0.084 after 15 minutes, cpu preset",
    },
)
def maskrcnn_resnet18_fpn(*, num_classes: int, **kw) -> MaskRCNNSegmenter:
    """Mask R-CNN with a resnet18 backbone; ``kw`` as in ``build_maskrcnn``."""
    return build_maskrcnn(num_classes=num_classes, backbone="resnet18", **kw)


@register_model("maskrcnn_resnet34_fpn", description="ResNet-34 + FPN", backbone="resnet34", presets=PRESETS)
def maskrcnn_resnet34_fpn(*, num_classes: int, **kw) -> MaskRCNNSegmenter:
    """Mask R-CNN with a resnet34 backbone; ``kw`` as in ``build_maskrcnn``."""
    return build_maskrcnn(num_classes=num_classes, backbone="resnet34", **kw)


@register_model(
    "maskrcnn_resnet50_fpn", description="ResNet-50 + FPN: the paper's baseline", backbone="resnet50", presets=PRESETS
)
def maskrcnn_resnet50_fpn(*, num_classes: int, **kw) -> MaskRCNNSegmenter:
    """Mask R-CNN with a resnet50 backbone; ``kw`` as in ``build_maskrcnn``."""
    return build_maskrcnn(num_classes=num_classes, backbone="resnet50", **kw)


@register_model(
    "maskrcnn_resnet101_fpn",
    description="ResNet-101 + FPN: the most accurate and slowest",
    backbone="resnet101",
    presets=PRESETS,
)
def maskrcnn_resnet101_fpn(*, num_classes: int, **kw) -> MaskRCNNSegmenter:
    """Mask R-CNN with a resnet101 backbone; ``kw`` as in ``build_maskrcnn``."""
    return build_maskrcnn(num_classes=num_classes, backbone="resnet101", **kw)


@register_model(
    "maskrcnn_resnext50_32x4d_fpn", description="ResNeXt-50 32x4d + FPN", backbone="resnext50_32x4d", presets=PRESETS
)
def maskrcnn_resnext50_32x4d_fpn(*, num_classes: int, **kw) -> MaskRCNNSegmenter:
    """Mask R-CNN with a resnext50_32x4d backbone; ``kw`` as in ``build_maskrcnn``."""
    return build_maskrcnn(num_classes=num_classes, backbone="resnext50_32x4d", **kw)


@register_model(
    "maskrcnn_mobilenet_v3_large_fpn",
    description="MobileNetV3-Large + FPN: the fewest FLOPs",
    backbone="mobilenet_v3_large",
    presets=PRESETS,
)
def maskrcnn_mobilenet_v3_large_fpn(*, num_classes: int, **kw) -> MaskRCNNSegmenter:
    """Mask R-CNN with a mobilenet_v3_large backbone; ``kw`` as in ``build_maskrcnn``."""
    return build_maskrcnn(num_classes=num_classes, backbone="mobilenet_v3_large", **kw)
