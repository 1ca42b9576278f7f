"""Mask R-CNN (He et al. 2017) assembled from torchvision's parts, built to train from scratch.

Backbone (a ResNet/ResNeXt or MobileNetV3) + FPN neck + RPN + box and mask heads. Every part is
torchvision's own; what this module chooses is how they are configured:

* no pretrained weights are ever requested (``weights=None``), so nothing is downloaded;
* normalisation trains from scratch: GroupNorm (default, independent of batch size, which is small
  on a CPU) or BatchNorm in train mode -- never torchvision's FrozenBatchNorm, which only makes
  sense on top of ImageNet statistics;
* the sizes (input size, anchors, proposal counts, RoI samples, head widths) are plain keyword
  arguments, so a preset in the registry can shrink the model for CPUs and small images.

The RoI heads also return the softmax class probabilities of every kept detection, which review
tools use to spot labels the model disagrees with.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from instaseg.models.base import InputSizes, InstanceSegmenter
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


def build_backbone(
    name: str, *, norm: str, fpn_channels: int, returned_layers: Sequence[int]
) -> BackboneWithFPN:
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


class RoIHeadsWithProbs(RoIHeads):
    """torchvision's RoIHeads, also keeping the class probabilities of each kept detection.

    At inference ``last_class_probs`` holds, per image, an (N, K) tensor: the softmax over the K
    object classes (background left out and the rest renormalised) of the proposal each detection
    came from.
    """

    last_class_probs: list[torch.Tensor]

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        """Per image: score-threshold, drop tiny boxes, class-wise NMS and top-k; tracks the source row."""
        num_classes = class_logits.shape[-1]
        per_image = [len(p) for p in proposals]
        all_boxes = self.box_coder.decode(box_regression, proposals).split(per_image)
        all_scores = torch.softmax(class_logits, -1).split(per_image)
        results: tuple[list, list, list] = ([], [], [])
        self.last_class_probs = []
        for boxes, scores, image_shape in zip(all_boxes, all_scores, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)[:, 1:].reshape(-1, 4)
            rows = torch.arange(len(scores), device=scores.device)[:, None].expand(-1, num_classes - 1).reshape(-1)
            labels = torch.arange(1, num_classes, device=scores.device).repeat(len(scores))
            flat_scores = scores[:, 1:].reshape(-1)
            keep = torch.where(flat_scores > self.score_thresh)[0]
            keep = keep[box_ops.remove_small_boxes(boxes[keep], min_size=1e-2)]
            keep = keep[box_ops.batched_nms(boxes[keep], flat_scores[keep], labels[keep], self.nms_thresh)]
            keep = keep[: self.detections_per_img]
            results[0].append(boxes[keep])
            results[1].append(flat_scores[keep])
            results[2].append(labels[keep])
            foreground = scores[rows[keep], 1:]
            self.last_class_probs.append(foreground / foreground.sum(1, keepdim=True).clamp_min(1e-12))
        return results


class MaskRCNNSegmenter(MaskRCNN, InstanceSegmenter):
    """torchvision's ``MaskRCNN`` behind the model protocol (same modules, so the same state dict)."""

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
        raise NotImplementedError  # TODO(H1)

    def predict_boxes(self, images, boxes, *, scales=None):
        raise NotImplementedError  # TODO(H1)

    def export_module(self, size):
        raise NotImplementedError  # TODO(H1)


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
    feature_names = [str(i) for i in range(levels - 1)]
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
        box_roi_pool=_roi_align(feature_names, 7),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(box_head_fc, num_classes + 1),
        box_batch_size_per_image=box_batch_size_per_image,
        box_detections_per_img=box_detections_per_img,
        mask_roi_pool=_roi_align(feature_names, 14),
        mask_head=MaskRCNNHeads(fpn_channels, [fpn_channels] * mask_head_convs, 1, norm_layer=head_norm),
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1),
    )
    # Swapping the class (same state, one extra behaviour) is the least invasive way to reach the
    # per-detection class probabilities: torchvision builds RoIHeads inside MaskRCNN.__init__.
    model.roi_heads.__class__ = RoIHeadsWithProbs
    return model


def _roi_align(feature_names: list[str], output_size: int) -> MultiScaleRoIAlign:
    return MultiScaleRoIAlign(featmap_names=feature_names, output_size=output_size, sampling_ratio=2)


# -- presets ----------------------------------------------------------------------------------------
# "gpu": the paper's sizes, GroupNorm throughout. "cpu": BatchNorm in the backbone (GroupNorm made a
# training step 3.7x slower on a CPU), a smaller input, a 128-channel FPN and heads (at 256 channels
# the stride-4 FPN and RPN convs cost more than the ResNet-18 body: a 2-image step at ~600 px went
# from 6.1 s to 2.7 s), lighter proposal counts and RoI sampling, an MLP box head and a 2-conv mask
# head. "small": for images of about 128-256 px (the synthetic shapes): no upscaling, three FPN
# stages, anchors from 16 px, narrow heads.
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


@register_model("maskrcnn_resnet50_fpn", description="ResNet-50 + FPN: the paper's baseline", backbone="resnet50", presets=PRESETS)
def maskrcnn_resnet50_fpn(*, num_classes: int, **kw) -> MaskRCNNSegmenter:
    """Mask R-CNN with a resnet50 backbone; ``kw`` as in ``build_maskrcnn``."""
    return build_maskrcnn(num_classes=num_classes, backbone="resnet50", **kw)


@register_model("maskrcnn_resnet101_fpn", description="ResNet-101 + FPN: the most accurate and slowest", backbone="resnet101", presets=PRESETS)
def maskrcnn_resnet101_fpn(*, num_classes: int, **kw) -> MaskRCNNSegmenter:
    """Mask R-CNN with a resnet101 backbone; ``kw`` as in ``build_maskrcnn``."""
    return build_maskrcnn(num_classes=num_classes, backbone="resnet101", **kw)


@register_model("maskrcnn_resnext50_32x4d_fpn", description="ResNeXt-50 32x4d + FPN", backbone="resnext50_32x4d", presets=PRESETS)
def maskrcnn_resnext50_32x4d_fpn(*, num_classes: int, **kw) -> MaskRCNNSegmenter:
    """Mask R-CNN with a resnext50_32x4d backbone; ``kw`` as in ``build_maskrcnn``."""
    return build_maskrcnn(num_classes=num_classes, backbone="resnext50_32x4d", **kw)


@register_model("maskrcnn_mobilenet_v3_large_fpn", description="MobileNetV3-Large + FPN: the fewest FLOPs", backbone="mobilenet_v3_large", presets=PRESETS)
def maskrcnn_mobilenet_v3_large_fpn(*, num_classes: int, **kw) -> MaskRCNNSegmenter:
    """Mask R-CNN with a mobilenet_v3_large backbone; ``kw`` as in ``build_maskrcnn``."""
    return build_maskrcnn(num_classes=num_classes, backbone="mobilenet_v3_large", **kw)
