"""MobileNetV2 backbone (Sandler et al., 2018): inverted residuals with linear bottlenecks, width multiplier, 2D/3D.

Paper: M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018 (arXiv:1801.04381), Table 2: a 3x3 convolution with stride 2 (32 channels), then inverted
residual blocks ``(t, c, n, s)`` = (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
(6, 160, 3, 2), (6, 320, 1, 1), then a 1x1 convolution to 1280 channels. Each block: 1x1 expansion to ``t`` times the
channels (BN, ReLU6; absent when ``t == 1``), 3x3 depthwise convolution (BN, ReLU6), linear 1x1 projection (BN); an
identity shortcut when the stride is 1 and the channels do not change. The width multiplier scales the channels,
rounded to multiples of 8 (the last layer is never narrowed).

Levels: strides 2, 4, 8, 16, 32 with 16, 24, 32, 96, 1280 channels (at width 1). With ``output_stride`` 16 or 8 the
strided depthwise convolutions of the last stages become dilated ones (DeepLabv3, Chen et al., 2017, Section 4.2 uses
MobileNetV2 this way). Parameter figure: 3,504,872 with torchvision's 1280-1000 classifier (3.4M in the paper's
Table 4, 3.0% below). The authors' TensorFlow release lists "3.47" M parameters for ``mobilenet_v2_1.0_224``
(tensorflow/models, ``research/slim/nets/mobilenet/README.md``), 1.0% below our count.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from medseg.models.backbones.base import Backbone, ConvNormActD, make_divisible, stage_schedule
from medseg.models.backbones.registry import BackboneInfo, register_backbone
from medseg.models.blocks import NormSpec

__all__ = ["MOBILENETV2_SETTINGS", "InvertedResidual", "MobileNetV2Backbone"]

MOBILENETV2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
_RELU6 = ("relu6", {"inplace": True})


class InvertedResidual(nn.Module):
    """Inverted residual block with a linear bottleneck (Sandler et al., 2018, Figure 3b and Table 1).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        stride: Stride of the depthwise convolution.
        expand_ratio: Expansion factor t.
        dilation: Dilation of the depthwise convolution.
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: int,
        dilation: int = 1,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormActD(spatial_dims, in_channels, hidden, 1, norm=norm, act=_RELU6))
        layers.append(ConvNormActD(spatial_dims, hidden, hidden, 3, stride, dilation, groups=hidden, norm=norm,
                                   act=_RELU6))
        layers.append(ConvNormActD(spatial_dims, hidden, out_channels, 1, norm=norm, act=None))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``."""
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Backbone(Backbone):
    """MobileNetV2 encoder; ``features`` has torchvision's 19 entries (stem, 17 blocks, last 1x1 convolution).

    Shapes: ``(B, in_channels, *spatial)`` to 5 maps ``(B, out_channels[i], *spatial / strides[i])``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        output_stride: 8, 16 or 32.
        width: Width multiplier (1.0 in the paper's main model).
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        output_stride: int = 32,
        width: float = 1.0,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, output_stride)
        channels = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        features: list[nn.Module] = [ConvNormActD(spatial_dims, in_channels, channels, 3, 2, norm=norm, act=_RELU6)]
        schedule = stage_schedule([s for _, _, _, s in MOBILENETV2_SETTINGS], output_stride, start_stride=2)
        total = 2
        self._taps: list[int] = []
        for (t, c, n, nominal), (stride, first_dilation, dilation) in zip(MOBILENETV2_SETTINGS, schedule,
                                                                         strict=True):
            out = make_divisible(c * width)
            if nominal > 1:  # the block before a (nominal) stride change ends a level
                self._taps.append(len(features) - 1)
                self.out_channels.append(channels)
                self.strides.append(total)
                total *= stride
            for j in range(n):
                features.append(InvertedResidual(spatial_dims, channels, out, stride if j == 0 else 1, t,
                                                 first_dilation if j == 0 else dilation, norm))
                channels = out
        features.append(ConvNormActD(spatial_dims, channels, last, 1, norm=norm, act=_RELU6))
        self._taps.append(len(features) - 1)
        self.out_channels.append(last)
        self.strides.append(total)
        self.features = nn.Sequential(*features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the 5 feature maps of ``x`` (``(B, in_channels, *spatial)``), highest resolution first."""
        self.check_input(x)
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                out.append(x)
        return out

    def classifier_head(self, num_classes: int = 1000) -> nn.Module:
        """The classifier of torchvision's model: dropout 0.2 and a linear layer on the pooled 1280 channels."""
        return nn.Sequential(nn.Dropout(0.2), nn.Linear(self.out_channels[-1], num_classes))


_TV_NESTED = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.([01])\.(\w+)$")
_TV_FLAT = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(\w+)$")
_TV_EDGE = re.compile(r"^features\.(\d+)\.([01])\.(\w+)$")


def _map_torchvision(key: str, backbone: Backbone) -> str | None:
    """Map torchvision's ``features.N.conv.A.B.*`` / ``features.N.conv.A.*`` / ``features.N.B.*`` to ours."""
    if key.startswith("classifier."):
        return None
    if m := _TV_NESTED.match(key):  # expansion / depthwise ConvBNReLU: .0 conv, .1 bn
        return f"features.{m[1]}.conv.{m[2]}.{'conv' if m[3] == '0' else 'norm'}.{m[4]}"
    if m := _TV_FLAT.match(key):  # projection: conv at index L-1, its BN at index L
        block = backbone.features[int(m[1])]  # type: ignore[index]
        last = len(block.conv)
        a = int(m[2])
        if a == last - 1:
            return f"features.{m[1]}.conv.{a}.conv.{m[3]}"
        if a == last:
            return f"features.{m[1]}.conv.{a - 1}.norm.{m[3]}"
        return key
    if m := _TV_EDGE.match(key):  # stem and last ConvBNReLU6
        return f"features.{m[1]}.{'conv' if m[2] == '0' else 'norm'}.{m[3]}"
    return key


def _build(spatial_dims: int, in_channels: int, *, output_stride: int = 32, **kwargs: object) -> MobileNetV2Backbone:
    return MobileNetV2Backbone(spatial_dims, in_channels, output_stride=output_stride, **kwargs)  # type: ignore[arg-type]


register_backbone(BackboneInfo(
    name="mobilenetv2", family="mobilenetv2", builder=_build, spatial_dims=(2, 3),
    paper="Sandler, Howard, Zhu, Zhmoginov, Chen, 'MobileNetV2: Inverted Residuals and Linear Bottlenecks', CVPR 2018",
    paper_params=3_504_872,
    source="torchvision torchvision/models/mobilenetv2.py, MobileNet_V2_Weights.IMAGENET1K_V1 meta num_params "
           "(paper Table 4: 3.4M; authors' TF slim README, mobilenet_v2_1.0_224: 3.47M)",
    key_maps={"torchvision": _map_torchvision}, test_kwargs={"width": 0.25},
))
