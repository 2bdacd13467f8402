"""EfficientPS: efficient panoptic segmentation (Mohan & Valada, IJCV 2021), 2D.

Paper: R. Mohan, A. Valada, "EfficientPS: Efficient Panoptic Segmentation", International Journal of Computer Vision
129, 2021 (arXiv:2004.02307), Section 3 and Figures 2-5; the authors' code (DeepSceneSeg/EfficientPS,
``configs/efficientPS_singlegpu_sample.py`` and the modules it names):

- **backbone**: EfficientNet-B5 (:mod:`medseg.models.backbones.efficientnet`) without squeeze-and-excitation, every
  normalisation followed by leaky ReLU (slope 0.01; the authors' in-place activated BN); levels of strides 4, 8, 16,
  32 (40, 64, 176, 2048 channels);
- **2-way FPN** (Figure 3): 1×1 laterals into two pyramids, one aggregated top-down (nearest upsampling), one
  bottom-up (nearest downsampling), each level's two maps summed and a 3×3 convolution (256, BN, leaky ReLU);
- **instance head**: Mask R-CNN's RPN and box head, and a mask head of four 3×3 depthwise separable convolutions
  (256, BN, leaky ReLU), a 2× transposed convolution and a 1×1 classifier;
- **semantic head** (Figure 4): dense prediction cells (DPC: five depthwise separable 3×3 convolutions with dilations
  (1, 6), (1, 1), (6, 21), (18, 15), (6, 3) in Chen et al.'s arrangement, concatenated, 1×1 to 128) on the stride-32
  and stride-16 levels, large-scale feature extractors (LSFE: two separable convolutions to 128) on the stride-8 and
  stride-4 levels, mismatch correction modules (MC: two separable convolutions, bilinear ×2) carrying the context
  downwards, the four maps upsampled to stride 4, concatenated, a 1×1 classifier, upsampled ×4; cross-entropy on the
  hardest 25 % of the voxels;
- **panoptic fusion** (parameter-free, Section 3.4): each detection's mask logits ``A`` (pasted into its box) and its
  class's semantic logits ``B`` inside the box are fused as ``(σ(A) + σ(B)) ⊙ (A + B)``; with the background's
  semantic logits they form the panoptic logits, whose arg max gives each voxel to the background or an object.

Paper configuration and parameter figure: the authors' code at that configuration (EfficientNet-B5, Cityscapes: 9
instance classes with background, 19 semantic classes): the backbone built with its bundled ``geffnet``
(``tf_efficientnet_b5``, ``se=False``: 23,148,912), the 2-way FPN (3,557,376), semantic head (1,206,547) and
separable mask head (540,169) instantiated from its module files (``two_way_fpn.py``, ``efficientps_semantic_head.py``,
``fcn_sep_mask_head.py``), mmdet's ``RPNHead`` (593,935) and ``SharedFCBBoxHead`` (13,941,805) counted from their
definitions: 42,988,744 parameters. Ours: 42,984,387 — the authors' box regression and mask classifier have outputs
for the background class too (4 × 9 deltas and 9 masks; here 4 × 8 and 8), 4,357 parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from torch import nn

from medseg.models.backbones.base import ConvNormActD
from medseg.models.blocks import ActSpec, make_act, make_conv, make_norm
from medseg.models.instance.base import Detections, InstanceTarget
from medseg.models.instance.mask_rcnn import MaskRCNN
from medseg.models.instance.ops import paste_masks
from medseg.models.instance.rcnn import MaskBranch, MultiScaleRoIAlign
from medseg.models.instance.targets import ObjectTargets, semantic_map
from medseg.models.natural.refine._modules import upsample_to
from medseg.models.panoptic.fusion import panoptic_detections
from medseg.models.registry import PaperConfig, register_model

__all__ = ["EfficientPS", "EfficientPSSemanticHead", "SeparableMaskBranch", "TwoWayFPN"]

LEAKY: ActSpec = ("leakyrelu", {"negative_slope": 0.01})


def sep_conv(spatial_dims: int, in_channels: int, out_channels: int, dilation: int | Sequence[int] = 1
             ) -> nn.Sequential:
    """A depthwise separable convolution as mmdet's ``DepthwiseSeparableConvModule`` with in-place activated BN.

    Depthwise 3×3 (dilation per axis; BN, leaky ReLU), then pointwise 1×1 (BN, leaky ReLU), no biases.
    """
    dil = tuple(dilation) if isinstance(dilation, Sequence) else (dilation,) * spatial_dims
    depthwise = nn.Sequential(
        Conv[Conv.CONV, spatial_dims](in_channels, in_channels, 3, padding=dil, dilation=dil, groups=in_channels,
                                      bias=False),
        make_norm("batch", spatial_dims, in_channels),
        make_act(LEAKY, in_channels),
    )
    return nn.Sequential(depthwise, ConvNormActD(spatial_dims, in_channels, out_channels, 1, act=LEAKY))


class TwoWayFPN(nn.Module):
    """EfficientPS's 2-way FPN (Figure 3): top-down and bottom-up pyramids, summed per level, 3×3 output convolutions.

    Shapes: C2..C5 ``(B, C_i, *spatial_i)`` to P2..P5 ``(B, channels, *spatial_i)``.
    """

    def __init__(self, spatial_dims: int, in_channels: Sequence[int], channels: int = 256) -> None:
        super().__init__()
        self.lateral_top = nn.ModuleList(ConvNormActD(spatial_dims, c, channels, 1, act=LEAKY) for c in in_channels)
        self.lateral_bottom = nn.ModuleList(ConvNormActD(spatial_dims, c, channels, 1, act=LEAKY)
                                            for c in in_channels)
        self.output = nn.ModuleList(ConvNormActD(spatial_dims, channels, channels, 3, act=LEAKY) for _ in in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """P levels of the C levels (highest resolution first)."""
        top = [conv(f) for conv, f in zip(self.lateral_top, features, strict=True)]
        bottom = [conv(f) for conv, f in zip(self.lateral_bottom, features, strict=True)]
        for i in range(len(top) - 1, 0, -1):
            top[i - 1] = top[i - 1] + F.interpolate(top[i], size=top[i - 1].shape[2:], mode="nearest")
        for i in range(1, len(bottom)):
            bottom[i] = bottom[i] + F.interpolate(bottom[i - 1], size=bottom[i].shape[2:], mode="nearest")
        return [conv(t + b) for conv, t, b in zip(self.output, top, bottom, strict=True)]


class _DPC(nn.Module):
    """Dense prediction cell (Chen et al., NeurIPS 2018) as EfficientPS arranges it (Figure 4)."""

    def __init__(self, spatial_dims: int, channels: int, out_channels: int) -> None:
        super().__init__()
        rates = [(1, 6), (1, 1), (6, 21), (18, 15), (6, 3)]
        self.convs = nn.ModuleList(sep_conv(spatial_dims, channels, channels, r) for r in rates)
        self.project = ConvNormActD(spatial_dims, channels * 5, out_channels, 1, act=LEAKY)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Five branches from one dilated stem, concatenated and projected."""
        x = self.convs[0](x)
        x1, x2, x3 = self.convs[1](x), self.convs[2](x), self.convs[3](x)
        x4 = self.convs[4](x3)
        return self.project(torch.cat([x, x1, x2, x3, x4], dim=1))


