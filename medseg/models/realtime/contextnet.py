"""ContextNet (Poudel, Bonde, Liwicki & Zach, 2018), 2D and 3D.

Paper: R. P. K. Poudel, U. Bonde, S. Liwicki, C. Zach, "ContextNet: Exploring Context and Detail for Semantic
Segmentation in Real-time", BMVC 2018 (arXiv:1805.04554), Section 3, Table 1 (branches) and the feature fusion
unit. No official code was released.

Layout (ContextNet-14: the context branch sees the image at 1/4 resolution, the detail branch at full resolution):

* Context branch (deep, low resolution; Table 1): the input bilinearly subsampled by 4, a 3x3 convolution with
  stride 2 (32 channels), MobileNetV2 bottleneck residual blocks ``(t, c, n, s)`` = (1, 32, 1, 1), (6, 32, 1, 1),
  (6, 48, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1), (6, 128, 2, 1) (our MobileNetV2 backbone's inverted residual block:
  1x1 expansion, 3x3 depthwise, linear 1x1 projection, ReLU6, residual where the shapes match), and a last
  convolution to 128 channels: 1/32 of the input.
* Spatial detail branch (shallow, full resolution): a 3x3 convolution with stride 2 (32) and three depthwise
  separable convolutions (depthwise 3x3 + BN, pointwise 1x1 + BN + ReLU) to 64 (stride 2), 128 (stride 2) and 128:
  1/8 of the input.
* Feature fusion unit: the context features upsampled x4, a depthwise 3x3 convolution dilated by 4 (BN, ReLU) and
  a 1x1 convolution (BN); the detail features through a 1x1 convolution (BN); summed, ReLU.
* Classifier: a 1x1 convolution to the classes at 1/8, upsampled bilinearly to the input size.

The input must be a multiple of 32 per axis. 3D: the same layers from MONAI's factories (the context branch sees the
volume subsampled by 4 per axis).

Parameter figure: 0.85 M parameters for ContextNet-14 (the paper's figure as quoted by later comparisons, e.g.
Fast-SCNN's; the paper's tables could not be read here). We read the last row of the context branch, a convolution to
128 channels, as 1x1, like the last row of MobileNetV2's Table 2 from which the branch is built (with a 3x3 kernel the
network would have 986,835 parameters, 16 % above the paper's figure). We count 855,763 at ``in_channels=3,
out_channels=19`` (Cityscapes), 0.7 % above 0.85 M (context branch 787,968, detail branch 30,656, fusion 34,688,
classifier 2,451). This reading of the table is ours: there is no official code to confirm it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.models.backbones.base import ConvNormActD, make_divisible
from medseg.models.backbones.mobilenetv2 import InvertedResidual
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv, resample_linear
from medseg.models.registry import PaperConfig, register_model

__all__ = ["CONTEXT_SETTINGS", "ContextNet", "DSConv", "FeatureFusion", "bottleneck_stages"]

#: Bottleneck stages of the context branch, ``(t, c, n, s)`` as in Table 1.
CONTEXT_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 32, 1, 1), (6, 32, 1, 1), (6, 48, 3, 2), (6, 64, 3, 2), (6, 96, 2, 1), (6, 128, 2, 1),
)


class DSConv(nn.Sequential):
    """Depthwise separable convolution: depthwise 3x3 (BN, no activation) then pointwise 1x1 (BN, ReLU).

    ContextNet's and Fast-SCNN's "DSConv"/"DWConv" rows; Fast-SCNN (Section 3.2.1, after MobileNetV2) omits the
    nonlinearity between the depthwise and pointwise convolutions.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            ConvNormActD(spatial_dims, in_channels, in_channels, 3, stride, groups=in_channels, act=None),
            ConvNormActD(spatial_dims, in_channels, out_channels, 1))


