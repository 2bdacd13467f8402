"""V-Net: fully convolutional network with residual stages and strided-convolution downsampling (Milletari 2016).

Paper: F. Milletari, N. Navab, S.-A. Ahmadi, "V-Net: Fully Convolutional Neural Networks for Volumetric Medical
Image Segmentation", 3DV 2016 (arXiv:1606.04797), Section 2 and Fig. 2.

Layout (Fig. 2): five resolution stages with 16, 32, 64, 128, 256 channels. Each stage has one to three 5x5x5
convolutions (padded), each followed by PReLU, and learns a residual function: the stage's input is added
element-wise to the output of its last convolution (the sum is the stage output, as drawn in Fig. 2).
Downsampling is a 2x2x2 convolution with stride 2 that doubles the channels (then PReLU).
The right part mirrors the left: a 2x2x2 transposed convolution with stride 2 (then PReLU) brings the features up to
half the channels of the stage, they are concatenated with the left part's features of the same resolution
(the fine-grained features forwarded by the horizontal connections), the stage's convolutions run on the
concatenation and the residual adds the concatenation to their output. A final 1x1x1 convolution gives the output
channels (2 in the paper, followed by a softmax applied in the loss). Convolutions per stage: 1, 2, 3, 3 on the left,
3 at the bottom, 3, 3, 2, 1 on the right. The paper uses no normalisation layer.

The first stage's residual adds the input to 16 channels: for a 1-channel input (the paper) the input is repeated
across the 16 channels; for other channel counts that divide 16 it is repeated ``16 / in_channels`` times, and
otherwise a 1x1x1 projection is used (our choice; the paper only has 1-channel inputs).

We write our own implementation: MONAI's ``VNet`` adds batch normalisation to every convolution and uses other
convolution counts in its up path, so it does not match Fig. 2. PReLU slopes are per channel (Caffe's default).

Paper configuration: 3D, 1 input channel, 2 output channels, 128x128x64 input. The paper states no parameter
count, so the registry records ``None``. 2D use keeps the same layout with 5x5 kernels.
"""

from __future__ import annotations

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, NormSpec, make_act, make_conv, make_transposed_conv
from medseg.models.registry import PaperConfig, register_model

__all__ = ["VNet"]

_DOWN_CONVS = (1, 2, 3, 3, 3)  # left stages 1-4 and the bottom stage
_UP_CONVS = (3, 3, 2, 1)  # right stages, lowest resolution first


class _ResidualStage(nn.Module):
    """``n`` 5x5x5 conv-PReLU layers whose output is added to the stage input (``(B, C, *s) -> (B, C, *s)``)."""

    def __init__(self, spatial_dims: int, channels: int, n: int, kernel_size: int, norm: NormSpec) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[
            ConvNormAct(spatial_dims, channels, channels, kernel_size, norm=norm, act="prelu") for _ in range(n)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x) + x


@register_model(
    "vnet",
    family="vnet",
    spatial_dims=(2, 3),
    paper_title="V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image Segmentation",
    paper_year=2016,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        kwargs={},
        params=None,
        source="3DV 2016, Section 2 and Fig. 2 (no parameter count given)",
    ),
    divisor=16,
    test_kwargs={3: {"base_features": 4, "kernel_size": 3}, 2: {"base_features": 4}},
)
class VNet(SegmentationModel):
    """V-Net of Milletari et al. (3DV 2016), 3D as in the paper or 2D with the same layout.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of 16.

    Args:
        spatial_dims: 3 (paper) or 2.
        in_channels: Input channels (paper: 1).
        out_channels: Output channels (paper: 2).
        base_features: Channels of the first stage (paper: 16); stage ``s`` has ``base_features * 2**s``.
        kernel_size: Kernel of the stage convolutions (paper: 5).
        norm: Normalisation after each convolution (paper: none).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        base_features: int = 16,
        kernel_size: int = 5,
        norm: NormSpec = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if base_features < 2 or base_features % 2:
            raise ModelError(f"{self.model_name}: base_features must be an even integer >= 2, got {base_features}")
        widths = [base_features * 2**s for s in range(5)]
        self.input_conv = ConvNormAct(spatial_dims, in_channels, widths[0], kernel_size, norm=norm, act="prelu")
        self.repeat = widths[0] // in_channels if widths[0] % in_channels == 0 else 0
        self.input_proj = None if self.repeat else make_conv(spatial_dims, in_channels, widths[0], 1, bias=False)
        self.down_stages = nn.ModuleList(
            [nn.Identity()] + [_ResidualStage(spatial_dims, widths[s], _DOWN_CONVS[s], kernel_size, norm)
                               for s in range(1, 5)]
        )
        self.down_convs = nn.ModuleList(
            ConvNormAct(spatial_dims, widths[s], widths[s + 1], 2, 2, padding=0, norm=norm, act="prelu")
            for s in range(4)
        )
        self.up_convs = nn.ModuleList()
        self.up_stages = nn.ModuleList()
        for i, s in enumerate(range(3, -1, -1)):  # s: resolution of the right stage
            stage_width = 2 * widths[s]  # concatenation of the up-convolved half and the skip
            below = widths[4] if i == 0 else 2 * widths[s + 1]
            self.up_convs.append(nn.Sequential(
                make_transposed_conv(spatial_dims, below, stage_width // 2, 2),
                make_act("prelu", stage_width // 2),
            ))
            self.up_stages.append(_ResidualStage(spatial_dims, stage_width, _UP_CONVS[i], kernel_size, norm))
        self.head = make_conv(spatial_dims, 2 * widths[0], out_channels, 1)
        self.input_divisor = (16,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        residual = x.repeat(1, self.repeat, *([1] * self.spatial_dims)) if self.repeat else self.input_proj(x)
        x = self.input_conv(x) + residual
        skips = [x]
        for s in range(4):
            x = self.down_stages[s + 1](self.down_convs[s](x))
            skips.append(x)
        x = skips.pop()
        for up, stage in zip(self.up_convs, self.up_stages, strict=True):
            x = stage(torch.cat((up(x), skips.pop()), dim=1))
        return self.head(x)
