"""SUNet: a residual U-Net for acute stroke lesion segmentation in multimodal MRI (Clèrigues et al., 2018).

Paper: A. Clèrigues, S. Valverde, J. Bernal, J. Freixenet, A. Oliver, X. Lladó, "SUNet: a deep learning
architecture for acute stroke lesion segmentation and outcome prediction in multimodal MRI", arXiv:1810.13304 (2018),
Section 2.2 and Fig. 2; authors' code: github.com/NIC-VICOROB/SUNet-architecture (Keras,
``architecture/SUNETx4.py``: ``generate_uresnet_model``, the framework of the paper's experiments) and the authors'
later PyTorch port github.com/albertclerigues/stroke-mri-segmentation (``niclib/architecture/SUNet.py``,
``SUNETx4``).

Layout (``SUNETx4``): a 3x3(x3) input convolution to 32 channels, then four resolution levels. Every encoder level
ends in a "dual" residual block (pre-activation BN-PReLU-conv, element-wise dropout 0.2, BN-PReLU-conv, plus the
block input); between levels a "down" step concatenates a strided 3x3 pre-activation convolution (same width) with a
2x2 max pooling of its input, which doubles the width (32, 64, 128, 256). The decoder upsamples with 3x3 transposed
convolutions (stride 2) to the width of the level below, adds the encoder block's output (additive skips, no
concatenation) and applies a "mono" residual block (one pre-activation convolution plus the block input). The
output convolution is 1x1 in 2D and ``3 x 1 x 1`` in 3D (along the first spatial axis), as in the Keras code.
PReLU slopes are per channel and start at 0 (Keras' default initialiser), batch norm uses Keras' epsilon 1e-3 and
momentum 0.99.

The modalities are the input channels of one path: the paper stacks the co-registered MRI sequences as channels of
each patch (the ISLES 2015 SISS sequences FLAIR, T1, T2 and DWI; seven for SPES and six for ISLES 2017); there is no
per-modality path in SUNet.

Paper configuration: 3D, 24x24x8 patches, the four ISLES 2015 SISS modalities, two classes, 32 base filters. The
paper states no parameter count; the authors' Keras ``generate_uresnet_model(3, 2, (4, 24, 24, 8), ..., 0.2, 32)``
has 7,032,130 trainable parameters (counted from the layer definitions; their PyTorch port has 1,536 more because
its output convolution is 3x3x3), which the registry records; ours has the same number.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormActConv, NormSpec, make_conv, make_pool
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["SUNet"]

KERAS_BN: NormSpec = ("batch", {"eps": 1e-3, "momentum": 0.01})
PRELU0 = ("prelu", {"init": 0.0})


class _DualRes(nn.Module):
    def __init__(self, spatial_dims: int, channels: int, dropout: float, norm: NormSpec) -> None:
        super().__init__()
        self.conv1 = NormActConv(spatial_dims, channels, channels, 3, norm=norm, act=PRELU0, dropout=dropout)
        self.conv2 = NormActConv(spatial_dims, channels, channels, 3, norm=norm, act=PRELU0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + x


class _MonoRes(nn.Module):
    def __init__(self, spatial_dims: int, channels: int, norm: NormSpec) -> None:
        super().__init__()
        self.conv = NormActConv(spatial_dims, channels, channels, 3, norm=norm, act=PRELU0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x


class _Down(nn.Module):
    """Concatenation of a strided pre-activation convolution and a max pooling: doubles the channels."""

    def __init__(self, spatial_dims: int, channels: int, stride: Sequence[int], norm: NormSpec) -> None:
        super().__init__()
        self.conv = NormActConv(spatial_dims, channels, channels, 3, stride=stride, norm=norm, act=PRELU0)
        self.pool = make_pool("max", spatial_dims, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.conv(x), self.pool(x)), dim=1)


@register_model(
    "sunet",
    family="unet",
    spatial_dims=(2, 3),
    paper_title="SUNet: a deep learning architecture for acute stroke lesion segmentation and outcome prediction in "
                "multimodal MRI",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=4,
        out_channels=2,
        kwargs={"base_features": 32},
        params=7_032_130,
        source="authors' code github.com/NIC-VICOROB/SUNet-architecture, architecture/SUNETx4.py "
               "generate_uresnet_model(3, 2, (4, 24, 24, 8), ..., dropout 0.2, 32 filters), trainable parameters "
               "(ISLES 2015 SISS: FLAIR, T1, T2, DWI); the paper (arXiv:1810.13304) states no parameter count",
    ),
    divisor=8,
    test_kwargs={"base_features": 4},
)
class SUNet(SegmentationModel):
    """SUNet of Clèrigues et al. (2018): a residual U-Net with additive skips, 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    product of the strides (8 by default). All modalities enter as channels of one path.

    Args:
        spatial_dims: 3 (paper) or 2.
        in_channels: Input channels (the stacked MRI sequences).
        out_channels: Output channels (classes).
        base_features: Channels of the first level; each down step doubles them (paper: 32).
        strides: Downsampling stride into each level (``strides[0]`` = 1), one int or one per axis; its length is
            the number of levels (default four levels, stride 2).
        dropout: Element-wise dropout inside the dual residual blocks (paper code: 0.2).
        norm: Normalisation (paper code: Keras batch norm, epsilon 1e-3, momentum 0.99).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        base_features: int = 32,
        strides: Sequence[int | Sequence[int]] | None = None,
        dropout: float = 0.2,
        norm: NormSpec = KERAS_BN,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        n_levels = 4 if strides is None else len(strides)
        widths = [base_features * 2**lv for lv in range(n_levels)]
        plan = resolve_stages(self.model_name, spatial_dims, widths, strides, widths, 2)
        self.plan = plan
        self.inconv = make_conv(spatial_dims, in_channels, widths[0], 3)
        self.encoder = nn.ModuleList(_DualRes(spatial_dims, w, dropout, norm) for w in widths)
        self.down = nn.ModuleList(_Down(spatial_dims, widths[lv], plan.strides[lv + 1], norm)
                                  for lv in range(n_levels - 1))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for lv in range(n_levels - 2, -1, -1):
            s = plan.strides[lv + 1]
            self.up.append(Conv[Conv.CONVTRANS, spatial_dims](widths[lv + 1], widths[lv], kernel_size=3, stride=s,
                                                              padding=1, output_padding=tuple(si - 1 for si in s)))
            self.decoder.append(_MonoRes(spatial_dims, widths[lv], norm))
        out_kernel = (1, 1) if spatial_dims == 2 else (3, 1, 1)
        self.head = make_conv(spatial_dims, widths[0], out_channels, out_kernel)
        self.input_divisor = plan.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``; returns logits ``(B, out_channels, *spatial)``."""
        self.check_input(x)
        h = self.inconv(x)
        skips = []
        for lv, block in enumerate(self.encoder):
            if lv > 0:
                h = self.down[lv - 1](h)
            h = block(h)
            skips.append(h)
        h = skips.pop()
        for up, block in zip(self.up, self.decoder, strict=True):
            h = block(skips.pop() + up(h))
        return self.head(h)
