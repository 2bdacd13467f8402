"""CCNet, the criss-cross network (Huang et al., ICCV 2019), 2D and 3D.

Paper: Z. Huang, X. Wang, L. Huang, C. Huang, Y. Wei, W. Liu, "CCNet: Criss-Cross Attention for Semantic
Segmentation", ICCV 2019 (arXiv:1811.11721), Sections 3.1-3.3 and Figs. 2-3.

Layout (Section 3.1; the authors' ``RCCAModule``): a dilated ResNet-101 (output stride 8); a 3x3 convolution-BN
reduces its 2048 channels to 512 (``H``); the recurrent criss-cross attention module (RCCA) applies one
:class:`~medseg.models.natural.attention._modules.CrissCrossAttention` ``R = 2`` times with shared weights (two loops
give every position a path to every other position); a 3x3 convolution-BN (512), concatenation with the backbone
features, and a "bottleneck" 3x3 convolution-BN-ReLU (512), dropout 0.1 and a 1x1 convolution to the classes; the
logits are upsampled to the input size. The paper also trains with an auxiliary FCN head on ResNet's ``layer3``
(3x3 convolution 1024 -> 512, BN, dropout, 1x1; loss weight 0.4): with ``deep_supervision=True`` the training
forward returns ``[main, auxiliary]`` logits, both at the input size.

3D: criss-cross attention generalises to the three axis-aligned lines through each voxel (``D + H + W - 2`` keys per
query), pure torch, memory ``O(N · (D + H + W))``.

Differences from the reference: its ResNet has a deep stem and InPlace-ABN (BN + leaky ReLU) after each convolution;
we use our ResNet-101 (torchvision layout) with BN + ReLU. Parameter figure: the paper reports FLOPs and memory of
the attention module but no parameter count of the network, so none is recorded; at the paper configuration
(Cityscapes, 19 classes, with the auxiliary head) we count 71,163,623.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.natural.attention._modules import CrissCrossAttention, SegHead, build_backbone, resize_to
from medseg.models.registry import PaperConfig, register_model

__all__ = ["CCNet", "RCCAModule"]


class RCCAModule(nn.Module):
    """Recurrent criss-cross attention head (Fig. 2): reduce, ``R`` shared criss-cross passes, fuse, classify.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, out_channels, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in (2048).
        out_channels: Classes.
        inter_channels: Width of the attention (``C_in / 4`` = 512).
        head_channels: Width of the bottleneck (512).
        recurrence: R (2 in the paper).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, inter_channels: int,
                 head_channels: int, recurrence: int = 2) -> None:
        super().__init__()
        self.recurrence = recurrence
        self.conv_in = ConvNormActD(spatial_dims, in_channels, inter_channels, 3)
        self.cca = CrissCrossAttention(spatial_dims, inter_channels)
        self.conv_out = ConvNormActD(spatial_dims, inter_channels, inter_channels, 3)
        self.bottleneck = SegHead(spatial_dims, in_channels + inter_channels, head_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``x`` (``(B, C_in, *spatial)``) at its own resolution."""
        y = self.conv_in(x)
        for _ in range(self.recurrence):
            y = self.cca(y)
        return self.bottleneck(torch.cat((x, self.conv_out(y)), dim=1))


@register_model(
    "ccnet",
    family="natural",
    spatial_dims=(2, 3),
    paper_title="CCNet: Criss-Cross Attention for Semantic Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, kwargs={"deep_supervision": True}, params=None,
        source="ICCV 2019 (arXiv:1811.11721), Section 3.1 and 4.2 (dilated ResNet-101, R = 2, Cityscapes 19 "
               "classes); the paper states no parameter count for the network",
    ),
    divisor=1,
    deep_supervision=True,
    test_kwargs={"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}},
)
class CCNet(SegmentationModel):
    """CCNet of Huang et al. (ICCV 2019): dilated ResNet + recurrent criss-cross attention (R = 2).

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` (any size). With
    ``deep_supervision=True`` in training mode: ``[main, auxiliary]`` logits of that shape.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (paper: 3).
        out_channels: Classes.
        backbone: Backbone key (paper: ``"resnet101"``); the auxiliary head reads its second-to-last level.
        output_stride: Output stride (paper: 8).
        pretrained_backbone: Local torchvision/timm weights file for the backbone.
        backbone_kwargs: Further backbone options.
        recurrence: Criss-cross passes R (paper: 2).
        head_channels: Width of the bottleneck and of the auxiliary head (paper: 512); the attention works on a
            quarter of the backbone's channels.
        deep_supervision: Build the auxiliary FCN head on ``layer3`` and return its logits in training mode.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet101",
        output_stride: int = 8,
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        recurrence: int = 2,
        head_channels: int = 512,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if recurrence < 1:
            raise ModelError(f"{self.model_name}: recurrence must be >= 1, got {recurrence}")
        self.encoder = build_backbone(self.model_name, backbone, spatial_dims, in_channels, output_stride,
                                      pretrained_backbone, backbone_kwargs)
        chs = self.encoder.out_channels
        self.head = RCCAModule(spatial_dims, chs[-1], out_channels, chs[-1] // 4, head_channels, recurrence)
        self.deep_supervision = deep_supervision
        self.aux = SegHead(spatial_dims, chs[-2], head_channels, out_channels) if deep_supervision else None
        if deep_supervision:
            self.deep_supervision_scales = [(1,) * spatial_dims] * 2
            self.loss_weights = (1.0, 0.4)  # the auxiliary FCN head's weight in the paper

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        feats = self.encoder(x)
        out = resize_to(self.head(feats[-1]), x.shape[2:])
        if self.aux is not None and self.training:
            return [out, resize_to(self.aux(feats[-2]), x.shape[2:])]
        return out
