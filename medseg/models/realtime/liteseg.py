"""LiteSeg, a lightweight encoder-decoder with a deeper atrous spatial pyramid (Emara et al., 2019), 2D and 3D.

Paper: T. Emara, H. E. Abd El Munim, H. M. Abbas, "LiteSeg: A Novel Lightweight ConvNet for Semantic Segmentation",
DICTA 2019 (arXiv:1912.06683), Section III; the authors' PyTorch code (github.com/tahaemara/LiteSeg,
``models/liteseg_mobilenet.py``, ``models/aspp.py``, ``models/separableconv.py``), whose layers we follow. This is
the MobileNetV2 configuration (LiteSeg-MobileNet) on our ``mobilenetv2`` backbone.

Layout: MobileNetV2 (Sandler et al., 2018; width 1, its 1x1 convolution to 1280 channels last, output stride 32)
gives the 1/32 map and the 1/4 map of its third inverted residual block (24 channels). The deeper atrous spatial
pyramid pooling (DASPP) has a 1x1 separable convolution branch (BN), three 3x3 atrous separable convolution branches
with rates 3, 6, 9 (BN), each followed by a further 3x3 separable convolution (BN, ReLU), and an image pooling branch
(global average pooling, 1x1 convolution, BN, ReLU, upsampled), all with 96 channels; they are concatenated with the
backbone's map itself (a short residual connection: 1280 + 5 x 96 channels) and reduced by a 1x1 separable
convolution to 96 channels (BN, ReLU). The decoder upsamples this to 1/4, concatenates the 24 low-level channels,
applies two 3x3 separable convolutions (96 channels, BN, ReLU each) and a 1x1 convolution to the classes, and
upsamples the scores to the input. A separable convolution is a depthwise convolution followed by a pointwise one,
both without bias or normalisation in between (the code's ``SeparableConv2d``).

Dims: 2D and 3D (MobileNetV2 and every layer come from MONAI's factories); inputs divisible by 32.

Parameter figure: the paper and the authors' README give 4.38M for LiteSeg-MobileNet, which is the authors' code's
count, 4,382,707 (19 classes): it includes the ImageNet classifier of its MobileNetV2 (1280 x 1000 + 1000 = 1,281,000
parameters) that the segmentation network never uses. Without it the authors' network has 3,101,707 parameters, as
ours does (every parameter of ours takes part in the forward pass); we record that figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.layers import Pool
from torch import nn

from medseg.models.backbones.base import RELU, ConvNormActD, conv_nd
from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormSpec, make_act, make_conv, make_norm
from medseg.models.natural.classic._modules import build_backbone, resize
from medseg.models.registry import PaperConfig, register_model

__all__ = ["DASPP", "LiteSeg", "SeparableConvNormAct"]


class SeparableConvNormAct(nn.Sequential):
    """Depthwise kxk convolution, pointwise 1x1 convolution (no bias, nothing in between), normalisation, activation.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: Kernel of the depthwise convolution.
        dilation: Dilation of the depthwise convolution.
        norm: Normalisation.
        act: Activation or ``None``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 dilation: int = 1, norm: NormSpec = "batch", act: Any = RELU) -> None:
        super().__init__()
        self.add_module("dw", conv_nd(spatial_dims, in_channels, in_channels, kernel_size, dilation=dilation,
                                      groups=in_channels))
        self.add_module("pw", conv_nd(spatial_dims, in_channels, out_channels, 1))
        norm_layer = make_norm(norm, spatial_dims, out_channels)
        if norm_layer is not None:
            self.add_module("norm", norm_layer)
        act_layer = make_act(act, out_channels)
        if act_layer is not None:
            self.add_module("act", act_layer)


class DASPP(nn.Module):
    """LiteSeg's deeper atrous spatial pyramid pooling with the input concatenated (Section III).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_in + (len(rates) + 1) * channels, *spatial)`` (before the reduction,
    which the model applies).

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in (1280 for MobileNetV2).
        channels: Channels of each branch (96).
        rates: Atrous rates; rate 1 is a 1x1 branch (1, 3, 6, 9).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int = 96, rates: Sequence[int] = (1, 3, 6, 9),
                 norm: NormSpec = "batch") -> None:
        super().__init__()
        self.rates = tuple(rates)
        branches: list[nn.Module] = []
        for r in self.rates:
            if r == 1:
                branches.append(SeparableConvNormAct(spatial_dims, in_channels, channels, 1, norm=norm, act=None))
            else:
                branches.append(nn.Sequential(
                    SeparableConvNormAct(spatial_dims, in_channels, channels, 3, r, norm=norm, act=None),
                    SeparableConvNormAct(spatial_dims, channels, channels, 3, norm=norm),
                ))
        self.branches = nn.ModuleList(branches)
        self.image_pool = nn.Sequential(Pool[Pool.ADAPTIVEAVG, spatial_dims](1),
                                        ConvNormActD(spatial_dims, in_channels, channels, 1, norm=norm))
        self.out_channels = in_channels + (len(self.rates) + 1) * channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate ``x``, its atrous branches and its (broadcast) image pooling."""
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[2:])
        return torch.cat([x, *(b(x) for b in self.branches), pooled], dim=1)


@register_model(
    "liteseg",
    family="realtime",
    spatial_dims=(2, 3),
    paper_title="LiteSeg: A Novel Lightweight ConvNet for Semantic Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, kwargs={}, params=3_101_707,
        source="authors' code github.com/tahaemara/LiteSeg models/liteseg_mobilenet.py (19 classes): 4,382,707 "
               "(paper/README: 4.38M) of which 1,281,000 belong to MobileNetV2's unused ImageNet classifier",
    ),
    divisor=32,
    test_kwargs={"backbone_kwargs": {"width": 0.25}, "aspp_channels": 8, "decoder_channels": 8},
)
class LiteSeg(SegmentationModel):
    """LiteSeg-MobileNet (Emara et al., DICTA 2019): MobileNetV2, DASPP with a residual concatenation, decoder.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` (spatial sizes divisible by 32).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes.
        backbone: Encoder (``"mobilenetv2"``); its level 1 (stride 4) and last level are used.
        output_stride: Output stride of the backbone (32 in the authors' code).
        pretrained_backbone: Local weights of the backbone.
        backbone_kwargs: Further backbone options.
        rates: DASPP rates (1, 3, 6, 9).
        aspp_channels: Channels of the DASPP branches and of its reduction (96).
        decoder_channels: Channels of the decoder's separable convolutions (96).
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "mobilenetv2",
        output_stride: int = 32,
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        rates: Sequence[int] = (1, 3, 6, 9),
        aspp_channels: int = 96,
        decoder_channels: int = 96,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride, pretrained_backbone,
                                       backbone_kwargs, self.model_name)
        self.input_divisor = (32,) * spatial_dims
        low = self.backbone.out_channels[1]
        self.daspp = DASPP(spatial_dims, self.backbone.out_channels[-1], aspp_channels, rates, norm)
        self.reduce = SeparableConvNormAct(spatial_dims, self.daspp.out_channels, aspp_channels, 1, norm=norm)
        self.decoder = nn.Sequential(
            SeparableConvNormAct(spatial_dims, aspp_channels + low, decoder_channels, 3, norm=norm),
            SeparableConvNormAct(spatial_dims, decoder_channels, decoder_channels, 3, norm=norm),
            make_conv(spatial_dims, decoder_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        feats = self.backbone(x)
        low = feats[1]
        h = resize(self.reduce(self.daspp(feats[-1])), low.shape[2:])
        return resize(self.decoder(torch.cat([h, low], dim=1)), x.shape[2:])
