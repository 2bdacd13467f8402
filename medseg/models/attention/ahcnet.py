"""AHCNet: a U-Net with attention (channel recalibration) on hybrid long and short skip connections, 2D and 3D.

Paper: H. Jiang, T. Shi, Z. Bai, L. Huang, "AHCNet: An Application of Attention Mechanism and Hybrid Connection for
Liver Tumor Segmentation in CT Volumes", IEEE Access 7, 24898-24909, 2019 (doi:10.1109/ACCESS.2019.2899608).

What the paper describes (its abstract): a 3D encoder-decoder network for liver tumours in CT that embeds "soft and
hard attention mechanisms" and "long and short skip connections" (the hybrid connection). The hard attention is the
liver region obtained first (the tumour network only sees the liver region: a cascade step of the pipeline, not a
layer); the soft attention recalibrates features channel-wise; the short skips are residual connections inside
each block and the long skips carry encoder features to the decoder.

Layout (our reading, built from that description; no official code was published and the full text could not be
read here, so the widths and block counts are ours):

* encoder stage: a residual block (two 3x3 conv + batch norm, ReLU after the first and after the sum; identity
  shortcut, or 1x1 conv + BN when the width changes: the short skip connection), then squeeze-and-excitation channel
  attention (the soft attention, MONAI's ``ChannelSELayer``, reduction 2);
* 2x max pooling between stages; widths 32, 64, 128, 256, 512 (five resolution levels);
* long skip connections: the attention-recalibrated encoder features are concatenated with the upsampled decoder
  features (2x transposed convolution);
* decoder stage: a residual block on the concatenation, then the same channel attention; a 1x1 convolution to the
  classes.

The registry records no parameter figure (``None``); at the liver-tumour setting (3D, 1 channel, 2 classes) we count
23,367,874 parameters. Planned topology: ``features_per_stage`` and ``strides`` (nnU-Net plans) set the stages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ChannelSELayer
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, NormSpec, make_conv, make_pool, make_transposed_conv
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["AHCNet", "AttentionResidualBlock"]

RELU = ("relu", {"inplace": True})


class AttentionResidualBlock(nn.Module):
    """Residual block (short skip) followed by squeeze-and-excitation channel attention (soft attention).

    ``y = SE(relu(BN(conv(relu(BN(conv(x))))) + shortcut(x)))``; the shortcut is the identity, or a 1x1 conv + BN
    when the width changes.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        reduction: Squeeze-and-excitation reduction ratio.
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, reduction: int = 2,
                 norm: NormSpec = "batch") -> None:
        super().__init__()
        self.conv1 = ConvNormAct(spatial_dims, in_channels, out_channels, 3, bias=False, norm=norm, act=RELU)
        self.conv2 = ConvNormAct(spatial_dims, out_channels, out_channels, 3, bias=False, norm=norm, act=None)
        self.shortcut = (nn.Identity() if in_channels == out_channels else
                         ConvNormAct(spatial_dims, in_channels, out_channels, 1, bias=False, norm=norm, act=None))
        self.attention = ChannelSELayer(spatial_dims, out_channels, r=reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual transform, then channel recalibration."""
        return self.attention(torch.relu(self.conv2(self.conv1(x)) + self.shortcut(x)))


@register_model(
    "ahcnet",
    family="attention",
    spatial_dims=(2, 3),
    paper_title="AHCNet: An Application of Attention Mechanism and Hybrid Connection for Liver Tumor Segmentation "
                "in CT Volumes",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        kwargs={},
        params=None,
        source="IEEE Access 7 (2019), abstract (soft attention, long and short skip connections); no official code "
               "and no parameter figure read; widths are ours",
    ),
    divisor=16,
    test_kwargs={2: {"features_per_stage": (4, 8, 16, 16)}, 3: {"features_per_stage": (4, 8, 8)}},
)
class AHCNet(SegmentationModel):
    """AHCNet (Jiang et al., IEEE Access 2019): attention-recalibrated residual U-Net with hybrid skip connections.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    total stride (16 by default, :attr:`input_divisor`).

    Args:
        spatial_dims: 3 (paper) or 2.
        in_channels: Input channels.
        out_channels: Output channels (classes).
        features_per_stage: Channels per stage (default 32, 64, 128, 256, 512).
        strides: Downsampling into each stage (plans format); default 2 per axis after the first stage.
        reduction: Squeeze-and-excitation reduction ratio of the channel attention (2).
        norm: Normalisation (batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features_per_stage: Sequence[int] = (32, 64, 128, 256, 512),
        strides: Sequence[int | Sequence[int]] | None = None,
        reduction: int = 2,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        topo = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides, (32, 64, 128, 256, 512))
        f, n = topo.features, topo.n_stages
        self.topology = topo
        self.pools = nn.ModuleList(make_pool("max", spatial_dims, s) for s in topo.strides[1:])
        self.encoder = nn.ModuleList(
            AttentionResidualBlock(spatial_dims, in_channels if i == 0 else f[i - 1], f[i], reduction, norm)
            for i in range(n)
        )
        self.ups = nn.ModuleList(make_transposed_conv(spatial_dims, f[i + 1], f[i], topo.strides[i + 1])
                                 for i in range(n - 2, -1, -1))
        self.decoder = nn.ModuleList(AttentionResidualBlock(spatial_dims, 2 * f[i], f[i], reduction, norm)
                                     for i in range(n - 2, -1, -1))
        self.head = make_conv(spatial_dims, f[0], out_channels, 1)
        self.input_divisor = topo.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        skips = []
        h = x
        for i, block in enumerate(self.encoder):
            h = block(h if i == 0 else self.pools[i - 1](h))
            skips.append(h)
        h = skips.pop()
        for up, block in zip(self.ups, self.decoder, strict=True):
            h = block(torch.cat((skips.pop(), up(h)), dim=1))
        return self.head(h)
