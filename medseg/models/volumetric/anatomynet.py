"""AnatomyNet: whole-volume segmentation of head-and-neck anatomy (Zhu et al., Medical Physics 2019), 3D and 2D.

Paper: W. Zhu, Y. Huang, L. Zeng, X. Chen, Y. Liu, Z. Qian, N. Du, W. Fan, X. Xie, "AnatomyNet: Deep learning for
fast and fully automated whole-volume segmentation of head and neck anatomy", Medical Physics 46(2), 576-589 (2019),
arXiv:1808.05238, Section 2 and Figure 2. Official code: wentaozhu/AnatomyNet-for-anatomical-segmentation,
``src/AnatomyNet.py`` (``ResNetUNET3D(SEBasicBlock3D, UpSEBasicBlock3D, UpBasicBlock3D, 2, num_classes=10)``).

Layout (3x3x3 bias-free convolutions with batch norm and LeakyReLU unless stated):

* One down-sampling only: a stride-2 3x3x3 convolution to 28 channels, so that small organs keep their resolution
  and the whole volume fits in memory (no cropping into patches).
* Encoder: three stages of two squeeze-and-excitation (SE) residual blocks with 30, 32 and 34 channels. An SE
  residual block is conv-BN-LReLU, conv-BN, channel SE (global average pooling, FC to ``C // 15``, LReLU, FC, sigmoid,
  channel-wise rescaling), plus the identity or a 1x1x1 conv + BN projection when the channels change, then LReLU.
* Decoder (same resolution): three "up" SE residual blocks that concatenate the previous output with the encoder
  feature of the stage before (34+32 -> 32, 32+30 -> 30, 30+28 -> 28; SE reduction 16, 1x1x1 projection), each
  followed by one SE residual block.
* Back to full resolution: a 2x2x2 transposed convolution (bias) halves the channels (28 -> 14), is concatenated
  with the input image, and a residual block without SE (its projection is a 3x3x3 conv + BN) gives 14 channels; a
  3x3x3 convolution with bias gives the logits (the code applies softmax; medseg returns logits).

The paper's loss (a hybrid of Dice and focal loss) belongs to the trainer. Channel SE layers are MONAI's
``ChannelSELayer`` with LeakyReLU, the same FC-act-FC-sigmoid layout; where a small test variant has fewer channels
than the reduction ratio, the ratio is capped at the channel count (one hidden unit).

Paper configuration: 3D, one CT channel, 10 outputs (nine organs at risk and background). Parameter figure: 734,417,
counted with the official ``AnatomyNet.py`` at that configuration; ours is the same. The input size must be even
(one down-sampling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ChannelSELayer
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, make_act, make_conv, make_transposed_conv
from medseg.models.registry import PaperConfig, register_model

__all__ = ["AnatomyNet", "SEResidualBlock"]

LRELU = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


class SEResidualBlock(nn.Module):
    """Residual block conv-BN-LReLU, conv-BN, optional channel SE, plus a projection shortcut, then LReLU.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        reduction: SE reduction ratio (15 in AnatomyNet's encoder blocks, 16 in its up blocks), or ``None`` for no SE.
        projection_kernel: Kernel of the shortcut's projection when ``C_in != C_out`` (1, or 3 in the last up block).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, reduction: int | None = 15,
                 projection_kernel: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(spatial_dims, in_channels, out_channels, 3, bias=False, norm="batch", act=LRELU)
        self.conv2 = ConvNormAct(spatial_dims, out_channels, out_channels, 3, bias=False, norm="batch", act=None)
        self.se = (ChannelSELayer(spatial_dims, out_channels, r=min(reduction, out_channels), acti_type_1=LRELU)
                   if reduction else nn.Identity())
        self.shortcut = (nn.Identity() if in_channels == out_channels else
                         ConvNormAct(spatial_dims, in_channels, out_channels, projection_kernel, bias=False,
                                     norm="batch", act=None))
        self.act = make_act(LRELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``."""
        return self.act(self.se(self.conv2(self.conv1(x))) + self.shortcut(x))


@register_model(
    "anatomynet",
    family="volumetric",
    spatial_dims=(2, 3),
    paper_title="AnatomyNet: Deep learning for fast and fully automated whole-volume segmentation of head and neck "
                "anatomy",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=10,
        kwargs={},
        params=734_417,
        source="official code wentaozhu/AnatomyNet-for-anatomical-segmentation, src/AnatomyNet.py, "
               "ResNetUNET3D(SEBasicBlock3D, UpSEBasicBlock3D, UpBasicBlock3D, 2, num_classes=9+1, in_channel=1), "
               "counted with that code",
    ),
    divisor=2,
    test_kwargs={"stem_channels": 4, "encoder_channels": (4, 6, 6), "blocks_per_stage": 1},
)
class AnatomyNet(SegmentationModel):
    """AnatomyNet (Zhu et al., Medical Physics 2019): SE residual U-Net with a single down-sampling, whole volumes.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size must be even.

    Args:
        spatial_dims: 3 (paper) or 2.
        in_channels: Input channels (paper: 1, CT).
        out_channels: Output channels (paper: 10, nine organs and background).
        stem_channels: Channels of the stride-2 stem convolution (paper: 28); the full-resolution block has half.
        encoder_channels: Channels of the three encoder stages (paper: 30, 32, 34).
        blocks_per_stage: SE residual blocks per encoder stage (paper: 2); the decoder has one fewer after each up
            block.
        se_reduction: SE reduction ratio of the encoder blocks (paper code: 15).
        up_se_reduction: SE reduction ratio of the decoder's up blocks (paper code: 16).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        stem_channels: int = 28,
        encoder_channels: Sequence[int] = (30, 32, 34),
        blocks_per_stage: int = 2,
        se_reduction: int = 15,
        up_se_reduction: int = 16,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        enc = [int(c) for c in encoder_channels]
        if len(enc) != 3 or min(enc) < 1 or stem_channels < 2 or blocks_per_stage < 1:
            raise ModelError(f"{self.model_name}: needs three encoder widths, stem_channels >= 2 and "
                             f"blocks_per_stage >= 1, got {enc}, {stem_channels}, {blocks_per_stage}")
        self.stem = ConvNormAct(spatial_dims, in_channels, stem_channels, 3, stride=2, bias=False, norm="batch",
                                act=LRELU)

        def stage(cin: int, cout: int, n: int) -> nn.Sequential:
            return nn.Sequential(*[SEResidualBlock(spatial_dims, cin if i == 0 else cout, cout, se_reduction)
                                   for i in range(n)])

        widths = [stem_channels, *enc]  # features after the stem and after each encoder stage
        self.encoder = nn.ModuleList(stage(widths[i], widths[i + 1], blocks_per_stage) for i in range(3))
        self.up_blocks = nn.ModuleList()
        self.post_blocks = nn.ModuleList()
        channels = widths[3]
        for skip in (widths[2], widths[1], widths[0]):
            self.up_blocks.append(SEResidualBlock(spatial_dims, channels + skip, skip, up_se_reduction))
            self.post_blocks.append(stage(skip, skip, blocks_per_stage - 1))
            channels = skip
        half = stem_channels // 2
        self.upsample = make_transposed_conv(spatial_dims, channels, half, 2)
        self.full_res = SEResidualBlock(spatial_dims, half + in_channels, half, None, projection_kernel=3)
        self.head = make_conv(spatial_dims, half, out_channels, 3)
        self.input_divisor = (2,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``; returns logits of the same spatial size."""
        self.check_input(x)
        skips = [self.stem(x)]
        for stage in self.encoder:
            skips.append(stage(skips[-1]))
        y = skips[-1]
        for i, (up, post) in enumerate(zip(self.up_blocks, self.post_blocks, strict=True)):
            y = post(up(torch.cat([y, skips[-2 - i]], dim=1)))
        y = self.full_res(torch.cat([self.upsample(y), x], dim=1))
        return self.head(y)