class FeatureFusion(nn.Module):
    """Fusion of a high-resolution and a low-resolution branch (ContextNet; Fast-SCNN Table 2).

    Low resolution: upsample by ``factor``, depthwise 3x3 convolution dilated by ``factor`` (BN, ReLU), 1x1
    convolution (BN). High resolution: 1x1 convolution (BN). Sum, ReLU.

    Shapes: ``(B, C_high, *spatial)`` and ``(B, C_low, *spatial / factor)`` to ``(B, C_out, *spatial)``.
    """

    def __init__(self, spatial_dims: int, high_channels: int, low_channels: int, out_channels: int,
                 factor: int = 4) -> None:
        super().__init__()
        self.low = nn.Sequential(
            ConvNormActD(spatial_dims, low_channels, low_channels, 3, dilation=factor, groups=low_channels),
            ConvNormActD(spatial_dims, low_channels, out_channels, 1, act=None))
        self.high = ConvNormActD(spatial_dims, high_channels, out_channels, 1, act=None)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """Fuse ``high`` with ``low`` upsampled to its size."""
        return torch.relu(self.high(high) + self.low(resample_linear(low, high.shape[2:])))


def bottleneck_stages(spatial_dims: int, in_channels: int,
                      settings: Sequence[tuple[int, int, int, int]]) -> tuple[nn.Sequential, int]:
    """MobileNetV2 bottleneck stages ``(t, c, n, s)``: ``n`` blocks each, the first with stride ``s``.

    Returns the blocks and their output channels.
    """
    blocks: list[nn.Module] = []
    for t, c, n, s in settings:
        for i in range(n):
            blocks.append(InvertedResidual(spatial_dims, in_channels, c, s if i == 0 else 1, t))
            in_channels = c
    return nn.Sequential(*blocks), in_channels


@register_model(
    "contextnet",
    family="realtime",
    spatial_dims=(2, 3),
    paper_title="ContextNet: Exploring Context and Detail for Semantic Segmentation in Real-time",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, params=850_000,
        source="BMVC 2018 (arXiv:1805.04554): 0.85 M parameters (ContextNet-14, Cityscapes 19 classes); Table 1 "
               "branches with the context branch's last convolution read as 1x1; no official code",
    ),
    divisor=32,
    test_kwargs={"width": 0.25},
)
class ContextNet(SegmentationModel):
    """ContextNet (Poudel et al., BMVC 2018): deep context branch at 1/4 resolution + shallow detail branch, fused.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each size a multiple of 32.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes.
        width: Width multiplier of every layer (channels rounded to multiples of 8; paper: 1).
        context_factor: Subsampling of the context branch's input (paper's ContextNet-14: 4).
        features: Channels of both branch outputs and of the fusion (paper: 128).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        width: float = 1.0,
        context_factor: int = 4,
        features: int = 128,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.context_factor = int(context_factor)
        self.input_divisor = (8 * self.context_factor,) * spatial_dims
        dims = spatial_dims

        def w(c: int) -> int:
            return make_divisible(c * width)

        f = w(features)
        stem = w(32)
        settings = [(t, w(c), n, s) for t, c, n, s in CONTEXT_SETTINGS]
        stages, c_last = bottleneck_stages(dims, stem, settings)
        self.context = nn.Sequential(ConvNormActD(dims, in_channels, stem, 3, 2), stages,
                                     ConvNormActD(dims, c_last, f, 1))
        self.detail = nn.Sequential(ConvNormActD(dims, in_channels, w(32), 3, 2), DSConv(dims, w(32), w(64), 2),
                                    DSConv(dims, w(64), f, 2), DSConv(dims, f, f, 1))
        self.fusion = FeatureFusion(dims, f, f, f, factor=self.context_factor)
        self.classifier = make_conv(dims, f, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        small = resample_linear(x, [s // self.context_factor for s in x.shape[2:]])
        y = self.fusion(self.detail(x), self.context(small))
        return resample_linear(self.classifier(y), x.shape[2:])

