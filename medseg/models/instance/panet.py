"""PANet: path aggregation for instance segmentation (Liu et al., CVPR 2018), 2D.

Paper: S. Liu, L. Qi, H. Qin, J. Shi, J. Jia, "Path Aggregation Network for Instance Segmentation", CVPR 2018
(arXiv:1803.01534), Section 3 and Figures 1-4. Mask R-CNN (:mod:`medseg.models.instance.mask_rcnn`) with three
changes, as in the authors' code (ShuLiu1993/PANet, ``configs/panet/e2e_panet_R-50-FPN_2x_mask.yaml``):

- **bottom-up path augmentation** (Figure 2): the FPN (here with GroupNorm after every convolution and no bias, the
  authors' ``FPN.USE_GN``) gives P2..P5; N2 = P2 and N(i+1) = conv3×3(conv3×3 stride 2 (N(i)) + P(i+1)), each
  convolution with GroupNorm and ReLU. The RPN and the RoI heads run on N2..N5 (and N6 = N5 subsampled for the RPN).
- **adaptive feature pooling** (Figure 6): every RoI is pooled from all four levels; each level's RoI features go
  through their own 3×3 convolution (GroupNorm, ReLU) and the levels are fused by element-wise maximum. Box head:
  then three more 3×3 convolutions of 256 and one fully connected layer of 1024; mask head: then two 3×3
  convolutions.
- **fully connected fusion** (Figure 4): the mask head's FCN path (a fourth convolution, 2× transposed convolution,
  1×1 to a 28×28 mask per class) is added to a class-agnostic mask from a fully connected path (from the third
  convolution: two 3×3 convolutions, the second halving the channels, a fully connected layer to 28×28 with ReLU).

Paper configuration and parameter figure: the authors' code at that configuration (ResNet-50, 81 COCO classes with
background), built with that code and counted (``lib/modeling/FPN.py``, ``fast_rcnn_heads.py``
``roi_Xconv1fc_gn_head_panet`` + ``fast_rcnn_outputs``, ``mask_rcnn_heads.py``
``mask_rcnn_fcn_head_v1up4convs_gn_adp_ff`` + ``mask_rcnn_outputs``, ``rpn_heads.py``): 73,356,357 parameters.
Ours: 73,352,000 — the authors' box regression and mask prediction have outputs for the background class too (4 ×
81 deltas and 81 masks; here 4 × 80 and 80), 4,357 parameters (0.006 %).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.backbones.base import ConvNormActD
from medseg.models.blocks import make_conv
from medseg.models.instance.mask_rcnn import SMALL, MaskRCNN
from medseg.models.instance.ops import roi_align
from medseg.models.instance.rcnn import MaskBranch
from medseg.models.registry import PaperConfig, register_model

__all__ = ["AdaptiveFeaturePooling", "PANet", "PANetBoxBranch", "PANetMaskBranch", "PathAggregationNeck"]


def _gn(channels: int) -> tuple[str, dict]:
    return ("group", {"num_groups": min(32, channels)})


class PathAggregationNeck(nn.Module):
    """FPN with GroupNorm and the bottom-up path augmentation (PANet, Figure 2).

    Shapes: C2..C5 ``(B, C_i, *spatial_i)`` to N2..N5 ``(B, channels, *spatial_i)``.
    """

    def __init__(self, spatial_dims: int, in_channels: Sequence[int], channels: int = 256) -> None:
        super().__init__()
        gn = _gn(channels)
        self.lateral = nn.ModuleList(ConvNormActD(spatial_dims, c, channels, 1, norm=gn, act=None)
                                     for c in in_channels)
        self.output = nn.ModuleList(ConvNormActD(spatial_dims, channels, channels, 3, norm=gn, act=None)
                                    for _ in in_channels)
        self.down = nn.ModuleList(ConvNormActD(spatial_dims, channels, channels, 3, stride=2, bias=True, norm=gn)
                                  for _ in in_channels[1:])
        self.fuse = nn.ModuleList(ConvNormActD(spatial_dims, channels, channels, 3, bias=True, norm=gn)
                                  for _ in in_channels[1:])

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """N levels of the C levels ``features`` (highest resolution first)."""
        y = self.lateral[-1](features[-1])
        pyramid = [self.output[-1](y)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            y = lateral + F.interpolate(y, size=lateral.shape[2:], mode="nearest")
            pyramid.insert(0, self.output[i](y))
        out = [pyramid[0]]
        for i, (down, fuse) in enumerate(zip(self.down, self.fuse, strict=True)):
            out.append(fuse(down(out[-1]) + pyramid[i + 1]))
        return out


class AdaptiveFeaturePooling(nn.Module):
    """RoIAlign of every RoI on every level: ``(L, R, C, *pool)`` (PANet's adaptive feature pooling, Figure 6)."""

    def __init__(self, output_size: int, strides: Sequence[int], sampling_ratio: int = 2) -> None:
        super().__init__()
        self.output_size, self.strides, self.sampling_ratio = int(output_size), list(strides), sampling_ratio

    def forward(self, features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Pooled features of the boxes of every image on each level."""
        parts = [torch.cat([torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device), b], dim=1)
                 for i, b in enumerate(boxes)]
        rois = torch.cat(parts)
        return torch.stack([roi_align(f, rois, self.output_size, 1.0 / s, self.sampling_ratio)
                            for f, s in zip(features, self.strides, strict=True)])


def _fuse_levels(pooled: torch.Tensor, convs: nn.ModuleList) -> torch.Tensor:
    out = None
    for level, conv in zip(pooled, convs, strict=True):
        y = conv(level)
        out = y if out is None else torch.maximum(out, y)
    assert out is not None
    return out


class PANetBoxBranch(nn.Module):
    """PANet's box head (the authors' ``roi_Xconv1fc_gn_head_panet``).

    One convolution per level, max fusion, three convolutions, a fully connected layer of 1024, class scores and
    class-specific deltas.
    """

    def __init__(self, spatial_dims: int, channels: int, pool: int, num_classes: int, levels: int,
                 representation: int = 1024, num_conv: int = 4) -> None:
        super().__init__()
        gn = _gn(channels)
        self.level_convs = nn.ModuleList(ConvNormActD(spatial_dims, channels, channels, 3, norm=gn)
                                         for _ in range(levels))
        self.convs = nn.Sequential(*[ConvNormActD(spatial_dims, channels, channels, 3, norm=gn)
                                     for _ in range(num_conv - 1)])
        self.fc = nn.Linear(channels * pool ** spatial_dims, representation)
        self.cls_score = nn.Linear(representation, num_classes)
        self.bbox_pred = nn.Linear(representation, (num_classes - 1) * 2 * spatial_dims)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and deltas of RoIs pooled from every level ``(L, R, C, *pool)``."""
        x = self.convs(_fuse_levels(pooled, self.level_convs))
        x = F.relu(self.fc(x.flatten(1)))
        return self.cls_score(x), self.bbox_pred(x)


class PANetMaskBranch(MaskBranch):
    """Mask head with adaptive feature pooling and fully connected fusion (PANet, Figure 4)."""

    def __init__(self, spatial_dims: int, channels: int, num_classes: int, strides: Sequence[int], pool: int,
                 conv_channels: int = 256) -> None:
        nn.Module.__init__(self)
        gn = _gn(conv_channels)
        self.pool = pool
        self.pooler = AdaptiveFeaturePooling(pool, strides)
        self.level_convs = nn.ModuleList(ConvNormActD(spatial_dims, channels, conv_channels, 3, norm=gn)
                                         for _ in strides)
        self.convs = nn.Sequential(ConvNormActD(spatial_dims, conv_channels, conv_channels, 3, norm=gn),
                                   ConvNormActD(spatial_dims, conv_channels, conv_channels, 3, norm=gn))
        self.conv4 = ConvNormActD(spatial_dims, conv_channels, conv_channels, 3, norm=gn)
        self.upconv = nn.ConvTranspose2d(conv_channels, conv_channels, 2, 2) if spatial_dims == 2 else \
            nn.ConvTranspose3d(conv_channels, conv_channels, 2, 2)
        self.predictor = make_conv(spatial_dims, conv_channels, num_classes - 1, 1)
        half = conv_channels // 2
        self.conv4_fc = ConvNormActD(spatial_dims, conv_channels, conv_channels, 3, norm=gn)
        self.conv5_fc = ConvNormActD(spatial_dims, conv_channels, half, 3, norm=_gn(half))
        self.mask_fc = nn.Linear(half * pool ** spatial_dims, (2 * pool) ** spatial_dims)
        self.spatial_dims = spatial_dims
        nn.init.normal_(self.mask_fc.weight, std=0.01)
        nn.init.zeros_(self.mask_fc.bias)

    def logits(self, features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mask logits ``(R, K - 1, *2·pool)``: the FCN path plus the class-agnostic fully connected path."""
        x = self.convs(_fuse_levels(self.pooler(features, boxes), self.level_convs))
        fcn = self.predictor(F.relu(self.upconv(self.conv4(x))))
        fc = F.relu(self.mask_fc(self.conv5_fc(self.conv4_fc(x)).flatten(1)))
        return fcn + fc.view(fc.shape[0], 1, *fcn.shape[2:])


@register_model(
    "panet",
    family="instance",
    task="instance",
    spatial_dims=(2,),
    paper_title="Path Aggregation Network for Instance Segmentation",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=81, kwargs={"backbone": "resnet50"}, params=73_356_357,
        source="authors' code, ShuLiu1993/PANet configs/panet/e2e_panet_R-50-FPN_2x_mask.yaml (R-50, GN FPN with "
               "bottom-up path, adaptive pooling, fused mask head, 81 classes), built with that code and counted",
    ),
    divisor=32,
    test_kwargs={**SMALL, "fpn_channels": 16, "mask_channels": 16},
)
class PANet(MaskRCNN):
    """PANet: Mask R-CNN with bottom-up path augmentation, adaptive feature pooling and fused masks (Liu et al., 2018).

    Shapes and options: as :class:`~medseg.models.instance.mask_rcnn.MaskRCNN` (2D).
    """

    def build_neck(self) -> None:
        """The GroupNorm FPN with the bottom-up path (N2..N5)."""
        self.neck = PathAggregationNeck(self.spatial_dims, self.backbone.out_channels[1:5], self.fpn_channels)

    def build_box_pooler(self) -> nn.Module:
        """Adaptive feature pooling from every level."""
        return AdaptiveFeaturePooling(self.box_pool, self.strides)

    def build_box_branch(self, representation: int) -> nn.Module:
        """PANet's box head."""
        return PANetBoxBranch(self.spatial_dims, self.fpn_channels, self.box_pool, self.out_channels,
                              len(self.strides), representation)

    def build_mask_branch(self, mask_channels: int) -> MaskBranch:
        """PANet's fused mask head."""
        return PANetMaskBranch(self.spatial_dims, self.fpn_channels, self.out_channels, self.strides, self.mask_pool,
                               mask_channels)
