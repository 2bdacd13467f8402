"""DFN, the Discriminative Feature Network (Yu et al., CVPR 2018): smooth network + border network, 2D.

Paper: C. Yu, J. Wang, C. Peng, C. Gao, G. Yu, N. Sang, "Learning a Discriminative Feature Network for Semantic
Segmentation", CVPR 2018 (arXiv:1804.09337), Section 3 and Figure 2; layer details of the authors' TorchSeg code
(``model/dfn``: ``DFN``, ``DFNHead``, ``RefineResidual``).

Smooth network (Figure 2(a), top): a ResNet-101 backbone; a global average pooling branch on res-5 (1x1 convolution
with BN-ReLU to 512 channels, broadcast to the res-5 size) starts the top-down path. At each stage (res-5 .. res-2)
the backbone map goes through a refinement residual block (RRB: 1x1 convolution to 512 channels, residual
3x3-BN-ReLU-3x3 branch, ReLU), a channel attention block (CAB) weights it using the concatenation with the upsampled
higher-stage features (``high + sigmoid(conv(relu(conv(gap([low, high]))))) * low``), and a second RRB refines the
result, which is upsampled x2 for the next stage. Each stage's prediction head is an RRB to 9K channels (no final
ReLU) and a 1x1 convolution to K classes; the res-2 (1/4) head gives the output, upsampled bilinearly to the input.
The paper supervises every stage (deep supervision): with ``deep_supervision=True`` every stage has its head and
training returns ``[res-2 (main), res-3, res-4, res-5]`` logits, all upsampled to the input; otherwise only the res-2
head exists.

Border network (Figure 2(a), bottom), built with ``border_network=True``: an RRB (to 21 channels in the code) on each
stage's backbone map; bottom-up from res-2, each higher stage is upsampled to 1/4, added and refined by a second RRB;
after each stage a head (RRB to 9 channels, 1x1 convolution to 1 channel) predicts the semantic boundary, trained with
focal loss. Training then returns ``(segmentation, [border_res2, .., border_res5])`` with ``(B, 1, H, W)`` border
logits; the branch is unused at inference.

Differences from the code: the backbone is our ResNet-101 (a 7x7 stem; TorchSeg's "v1c" ResNet-101 has a deep 3x3
stem); the CAB convolutions have biases. Paper configuration: ResNet-101, PASCAL VOC (21 classes), deep supervision
and the border network; the paper gives no parameter count, so none is recorded. 2D only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.layers import Pool
from torch import nn

from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv
from medseg.models.natural.refine._modules import (
    ChannelAttentionBlock,
    RefinementResidualBlock,
    build_backbone,
    upsample_to,
)
from medseg.models.registry import PaperConfig, register_model

__all__ = ["DFN"]


def _head(spatial_dims: int, channels: int, out_channels: int) -> nn.Module:
    """``DFNHead`` of the code: an RRB to 9 x out channels (no final ReLU) and a 1x1 convolution (with bias)."""
    return nn.Sequential(RefinementResidualBlock(spatial_dims, channels, 9 * out_channels, final_act=False),
                         make_conv(spatial_dims, 9 * out_channels, out_channels, 1))


@register_model(
    "dfn",
    family="natural",
    spatial_dims=(2,),
    paper_title="Learning a Discriminative Feature Network for Semantic Segmentation",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=21,
        kwargs={"backbone": "resnet101", "deep_supervision": True, "border_network": True}, params=None,
        source="CVPR 2018, Section 3 and Figure 2 (ResNet-101, PASCAL VOC 21 classes); the paper states no "
               "parameter count",
    ),
    divisor=32,
    deep_supervision=True,
    test_kwargs={"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "channels": 8},
)
class DFN(SegmentationModel):
    """Discriminative Feature Network of Yu et al. (CVPR 2018): smooth network (RRB + CAB) and border network.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``; H and W multiples of 32.

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels (3).
        out_channels: Classes (21 for PASCAL VOC).
        backbone: ``"resnet101"`` (the paper's) or another ResNet.
        pretrained_backbone: Local torchvision/timm weights file for the backbone.
        backbone_kwargs: Extra backbone options.
        channels: Width of the smooth network's RRBs/CABs (512).
        border_channels: Width of the border network's RRBs (21 in the code).
        deep_supervision: A head per stage; training returns the four stage outputs.
        border_network: Build the border network; training then returns ``(segmentation, border_logits)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet101",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        channels: int = 512,
        border_channels: int = 21,
        deep_supervision: bool = False,
        border_network: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride=32,
                                       pretrained=pretrained_backbone, backbone_kwargs=backbone_kwargs)
        stage_channels = self.backbone.out_channels[1:5][::-1]  # res-5, res-4, res-3, res-2
        self.global_pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.global_conv = ConvNormActD(spatial_dims, stage_channels[0], channels, 1)
        self.pre_rrb = nn.ModuleList(RefinementResidualBlock(spatial_dims, c, channels) for c in stage_channels)
        self.cab = nn.ModuleList(ChannelAttentionBlock(spatial_dims, channels) for _ in stage_channels)
        self.post_rrb = nn.ModuleList(RefinementResidualBlock(spatial_dims, channels, channels)
                                      for _ in stage_channels)
        # heads[0] is the res-2 (output) head; with deep supervision heads[1:] serve res-3, res-4, res-5
        self.heads = nn.ModuleList(_head(spatial_dims, channels, out_channels)
                                   for _ in range(4 if deep_supervision else 1))
        self.deep_supervision = deep_supervision
        self.deep_supervision_scales = [(1,) * spatial_dims] * 4 if deep_supervision else []
        self.border: nn.ModuleDict | None = None
        if border_network:
            bottom_up = stage_channels[::-1]  # res-2 .. res-5
            self.border = nn.ModuleDict({
                "pre": nn.ModuleList(RefinementResidualBlock(spatial_dims, c, border_channels) for c in bottom_up),
                "post": nn.ModuleList(RefinementResidualBlock(spatial_dims, border_channels, border_channels)
                                      for _ in range(3)),
                "heads": nn.ModuleList(_head(spatial_dims, border_channels, 1) for _ in range(4)),
            })
        self.input_divisor = (32,) * spatial_dims

    def forward(self, x: torch.Tensor) -> Any:
        """Logits ``(B, out_channels, H, W)``; in training the deep-supervision list and/or the border logits."""
        self.check_input(x)
        stages = self.backbone(x)[1:5][::-1]
        high = self.global_conv(self.global_pool(stages[0])).expand(-1, -1, *stages[0].shape[2:])
        feats = []
        for i, c in enumerate(stages):
            if i > 0:
                high = upsample_to(high, c.shape[2:])
            high = self.post_rrb[i](self.cab[i](self.pre_rrb[i](c), high))
            feats.append(high)
        size = x.shape[2:]
        main = upsample_to(self.heads[0](feats[3]), size)
        if not self.training:
            return main
        seg: torch.Tensor | list[torch.Tensor] = main
        if self.deep_supervision:
            seg = [main, *[upsample_to(head(f), size) for head, f in zip(self.heads[1:], feats[2::-1], strict=True)]]
        if self.border is None:
            return seg
        bottom_up = stages[::-1]
        y = self.border["pre"][0](bottom_up[0])
        borders = [upsample_to(self.border["heads"][0](y), size)]
        for pre, post, head, c in zip(self.border["pre"][1:], self.border["post"], self.border["heads"][1:],
                                      bottom_up[1:], strict=True):
            y = post(y + upsample_to(pre(c), y.shape[2:]))
            borders.append(upsample_to(head(y), size))
        return seg, borders
