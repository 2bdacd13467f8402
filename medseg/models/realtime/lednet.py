"""LEDNet (Wang, Zhou, Liu, Xiong, Gao, Wu & Latecki, 2019), 2D and 3D.

Paper: Y. Wang, Q. Zhou, J. Liu, J. Xiong, G. Gao, X. Wu, L. J. Latecki, "LEDNet: A Lightweight Encoder-Decoder
Network for Real-Time Semantic Segmentation", ICIP 2019 (arXiv:1905.02423), Section 2 and Fig. 1 (overall
architecture), with the SS-nbt unit and the APN; the authors' PyTorch code (github.com/xiaoyufenfei/LEDNet,
``train/lednet.py``).

Layout:

* SS-nbt unit (split-shuffle non-bottleneck): the input channels are split in two halves; one half runs a
  factorised 3x3 convolution as 3x1 then 1x3, the other as 1x3 then 3x1 (ReLU between, BN after each pair), each
  twice, the second pair dilated; spatial dropout; the halves are concatenated, added to the input, passed through
  ReLU and channel-shuffled (2 groups). In 3D each half runs one 1D convolution per axis, the two halves in opposite
  axis orders.
* Encoder: downsampler (ERFNet's: strided 3x3 convolution next to max pooling, concatenated, BN, ReLU)
  3 -> 32, 3 SS-nbt at 32 (dropout 0.03), downsampler 32 -> 64, 2 SS-nbt at 64 (0.03), downsampler 64 -> 128, 8 SS-nbt
  at 128 with dilations 1, 2, 5, 9, 2, 5, 9, 17 (0.3).
* Decoder, attention pyramid network (APN, Fig. 1): on the 1/8 features, a pyramid of single-channel convolutions
  7x7/2, 5x5/2, then 3x3/2 and 3x3, whose levels are refined (5x5 and 7x7), upsampled and summed coarse to fine into an
  attention map; it multiplies a 1x1 convolution of the features to ``C`` classes; a global-pooling branch (1x1
  convolution to ``C``) is added; every convolution is followed by BN and ReLU. The result is upsampled (bilinear,
  x8) to the input size.

The input must be a multiple of 8 per axis; ``in_channels`` must be below ``channels[0]``. Upsampling inside the
APN resizes to the size of the finer level, so the pyramid also works when 1/8 of the input is not a multiple of 8.

Parameter figure: the abstract states fewer than 1 M parameters (secondary sources quote 0.94 M from the paper's tables,
which could not be read here), so the authors' code is the reference: ``Net(num_classes=20)`` has 925,663 parameters, of
which 2,580 are the encoder's 1x1 classifier used only while training the encoder alone. We count 923,083 at
``in_channels=3, out_channels=20``: equal to their count without that classifier, 0.28 % below the recorded figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Dropout, Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.blocks import channel_shuffle
from medseg.models.realtime.enet import BN_EPS3, ConcatDownsampler
from medseg.models.realtime.erfnet import FactorizedPair
from medseg.models.registry import PaperConfig, register_model

__all__ = ["APN", "LEDNet", "SSnbt", "resize_aligned"]

_RELU = ("relu", {"inplace": True})


class SSnbt(nn.Module):
    """LEDNet's split-shuffle non-bottleneck unit (Fig. 2), 2D or 3D.

    Shapes: ``(B, C, *spatial)`` to ``(B, C, *spatial)`` (C even).

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        dropout: Spatial dropout of each half.
        dilation: Dilation of the second factorised pair of each half.
    """

    def __init__(self, spatial_dims: int, channels: int, dropout: float = 0.0, dilation: int = 1) -> None:
        super().__init__()
        if channels % 2:
            raise ModelError(f"SS-nbt splits the channels in two halves; got an odd count {channels}")
        half = channels // 2
        forward_axes = list(range(spatial_dims))
        backward_axes = forward_axes[::-1]
        self.left = nn.ModuleList([FactorizedPair(spatial_dims, half, 1, axes=forward_axes),
                                   FactorizedPair(spatial_dims, half, dilation, axes=forward_axes)])
        self.right = nn.ModuleList([FactorizedPair(spatial_dims, half, 1, axes=backward_axes),
                                    FactorizedPair(spatial_dims, half, dilation, axes=backward_axes)])
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout) if dropout > 0 else nn.Identity()

    @staticmethod
    def _branch(pairs: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        return pairs[1](torch.relu(pairs[0](x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Split, transform both halves, concatenate, add the input, ReLU, shuffle."""
        half = x.shape[1] // 2
        left = self.dropout(self._branch(self.left, x[:, :half]))
        right = self.dropout(self._branch(self.right, x[:, half:]))
        out = torch.relu(x + torch.cat([left, right], dim=1))
        return channel_shuffle(out, 2)


