"""EfficientNet-B0…B7 backbones (Tan & Le, ICML 2019): mobile inverted bottlenecks scaled in width and depth, 2D/3D.

Paper: M. Tan, Q. V. Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019
(arXiv:1905.11946), Table 1 (the B0 baseline) and Section 3.3 (compound scaling). B0: a 3×3 convolution with stride
2 (32 channels), seven stages of MBConv blocks ``(expansion, kernel, stride, channels, repeats)`` = (1, 3, 1, 16, 1),
(6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1), and a
1×1 convolution to 1280 channels. A block: 1×1 expansion (BN, swish; absent at expansion 1), depthwise ``k×k``
convolution (BN, swish), squeeze-and-excitation (pooled, 1×1 to a quarter of the block's input channels, swish, 1×1
back, sigmoid gate), linear 1×1 projection (BN), identity shortcut at stride 1 with equal channels. B1…B7 multiply the
channels by ``width`` (rounded to multiples of 8) and the repeats by ``depth`` (rounded up): B5 = (1.6, 2.2).

Levels: the last block before each stride change and the final 1×1 convolution — strides 2, 4, 8, 16, 32 (B5: 24, 40,
64, 176, 2048 channels). ``se=False`` removes the squeeze-and-excitation (EfficientPS, Mohan & Valada, IJCV 2021,
Section 3.1), ``act`` sets the activation (EfficientPS: leaky ReLU, slope 0.01, its in-place activated BN).

Parameter figures: torchvision's ``num_params`` of the ImageNet models with their 1000-class classifier
(``EfficientNet_B0_Weights``: 5,288,548; ``EfficientNet_B5_Weights``: 30,389,784).
"""

from __future__ import annotations

import math

import torch
from monai.networks.layers import Pool
from torch import nn

from medseg.models.backbones.base import Backbone, ConvNormActD, make_divisible, stage_schedule
from medseg.models.backbones.registry import BackboneInfo, register_backbone
from medseg.models.blocks import ActSpec, NormSpec, make_act, make_conv

__all__ = ["EFFICIENTNET_B0", "EfficientNetBackbone", "MBConv", "SqueezeExcitation"]

#: B0's stages: expansion, kernel, stride, channels, repeats.
EFFICIENTNET_B0: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
#: Width and depth coefficients of B0…B7 (the paper's Table 2 models, from the authors' ``efficientnet_builder.py``).
COEFFICIENTS = {0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2), 3: (1.2, 1.4), 4: (1.4, 1.8), 5: (1.6, 2.2),
                6: (1.8, 2.6), 7: (2.0, 3.1)}
_SWISH: ActSpec = "swish"


class SqueezeExcitation(nn.Module):
    """Channel gating: global average, 1×1 reduction, activation, 1×1 expansion, sigmoid (Hu et al., CVPR 2018)."""

    def __init__(self, spatial_dims: int, channels: int, reduced: int, act: ActSpec) -> None:
        super().__init__()
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.reduce = make_conv(spatial_dims, channels, reduced, 1)
        self.act = make_act(act, reduced)
        self.expand = make_conv(spatial_dims, reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` gated channel-wise."""
        return x * torch.sigmoid(self.expand(self.act(self.reduce(self.pool(x)))))


class MBConv(nn.Module):
    """Mobile inverted bottleneck with optional squeeze-and-excitation (EfficientNet, Table 1).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: int, dilation: int = 1, se: bool = True, act: ActSpec = _SWISH,
                 norm: NormSpec = "batch") -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormActD(spatial_dims, in_channels, hidden, 1, norm=norm, act=act))
        layers.append(ConvNormActD(spatial_dims, hidden, hidden, kernel_size, stride, dilation, groups=hidden,
                                   norm=norm, act=act))
        if se:
            layers.append(SqueezeExcitation(spatial_dims, hidden, max(1, int(in_channels * 0.25)), act))
        layers.append(ConvNormActD(spatial_dims, hidden, out_channels, 1, norm=norm, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``."""
        return x + self.block(x) if self.use_residual else self.block(x)


class EfficientNetBackbone(Backbone):
    """EfficientNet encoder (Tan & Le, 2019) returning five levels (strides 2…32).

    Shapes: ``(B, in_channels, *spatial)`` to 5 maps ``(B, out_channels[i], *spatial / strides[i])``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        variant: 0…7 (B0…B7).
        output_stride: 8, 16 or 32 (dilated depthwise convolutions in the last stages).
        width: Extra width multiplier on top of the variant's (for small test networks).
        se: Squeeze-and-excitation in every block (``False`` in EfficientPS).
        act: Activation (swish; EfficientPS: leaky ReLU 0.01).
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        variant: int = 0,
        output_stride: int = 32,
        width: float = 1.0,
        se: bool = True,
        act: ActSpec = _SWISH,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, output_stride)
        w, d = COEFFICIENTS[int(variant)]
        w *= width

        def channels_of(c: int) -> int:
            return make_divisible(c * w)

        channels = channels_of(32)
        self.stem = ConvNormActD(spatial_dims, in_channels, channels, 3, 2, norm=norm, act=act)
        schedule = stage_schedule([s for _, _, s, _, _ in EFFICIENTNET_B0], output_stride, start_stride=2)
        blocks: list[nn.Module] = []
        self._taps: list[int] = []
        total = 2
        for (t, k, nominal, c, n), (stride, first_dilation, dilation) in zip(EFFICIENTNET_B0, schedule,
                                                                            strict=True):
            out = channels_of(c)
            if nominal > 1 and blocks:  # the block before a (nominal) stride change ends a level
                self._taps.append(len(blocks) - 1)
                self.out_channels.append(channels)
                self.strides.append(total)
            total *= stride
            for j in range(math.ceil(n * d)):
                blocks.append(MBConv(spatial_dims, channels, out, k, stride if j == 0 else 1, t,
                                     first_dilation if j == 0 else dilation, se, act, norm))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        head = make_divisible(1280 * w)
        self.head = ConvNormActD(spatial_dims, channels, head, 1, norm=norm, act=act)
        self.out_channels.append(head)
        self.strides.append(total)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the 5 feature maps of ``x``, highest resolution first."""
        self.check_input(x)
        x = self.stem(x)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self._taps:
                out.append(x)
        out.append(self.head(x))
        return out

    def classifier_head(self, num_classes: int = 1000) -> nn.Module:
        """The classifier of torchvision's model: dropout and a linear layer on the pooled last level."""
        return nn.Sequential(nn.Dropout(0.2), nn.Linear(self.out_channels[-1], num_classes))


def _builder(variant: int):
    def build(spatial_dims: int, in_channels: int, *, output_stride: int = 32, **kwargs: object
              ) -> EfficientNetBackbone:
        return EfficientNetBackbone(spatial_dims, in_channels, variant=variant, output_stride=output_stride,
                                    **kwargs)  # type: ignore[arg-type]

    return build


_PAPER = "Tan, Le, 'EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks', ICML 2019"
for _variant, _params in ((0, 5_288_548), (5, 30_389_784)):
    register_backbone(BackboneInfo(
        name=f"efficientnet_b{_variant}", family="efficientnet", builder=_builder(_variant), spatial_dims=(2, 3),
        paper=_PAPER, paper_params=_params,
        source=f"torchvision torchvision/models/efficientnet.py, EfficientNet_B{_variant}_Weights.IMAGENET1K_V1 "
               "meta num_params",
        test_kwargs={"width": 0.25},
    ))