class EfficientPSSemanticHead(nn.Module):
    """EfficientPS's semantic head: DPC on the deep levels, LSFE on the shallow ones, MC between them (Figure 4).

    Shapes: P2..P5 ``(B, C, *spatial_i)`` to logits ``(B, classes, *spatial_P2)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, classes: int, channels: int = 128) -> None:
        super().__init__()
        self.dpc = nn.ModuleList(_DPC(spatial_dims, in_channels, channels) for _ in range(2))
        self.lsfe = nn.ModuleList(nn.Sequential(sep_conv(spatial_dims, in_channels, channels),
                                                sep_conv(spatial_dims, channels, channels)) for _ in range(2))
        self.mc = nn.ModuleList(nn.Sequential(sep_conv(spatial_dims, channels, channels),
                                              sep_conv(spatial_dims, channels, channels)) for _ in range(2))
        self.logits = make_conv(spatial_dims, channels * 4, classes, 1)

    def forward(self, pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
        """Semantic logits at the finest level's resolution."""
        feats = list(pyramid)
        feats[3] = self.dpc[0](feats[3])
        feats[2] = self.dpc[1](feats[2])
        x = self.mc[0](feats[2] + upsample_to(feats[3], feats[2].shape[2:]))
        x = upsample_to(x, [2 * s for s in x.shape[2:]])
        for k, idx in enumerate((1, 0)):
            feats[idx] = self.lsfe[k](feats[idx]) + upsample_to(x, feats[idx].shape[2:])
            if idx != 0:
                x = self.mc[1](feats[idx])
                x = upsample_to(x, [2 * s for s in x.shape[2:]])
        size = feats[0].shape[2:]
        return self.logits(torch.cat([upsample_to(f, size) for f in feats], dim=1))