class APN(nn.Module):
    """LEDNet's attention pyramid network decoder (Fig. 1), 2D or 3D.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in (128).
        out_channels: C_out (the classes).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()

        def cbr(cin: int, cout: int, k: int, s: int = 1) -> ConvNormActD:
            return ConvNormActD(spatial_dims, cin, cout, k, s, bias=True, norm=BN_EPS3, act=_RELU)

        self.global_branch = nn.Sequential(Pool[Pool.ADAPTIVEAVG, spatial_dims](1), cbr(in_channels, out_channels, 1))
        self.mid = cbr(in_channels, out_channels, 1)
        self.down1 = cbr(in_channels, 1, 7, 2)
        self.down2 = cbr(1, 1, 5, 2)
        self.down3 = nn.Sequential(cbr(1, 1, 3, 2), cbr(1, 1, 3))
        self.conv2 = cbr(1, 1, 5)
        self.conv1 = cbr(1, 1, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention-weighted class features plus the global context."""
        size = x.shape[2:]
        glob = self.global_branch(x)
        mid = self.mid(x)
        x1 = self.down1(x)
        x2 = self.down2(x1)
        x3 = self.down3(x2)
        att = self.conv2(x2) + resize_aligned(x3, x2.shape[2:])
        att = self.conv1(x1) + resize_aligned(att, x1.shape[2:])
        att = resize_aligned(att, size)
        return att * mid + glob.expand_as(mid)


def resize_aligned(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(Bi/tri)linear resizing with ``align_corners=True``, as the authors' code."""
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return nn.functional.interpolate(x, size=tuple(size), mode=mode, align_corners=True)


@register_model(
    "lednet",
    family="realtime",
    spatial_dims=(2, 3),
    paper_title="LEDNet: A Lightweight Encoder-Decoder Network for Real-Time Semantic Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=20, params=925_663,
        source="official code github.com/xiaoyufenfei/LEDNet train/lednet.py, Net(num_classes=20): 925,663 "
               "including the encoder-only 1x1 classifier (2,580); paper Section 2, Fig. 1 (abstract: < 1 M)",
    ),
    divisor=8,
    test_kwargs={"channels": (8, 16, 32), "encoder_blocks": (1, 1), "dilations": (1, 2)},
)
class LEDNet(SegmentationModel):
    """LEDNet (Wang et al., ICIP 2019): SS-nbt encoder and attention pyramid network decoder.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each size a multiple of 8.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (below ``channels[0]``).
        out_channels: Classes.
        channels: Widths of the three encoder stages (paper: 32, 64, 128; even).
        encoder_blocks: SS-nbt units at ``channels[0]`` and ``channels[1]`` (paper: 3, 2).
        dilations: Dilations of the SS-nbt units at ``channels[2]`` (paper: 1, 2, 5, 9, 2, 5, 9, 17).
        dropout: Spatial dropout of the first two stages and of the last one (paper: 0.03, 0.3).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = (32, 64, 128),
        encoder_blocks: Sequence[int] = (3, 2),
        dilations: Sequence[int] = (1, 2, 5, 9, 2, 5, 9, 17),
        dropout: Sequence[float] = (0.03, 0.3),
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        c0, c1, c2 = (int(c) for c in channels)
        if in_channels >= c0:
            raise ModelError(f"{self.model_name}: in_channels ({in_channels}) must be below channels[0] ({c0})")
        self.input_divisor = (8,) * spatial_dims
        dims = spatial_dims
        n0, n1 = (int(n) for n in encoder_blocks)
        p1, p2 = (float(p) for p in dropout)
        layers: list[nn.Module] = [ConcatDownsampler(dims, in_channels, c0, act=_RELU)]
        layers += [SSnbt(dims, c0, p1) for _ in range(n0)]
        layers.append(ConcatDownsampler(dims, c0, c1, act=_RELU))
        layers += [SSnbt(dims, c1, p1) for _ in range(n1)]
        layers.append(ConcatDownsampler(dims, c1, c2, act=_RELU))
        layers += [SSnbt(dims, c2, p2, int(d)) for d in dilations]
        self.encoder = nn.Sequential(*layers)
        self.decoder = APN(dims, c2, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        return resize_aligned(self.decoder(self.encoder(x)), x.shape[2:])
