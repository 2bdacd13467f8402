"""DANet, the dual attention network (Fu et al., CVPR 2019), 2D and 3D.

Paper: J. Fu, J. Liu, H. Tian, Y. Li, Y. Bao, Z. Fang, H. Lu, "Dual Attention Network for Scene Segmentation",
CVPR 2019 (arXiv:1809.02983), Sections 3.1-3.4 and Fig. 2.

Layout (Section 3.1, 3.4; the authors' ``DANetHead``): a dilated ResNet-101 (the downsampling of the last two stages
removed, output stride 8); two parallel branches on its 2048-channel map, each a 3x3 convolution-BN-ReLU to 512
channels, then the position attention module (branch 1) or the channel attention module (branch 2), then another 3x3
convolution-BN-ReLU (512); the branch outputs are summed element-wise and classified by dropout (0.1) and a 1x1
convolution, and the logits are upsampled (bilinear / trilinear) to the input size. The reference trains with a
loss on the fused output and on each branch's own classifier (``SegmentationMultiLosses``): with
``deep_supervision=True`` the training forward returns ``[fused, position, channel]`` logits, all at the input size.

3D: the same network on a 3D ResNet. The position attention builds an ``N x N`` affinity over all ``N`` voxels of
the stride-8 feature map: ``N = 8³ = 512`` for a 64³ input, but 4 GiB (float32, one volume) for a 512³ input's
64³ map, so keep 3D inputs small or use a larger output stride.

Differences from the reference: the reference ResNet has a "deep stem" (three 3x3 convolutions); we use our standard
ResNet-101 (7x7 stem, torchvision layout) so torchvision weights load. Parameter figure: the paper gives none (its
tables compare mIoU only), so none is recorded; at the paper configuration (Cityscapes, 19 classes, with the three
classifiers) we count 66,454,779 (backbone 42,500,160, head 23,954,619).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.natural.attention._modules import (
    ChannelAttention,
    PositionAttention,
    SegHead,
    build_backbone,
    resize_to,
)
from medseg.models.registry import PaperConfig, register_model

__all__ = ["DANet", "DANetHead"]


class DANetHead(nn.Module):
    """The dual attention head (Fig. 2): position and channel branches, summed, three classifiers.

    Shapes: ``(B, C_in, *spatial)`` to three logits ``(B, out_channels, *spatial)``: fused, position, channel.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in (2048 for ResNet-101).
        out_channels: Classes.
        inter_channels: Width of the branches (paper: ``C_in / 4`` = 512).
        branch_classifiers: Build the two branch classifiers (trained with their own losses); without them
            :meth:`forward` returns the fused logits only.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, inter_channels: int,
                 branch_classifiers: bool = True) -> None:
        super().__init__()
        self.conv_pa_in = ConvNormActD(spatial_dims, in_channels, inter_channels, 3)
        self.conv_ca_in = ConvNormActD(spatial_dims, in_channels, inter_channels, 3)
        self.position = PositionAttention(spatial_dims, inter_channels)
        self.channel = ChannelAttention()
        self.conv_pa_out = ConvNormActD(spatial_dims, inter_channels, inter_channels, 3)
        self.conv_ca_out = ConvNormActD(spatial_dims, inter_channels, inter_channels, 3)
        self.cls_pa = SegHead(spatial_dims, inter_channels, 0, out_channels) if branch_classifiers else None
        self.cls_ca = SegHead(spatial_dims, inter_channels, 0, out_channels) if branch_classifiers else None
        self.cls_fused = SegHead(spatial_dims, inter_channels, 0, out_channels)

    def forward(self, x: torch.Tensor, branches: bool = True) -> list[torch.Tensor]:
        """Return the fused logits of ``x``, then (``branches`` and the classifiers exist) the branches' logits."""
        pa = self.conv_pa_out(self.position(self.conv_pa_in(x)))
        ca = self.conv_ca_out(self.channel(self.conv_ca_in(x)))
        outs = [self.cls_fused(pa + ca)]
        if branches and self.cls_pa is not None and self.cls_ca is not None:
            outs += [self.cls_pa(pa), self.cls_ca(ca)]
        return outs


@register_model(
    "danet",
    family="natural",
    spatial_dims=(2, 3),
    paper_title="Dual Attention Network for Scene Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, kwargs={"deep_supervision": True}, params=None,
        source="CVPR 2019 (arXiv:1809.02983), Sections 3.1-3.4 (dilated ResNet-101, output stride 8, Cityscapes "
               "19 classes); the paper states no parameter count",
    ),
    divisor=1,
    deep_supervision=True,
    test_kwargs={"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}},
)
class DANet(SegmentationModel):
    """DANet of Fu et al. (CVPR 2019): dilated ResNet + position and channel attention, summed.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` (any size; the logits are resized to
    the input). With ``deep_supervision=True`` in training mode: a list ``[fused, position, channel]`` of such logits.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (paper: 3).
        out_channels: Classes.
        backbone: Backbone key (paper: ``"resnet101"``).
        output_stride: Output stride of the backbone (paper: 8).
        pretrained_backbone: Local torchvision/timm weights file for the backbone.
        backbone_kwargs: Further backbone options.
        inter_channels: Branch width (``None``: a quarter of the backbone's channels, 512 for ResNet-101).
        deep_supervision: Build the branch classifiers and return the three outputs in training mode (the
            paper's training; without it the branch classifiers are not built and the model has 2 x
            ``(inter_channels + 1) · out_channels`` fewer parameters).
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
        inter_channels: int | None = None,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.encoder = build_backbone(self.model_name, backbone, spatial_dims, in_channels, output_stride,
                                      pretrained_backbone, backbone_kwargs)
        top = self.encoder.out_channels[-1]
        self.head = DANetHead(spatial_dims, top, out_channels, inter_channels or top // 4, deep_supervision)
        self.deep_supervision = deep_supervision
        if deep_supervision:
            self.deep_supervision_scales = [(1,) * spatial_dims] * 3
            self.loss_weights = (1.0, 1.0, 1.0)  # SegmentationMultiLosses: fused and both branch losses, summed

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        size = x.shape[2:]
        branches = self.deep_supervision and self.training
        outs = [resize_to(o, size) for o in self.head(self.encoder(x)[-1], branches)]
        return outs if branches else outs[0]