class SeparableMaskBranch(MaskBranch):
    """Mask head of four depthwise separable convolutions, 2× transposed convolution and a 1×1 classifier."""

    def __init__(self, spatial_dims: int, channels: int, num_classes: int, strides: Sequence[int], pool: int,
                 conv_channels: int = 256) -> None:
        nn.Module.__init__(self)
        self.pool = pool
        self.pooler = MultiScaleRoIAlign(pool, strides)
        self.convs = nn.Sequential(*[sep_conv(spatial_dims, channels if i == 0 else conv_channels, conv_channels)
                                     for i in range(4)])
        self.deconv = Conv[Conv.CONVTRANS, spatial_dims](conv_channels, conv_channels, kernel_size=2, stride=2)
        self.predictor = make_conv(spatial_dims, conv_channels, num_classes - 1, 1)

    def logits(self, features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mask logits ``(R, K - 1, *2·pool)``."""
        return self.predictor(F.relu(self.deconv(self.convs(self.pooler(features, boxes)))))


@register_model(
    "efficientps",
    family="panoptic",
    task="panoptic",
    spatial_dims=(2,),
    paper_title="EfficientPS: Efficient Panoptic Segmentation",
    paper_year=2021,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=9, kwargs={"backbone": "efficientnet_b5", "semantic_classes": 19},
        params=42_988_744,
        source="authors' code, DeepSceneSeg/EfficientPS configs/efficientPS_singlegpu_sample.py (EfficientNet-B5 "
               "without SE via its geffnet, 2-way FPN, separable mask head, DPC/LSFE/MC semantic head; Cityscapes 9 "
               "instance and 19 semantic classes): backbone, neck and heads built from its modules and counted",
    ),
    divisor=32,
    test_kwargs={"backbone_kwargs": {"se": False, "act": LEAKY, "width": 0.25}, "fpn_channels": 16,
                 "representation": 32, "mask_channels": 16, "rpn_batch": 64, "roi_batch": 64,
                 "semantic_channels": 8},
)
class EfficientPS(MaskRCNN):
    """EfficientPS: EfficientNet, 2-way FPN, separable Mask R-CNN heads, DPC semantic head, panoptic fusion (2021).

    Shapes: ``(B, in_channels, *spatial)`` (multiples of 32) to one
    :class:`~medseg.models.instance.base.Detections` per image whose masks are the objects' panoptic segments
    (disjoint), or a loss dict with targets.

    Args:
        spatial_dims: 2.
        in_channels: Input channels.
        out_channels: Classes including background.
        backbone: A registered backbone (``efficientnet_b5``).
        pretrained_backbone: Local weights for the backbone.
        backbone_kwargs: Backbone options (default: no SE, leaky ReLU 0.01).
        fpn_channels: Pyramid width (256).
        anchor_sizes: Anchor sizes per level P2..P6.
        aspect_ratios: Anchor aspect ratios.
        representation: Box head width (1024).
        mask_channels: Mask head width (256).
        rpn_batch: RPN anchors per image.
        roi_batch: RoIs per image (the authors' 256).
        pre_nms_topk: RPN proposals per level before NMS.
        post_nms_topk: RPN proposals per image after NMS.
        score_threshold: Detection score threshold (0.05).
        detections_per_image: Detections per image.
        semantic_classes: Semantic head outputs (``out_channels`` when ``None``; the paper's Cityscapes model 19).
        semantic_channels: Semantic head width (128).
        hard_fraction: Fraction of the hardest voxels in the semantic loss (0.25).
        panoptic_score: Detections entering the panoptic fusion at inference (0.5).
    """

    loss_terms = ("rpn_objectness", "rpn_boxes", "classification", "box_regression", "mask", "semantic")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "efficientnet_b5",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        fpn_channels: int = 256,
        anchor_sizes: Sequence[float] | None = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        representation: int = 1024,
        mask_channels: int = 256,
        rpn_batch: int = 256,
        roi_batch: int = 256,
        pre_nms_topk: Sequence[int] = (2000, 1000),
        post_nms_topk: Sequence[int] = (2000, 1000),
        score_threshold: float = 0.05,
        detections_per_image: int = 100,
        semantic_classes: int | None = None,
        semantic_channels: int = 128,
        hard_fraction: float = 0.25,
        panoptic_score: float = 0.5,
    ) -> None:
        options = {"se": False, "act": LEAKY} if backbone.startswith("efficientnet") else {}
        options.update(dict(backbone_kwargs or {}))
        super().__init__(spatial_dims, in_channels, out_channels, backbone=backbone,
                         pretrained_backbone=pretrained_backbone, backbone_kwargs=options,
                         fpn_channels=fpn_channels, anchor_sizes=anchor_sizes, aspect_ratios=aspect_ratios,
                         representation=representation, mask_channels=mask_channels, rpn_batch=rpn_batch,
                         roi_batch=roi_batch, pre_nms_topk=pre_nms_topk, post_nms_topk=post_nms_topk,
                         score_threshold=score_threshold, detections_per_image=detections_per_image)
        self.semantic_head = EfficientPSSemanticHead(spatial_dims, fpn_channels, semantic_classes or out_channels,
                                                     semantic_channels)
        self.hard_fraction, self.panoptic_score = hard_fraction, panoptic_score

    def build_neck(self) -> None:
        """The 2-way FPN."""
        self.neck = TwoWayFPN(self.spatial_dims, self.backbone.out_channels[1:5], self.fpn_channels)

    def build_mask_branch(self, mask_channels: int) -> MaskBranch:
        """The separable mask head."""
        return SeparableMaskBranch(self.spatial_dims, self.fpn_channels, self.out_channels, self.strides,
                                   self.mask_pool, mask_channels)

    def semantic_logits(self, x: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Semantic logits at the input's resolution."""
        return upsample_to(self.semantic_head(features[:4]), x.shape[2:])

    def extra_losses(self, x: torch.Tensor, features: Sequence[torch.Tensor], targets: Sequence[InstanceTarget],
                     objects: Sequence[ObjectTargets]) -> dict[str, torch.Tensor]:
        """Cross-entropy of the semantic head on its hardest voxels."""
        logits = self.semantic_logits(x, features)
        goal = torch.stack([semantic_map(t) for t in targets]).clamp(max=logits.shape[1] - 1)
        per_voxel = F.cross_entropy(logits.float(), goal, reduction="none").flatten()
        k = max(1, int(per_voxel.numel() * self.hard_fraction + 0.999999))
        return {"semantic": per_voxel.topk(k).values.mean()}

    def forward(self, x: torch.Tensor, targets: Sequence[InstanceTarget] | None = None
                ) -> list[Detections] | dict[str, torch.Tensor]:
        """Detections with panoptic segments as masks, or with ``targets`` the loss terms."""
        if targets is not None:
            return super().forward(x, targets)
        self.check_input(x)
        return panoptic_detections(self, x, self._fuse)

    def _fuse(self, semantic: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, picked: torch.Tensor,
              shape: tuple[int, ...]) -> torch.Tensor:
        """EfficientPS's fusion: inside each box, (σ(mask) + σ(semantic)) · (mask + semantic) of its class."""
        n = boxes.shape[0]
        pasted = paste_masks(picked.float(), boxes, shape, threshold=None) if n else picked
        rows = [semantic[0]]
        for i in range(n):
            inside = torch.zeros(shape, dtype=torch.bool, device=semantic.device)
            lo = [max(int(boxes[i, a].floor()), 0) for a in range(self.spatial_dims)]
            hi = [min(int(boxes[i, a + self.spatial_dims].ceil()), shape[a]) for a in range(self.spatial_dims)]
            inside[tuple(slice(p, q) for p, q in zip(lo, hi, strict=True))] = True
            a_, b_ = pasted[i], semantic[int(labels[i])]
            fused = (torch.sigmoid(a_) + torch.sigmoid(b_)) * (a_ + b_)
            rows.append(torch.where(inside, fused, torch.full_like(fused, -1e4)))
        return torch.stack(rows).argmax(dim=0)
