"""ERFNet (Romera, Álvarez, Bergasa & Arroyo, 2018), 2D and 3D.

Paper: E. Romera, J. M. Álvarez, L. M. Bergasa, R. Arroyo, "ERFNet: Efficient Residual Factorized ConvNet for
Real-Time Semantic Segmentation", IEEE Transactions on Intelligent Transportation Systems 19(1):263-272, 2018,
Section III, Fig. 2 (non-bottleneck-1D) and Table I (layers); the authors' PyTorch code
(github.com/Eromera/erfnet_pytorch, ``train/erfnet.py``).

Layout (Table I):

* Downsampler block (from ENet's initial block): 3x3 convolution with stride 2 and ``C_out - C_in`` filters next to
  2x2 max pooling, concatenated, BN, ReLU.
* Non-bottleneck-1D (Fig. 2c): the two 3x3 convolutions of ResNet's basic block are each factorised into a 3x1 and a
  1x3 convolution (ReLU between them, BN after the pair); the second pair is dilated; spatial dropout; the sum with
  the input goes through ReLU. In 3D each pair becomes three 1D convolutions (one per axis).
* Encoder: downsampler 3 -> 16, downsampler 16 -> 64, 5 non-bottleneck-1D at 64 (dropout 0.03), downsampler
  64 -> 128, twice the four non-bottleneck-1D at 128 with dilations 2, 4, 8, 16 (dropout 0.3).
* Decoder: upsampler 128 -> 64 (3x3 transposed convolution with stride 2, BN, ReLU), 2 non-bottleneck-1D at 64,
  upsampler 64 -> 16, 2 non-bottleneck-1D at 16, and a 2x2 transposed convolution with stride 2 to the classes.

The input must be a multiple of 8 per axis; ``in_channels`` must be below ``channels[0]``. 3D from MONAI's factories.

Parameter figure: no total could be read from the paper; the authors' code is the reference. Their
``Net(num_classes=20)`` (Cityscapes, 19 classes + void) has 2,066,836 parameters, of which 2,580 belong to the
encoder's 1x1 classifier used only while the encoder is trained alone; we count 2,064,256 for the network itself,
equal to their count without that classifier (0.12 % below the recorded figure).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv, Dropout
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import axis_conv, make_norm
from medseg.models.realtime.enet import BN_EPS3, ConcatDownsampler
from medseg.models.registry import PaperConfig, register_model

__all__ = ["ERFNet", "FactorizedPair", "NonBottleneck1D", "Upsampler"]

_RELU = ("relu", {"inplace": True})


class FactorizedPair(nn.Sequential):
    """A 3x3 convolution factorised into one 1D convolution per axis (3x1 then 1x3), ReLU between them, then BN.

    Shapes: ``(B, C, *spatial)`` to ``(B, C, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        dilation: Dilation of every 1D convolution.
        kernel_size: Kernel length.
        axes: Order of the axes (default: first to last, i.e. 3x1 then 1x3 in 2D).
    """

    def __init__(self, spatial_dims: int, channels: int, dilation: int = 1, kernel_size: int = 3,
                 axes: Sequence[int] | None = None) -> None:
        layers: list[nn.Module] = []
        order = list(range(spatial_dims)) if axes is None else list(axes)
        for i, axis in enumerate(order):
            if i:
                layers.append(nn.ReLU(inplace=True))
            layers.append(axis_conv(spatial_dims, channels, channels, kernel_size, axis, dilation, bias=True))
        layers.append(make_norm(BN_EPS3, spatial_dims, channels))
        super().__init__(*layers)


class NonBottleneck1D(nn.Module):
    """ERFNet's non-bottleneck-1D residual block (Fig. 2c), 2D or 3D.

    ``relu(x + dropout(pair2(relu(pair1(x)))))`` where each pair is a factorised 3x3 convolution
    (:class:`FactorizedPair`) and the second pair is dilated.

    Shapes: ``(B, C, *spatial)`` to ``(B, C, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        dropout: Spatial dropout probability.
        dilation: Dilation of the second pair.
    """

    def __init__(self, spatial_dims: int, channels: int, dropout: float = 0.0, dilation: int = 1) -> None:
        super().__init__()
        self.pair1 = FactorizedPair(spatial_dims, channels)
        self.pair2 = FactorizedPair(spatial_dims, channels, dilation)
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, *spatial)`` to ``(B, C, *spatial)``."""
        out = self.pair2(torch.relu(self.pair1(x)))
        return torch.relu(x + self.dropout(out))


class Upsampler(nn.Sequential):
    """3x3 transposed convolution with stride 2 (exact doubling), BN, ReLU: ERFNet's upsampler block.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial * 2)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__(
            Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels, kernel_size=3, stride=2, padding=1,
                                               output_padding=1, bias=True),
            make_norm(BN_EPS3, spatial_dims, out_channels), nn.ReLU(inplace=True))


@register_model(
    "erfnet",
    family="realtime",
    spatial_dims=(2, 3),
    paper_title="ERFNet: Efficient Residual Factorized ConvNet for Real-Time Semantic Segmentation",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=20, params=2_066_836,
        source="official code github.com/Eromera/erfnet_pytorch train/erfnet.py, Net(num_classes=20) (Cityscapes "
               "19 + void): 2,066,836 including the encoder-only 1x1 classifier (2,580); paper Table I layout",
    ),
    divisor=8,
    test_kwargs={"channels": (8, 16, 32), "encoder_blocks": (2, 1)},
)
class ERFNet(SegmentationModel):
    """ERFNet (Romera et al., T-ITS 2018): downsampler blocks and non-bottleneck-1D layers, small upsampling decoder.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each size a multiple of 8.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (below ``channels[0]``).
        out_channels: Classes.
        channels: Widths after the three downsamplers (paper: 16, 64, 128).
        encoder_blocks: Non-bottleneck-1D blocks at ``channels[1]`` and repetitions of the four dilated blocks at
            ``channels[2]`` (paper: 5, 2).
        dilations: Dilations of the blocks at ``channels[2]`` (paper: 2, 4, 8, 16).
        dropout: Spatial dropout at ``channels[1]`` and at ``channels[2]`` (paper: 0.03, 0.3).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = (16, 64, 128),
        encoder_blocks: Sequence[int] = (5, 2),
        dilations: Sequence[int] = (2, 4, 8, 16),
        dropout: Sequence[float] = (0.03, 0.3),
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        c0, c1, c2 = (int(c) for c in channels)
        if in_channels >= c0:
            raise ModelError(f"{self.model_name}: in_channels ({in_channels}) must be below channels[0] ({c0}) (the "
                             f"first downsampler has channels[0] - in_channels convolution filters)")
        self.input_divisor = (8,) * spatial_dims
        dims = spatial_dims
        n1, n2 = (int(n) for n in encoder_blocks)
        p1, p2 = (float(p) for p in dropout)
        encoder: list[nn.Module] = [ConcatDownsampler(dims, in_channels, c0, act=_RELU),
                                    ConcatDownsampler(dims, c0, c1, act=_RELU)]
        encoder += [NonBottleneck1D(dims, c1, p1, 1) for _ in range(n1)]
        encoder.append(ConcatDownsampler(dims, c1, c2, act=_RELU))
        encoder += [NonBottleneck1D(dims, c2, p2, int(d)) for _ in range(n2) for d in dilations]
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(
            Upsampler(dims, c2, c1), NonBottleneck1D(dims, c1), NonBottleneck1D(dims, c1),
            Upsampler(dims, c1, c0), NonBottleneck1D(dims, c0), NonBottleneck1D(dims, c0),
            Conv[Conv.CONVTRANS, dims](c0, out_channels, kernel_size=2, stride=2, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        return self.decoder(self.encoder(x))
