"""DenseASPP (Yang et al., CVPR 2018), 2D.

Paper: M. Yang, K. Yu, C. Zhang, Z. Li, K. Yang, "DenseASPP for Semantic Segmentation in Street Scenes", CVPR 2018,
Sections 3.1-3.3 and Fig. 2.

Layout (Section 3.3; the authors' ``DenseASPP`` with ``cfgs/DenseASPP161.py``): a DenseNet-161 (or -121) backbone
with output stride 8 (the last two transitions keep the size; blocks 3 and 4 dilated by 2 and 4); the reference
keeps a fourth transition after the last block (BN-ReLU, 1x1 convolution halving the channels: 2208 -> 1104) and a
BN; then five densely connected atrous layers with rates 3, 6, 12, 18, 24: layer ``l`` sees the backbone map
concatenated with the outputs of all previous layers and applies BN-ReLU (not on the first), a 1x1 convolution to
``d_feature0 = 512`` channels, BN-ReLU and a 3x3 convolution with dilation ``rate_l`` to ``d_feature1 = 128`` channels
(dropout 0.1 after); the backbone map and the five outputs (1104 + 5·128 = 1744 channels) are classified by dropout
0.1 and a 1x1 convolution, and the logits are upsampled to the input. For DenseNet-121 the reference uses
``d_feature0 = 128, d_feature1 = 64``; set them with the options.

Parameter figure: a figure of about 35.4M for DenseASPP on DenseNet-161 is attributed to the paper, but we could
not read the paper's tables in any source available to us (the copies we could search give its abstract and
introduction only), so ``params`` is ``None``. At the paper configuration (DenseNet-161, Cityscapes 19 classes) we
count 35,395,427: backbone without its classifier 26,472,000 (its final BN is the reference's BN of the fourth
transition); fourth transition 2,439,840 (1x1 convolution 2,437,632, BN 2,208: the reference's ``norm5``); DenseASPP
layers 6,450,432; classifier 33,155. Checked against the authors' code (github.com/DeepMotionAIResearch/DenseASPP,
``models/DenseASPP.py`` with ``cfgs/DenseASPP161.py``): counted layer by layer it has exactly 35,395,427
parameters, and these with the 238,656 BN running statistics take 142.5 MB in float32, in line with the "142.7 MB"
the authors' README gives for the released DenseASPP161 checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_act, make_norm
from medseg.models.natural.attention._modules import build_backbone, conv1x1, dropout, resize_to
from medseg.models.registry import PaperConfig, register_model

__all__ = ["DenseASPP", "DenseASPPLayer"]


class DenseASPPLayer(nn.Sequential):
    """One atrous layer of DenseASPP: [BN-ReLU] 1x1 conv, BN-ReLU, dilated 3x3 conv, dropout.

    The first layer has no leading BN-ReLU; the reference's in-place ReLU there also rectifies the backbone map
    that the later layers and the classifier see, so :class:`DenseASPP` applies that ReLU after its transition.

    Shapes: ``(B, C_in, H, W)`` to ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, rate: int, drop: float,
                 norm_first: bool) -> None:
        super().__init__()
        if norm_first:
            self.add_module("norm1", make_norm("batch", 2, in_channels))
            self.add_module("act1", make_act(("relu", {"inplace": True})))
        self.add_module("conv1", conv1x1(2, in_channels, mid_channels))
        self.add_module("norm2", make_norm("batch", 2, mid_channels))
        self.add_module("act2", make_act(("relu", {"inplace": True})))
        self.add_module("conv2", ConvNormActD(2, mid_channels, out_channels, 3, dilation=rate, bias=True, norm=None,
                                              act=None))
        self.add_module("drop", nn.Dropout2d(drop))


@register_model(
    "denseaspp",
    family="natural",
    spatial_dims=(2,),
    paper_title="DenseASPP for Semantic Segmentation in Street Scenes",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, kwargs={}, params=None,
        source="CVPR 2018, Section 3.3 and 4 (DenseNet-161, output stride 8, rates 3-24, Cityscapes 19 classes; "
               "d_feature0/1 = 512/128 from the authors' cfgs/DenseASPP161.py); no parameter figure could be read in "
               "the paper (our count equals the authors' code: 35,395,427)",
    ),
    divisor=1,
    test_kwargs={"backbone": "densenet121",
                 "backbone_kwargs": {"growth_rate": 8, "init_features": 16, "block_config": (2, 2, 2, 2)},
                 "d_feature0": 16, "d_feature1": 8},
)
class DenseASPP(SegmentationModel):
    """DenseASPP of Yang et al. (CVPR 2018): DenseNet at output stride 8 + densely connected atrous convolutions.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)`` (any size).

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels (paper: 3).
        out_channels: Classes.
        backbone: A DenseNet backbone key (paper: ``"densenet161"``).
        output_stride: Output stride (paper: 8).
        pretrained_backbone: Local torchvision/timm weights file for the backbone.
        backbone_kwargs: Further backbone options.
        rates: Dilation rates of the atrous layers (3, 6, 12, 18, 24).
        d_feature0: Width of each layer's 1x1 convolution (512 for DenseNet-161).
        d_feature1: Channels each layer adds (128 for DenseNet-161).
        drop: Dropout after each layer and before the classifier (0.1).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "densenet161",
        output_stride: int = 8,
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        rates: Sequence[int] = (3, 6, 12, 18, 24),
        d_feature0: int = 512,
        d_feature1: int = 128,
        drop: float = 0.1,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if spatial_dims != 2:
            raise ModelError(f"{self.model_name}: DenseASPP is 2D only, got spatial_dims={spatial_dims}")
        self.encoder = build_backbone(self.model_name, backbone, 2, in_channels, output_stride, pretrained_backbone,
                                      backbone_kwargs)
        top = self.encoder.out_channels[-1]
        channels = top // 2
        # The reference's fourth transition (its BN-ReLU is the backbone's final BN-ReLU), BN ("norm5") and the
        # in-place ReLU of the first atrous layer.
        self.transition = ConvNormActD(2, top, channels, 1)
        self.aspp = nn.ModuleList()
        for i, rate in enumerate(rates):
            self.aspp.append(DenseASPPLayer(channels, d_feature0, d_feature1, rate, drop, norm_first=i > 0))
            channels += d_feature1
        self.classifier = nn.Sequential(dropout(2, drop), conv1x1(2, channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, H, W)``."""
        self.check_input(x)
        feature = self.transition(self.encoder(x)[-1])
        for layer in self.aspp:
            feature = torch.cat((layer(feature), feature), dim=1)
        return resize_to(self.classifier(feature), x.shape[2:])
