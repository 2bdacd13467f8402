"""DRINet: dense connection blocks, residual inception blocks and unpooling blocks (Chen et al., IEEE TMI 2018).

Paper: L. Chen, P. Bentley, K. Mori, K. Misawa, M. Fujiwara, D. Rueckert, "DRINet for Medical Image Segmentation",
IEEE Transactions on Medical Imaging 37(11), 2453-2462, 2018 (doi:10.1109/TMI.2018.2835303), Section II (Fig. 1-4);
official code: github.com/lc12git/DRINet (TensorFlow, ``DRINet.py``, by the first author).

Layout (the official code):

* a 3x3 convolution to 32 channels;
* encoder: four dense connection blocks (:class:`DenseConnectionBlock`), 2x max pooling after the first three.
  A block with ``C`` input channels and growth rate ``k`` runs three BN-ReLU-3x3 conv layers, each on the
  concatenation of the block input and all previous layers' outputs (``k`` channels each), then BN-ReLU-1x1 conv
  of the ``C + 3k`` concatenated channels to ``C + 3k`` channels;
* BN + ReLU, then the decoder, which has no skip connections from the encoder: three residual inception blocks
  (:class:`ResidualInceptionBlock`) and an unpooling block (:class:`UnpoolingBlock`) per resolution, three times,
  then three residual inception blocks at full resolution and a 1x1 convolution to the classes;
* residual inception block (``C`` channels): three branches of (de)convolution + BN + ReLU, a 1x1 to ``C/4``;
  a 1x1 to ``C/4`` then a 3x3 to ``C/2``; a 1x1 to ``C/4`` then a dilated (rate 2) 3x3 to ``C/4``; their
  concatenation goes through a 1x1 (de)convolution + BN to ``C`` channels and is added to the input;
* unpooling block (``C`` channels): a 1x1 to ``C/2`` then a stride-2 3x3 transposed convolution to ``C/4``; a 1x1 to
  ``C/2``, a dilated 3x3 to ``C/2`` and a stride-2 3x3 transposed convolution to ``C/4``; each layer + BN + ReLU;
  the two branches are concatenated (``C/2`` channels at twice the resolution).

The code writes the decoder's stride-1 layers as transposed convolutions; a stride-1 transposed convolution with
"same" padding is a convolution (with the kernel flipped), so we use convolutions there, with the same parameters.

Which configuration reproduces the paper: 2D (the paper also applies the design in 3D), 32 initial channels,
growth rates as an argument (the code's ``growth_rate``, "a list of 4 entries"). The paper's growth rates and a
parameter count could not be read in the sources we had, so the registry records ``None``; the default
``growth_rates=(16, 16, 16, 16)`` is our choice (it keeps every width a whole multiple of the decoder's halvings:
224 channels at the bottom), for which we count 1,378,311 parameters with 1 input channel and 4 classes, the same
as the official code's layer definitions give (counted in a scratch script; 854,412 for growth rates of 12).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.blocks import DenseBlock, NormActConv, NormSpec, make_act, make_conv, make_norm, make_pool
from medseg.models.registry import PaperConfig, register_model

__all__ = ["DRINet", "DenseConnectionBlock", "ResidualInceptionBlock", "UnpoolingBlock"]

RELU = ("relu", {"inplace": True})


class DenseConnectionBlock(nn.Module):
    """DRINet's convolutional block with dense connections: three densely connected layers and a 1x1 fusion.

    Three pre-activation (BN-ReLU-3x3 conv) layers of a :class:`~medseg.models.blocks.DenseBlock` with growth rate
    ``k``, then BN-ReLU-1x1 conv of the ``C + 3k`` channels to ``C + 3k``.

    Shapes: ``(B, C, *spatial)`` to ``(B, C + 3k, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C.
        growth_rate: k.
        n_layers: Densely connected layers (code: 3).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, growth_rate: int, n_layers: int = 3,
                 norm: NormSpec = "batch") -> None:
        super().__init__()
        self.dense = DenseBlock(spatial_dims, in_channels, growth_rate, n_layers, norm=norm, act=RELU)
        self.out_channels = self.dense.out_channels
        self.fuse = NormActConv(spatial_dims, self.out_channels, self.out_channels, 1, norm=norm, act=RELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, *spatial)`` to ``(B, C + 3k, *spatial)``."""
        return self.fuse(self.dense(x))


def _cna(spatial_dims: int, cin: int, cout: int, kernel: int, norm: NormSpec, dilation: int = 1,
         act: bool = True) -> nn.Module:
    return ConvNormActD(spatial_dims, cin, cout, kernel, dilation=dilation, bias=True, norm=norm,
                        act=RELU if act else None)


class ResidualInceptionBlock(nn.Module):
    """DRINet's residual inception block: three parallel branches, a 1x1 fusion + BN, added to the input.

    Branches (each layer conv + BN + ReLU): 1x1 to ``C/4``; 1x1 to ``C/4`` then 3x3 to ``C/2``; 1x1 to ``C/4`` then
    3x3 with dilation 2 to ``C/4``. Their concatenation goes through 1x1 conv + BN to ``C`` and is added to ``x``.

    Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        spatial_dims: 2 or 3.
        channels: C (a multiple of 4).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, channels: int, norm: NormSpec = "batch") -> None:
        super().__init__()
        q, h = channels // 4, channels // 2
        if q < 1:
            raise ModelError(f"ResidualInceptionBlock needs at least 4 channels, got {channels}")
        self.branch1 = _cna(spatial_dims, channels, q, 1, norm)
        self.branch2 = nn.Sequential(_cna(spatial_dims, channels, q, 1, norm), _cna(spatial_dims, q, h, 3, norm))
        self.branch3 = nn.Sequential(_cna(spatial_dims, channels, q, 1, norm),
                                     _cna(spatial_dims, q, q, 3, norm, dilation=2))
        self.fuse = _cna(spatial_dims, 2 * q + h, channels, 1, norm, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the fused branches to ``x``."""
        return x + self.fuse(torch.cat((self.branch1(x), self.branch2(x), self.branch3(x)), dim=1))


class _UpConvNormAct(nn.Sequential):
    """3x3 transposed convolution with stride 2 and "same" padding (size x2), then norm and ReLU."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, norm: NormSpec) -> None:
        super().__init__()
        self.add_module("conv", Conv[Conv.CONVTRANS, spatial_dims](cin, cout, kernel_size=3, stride=2, padding=1,
                                                                   output_padding=1))
        self.add_module("norm", make_norm(norm, spatial_dims, cout) or nn.Identity())
        self.add_module("act", make_act(RELU) or nn.Identity())


class UnpoolingBlock(nn.Module):
    """DRINet's unpooling block: two branches of learned upsampling, concatenated.

    Branch 1: 1x1 to ``C/2``, stride-2 3x3 transposed convolution to ``C/4``. Branch 2: 1x1 to ``C/2``, 3x3 with
    dilation 2 to ``C/2``, stride-2 3x3 transposed convolution to ``C/4``. Every layer + BN + ReLU.

    Shapes: ``(B, C, *spatial)`` to ``(B, 2 * (C // 4), *spatial * 2)``.

    Args:
        spatial_dims: 2 or 3.
        channels: C (a multiple of 4).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, channels: int, norm: NormSpec = "batch") -> None:
        super().__init__()
        h, q = channels // 2, channels // 4
        if q < 1:
            raise ModelError(f"UnpoolingBlock needs at least 4 channels, got {channels}")
        self.branch1 = nn.Sequential(_cna(spatial_dims, channels, h, 1, norm), _UpConvNormAct(spatial_dims, h, q, norm))
        self.branch2 = nn.Sequential(_cna(spatial_dims, channels, h, 1, norm),
                                     _cna(spatial_dims, h, h, 3, norm, dilation=2),
                                     _UpConvNormAct(spatial_dims, h, q, norm))
        self.out_channels = 2 * q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` by 2 along every axis."""
        return torch.cat((self.branch1(x), self.branch2(x)), dim=1)


@register_model(
    "drinet",
    family="dense",
    spatial_dims=(2, 3),
    paper_title="DRINet for Medical Image Segmentation",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=1,
        out_channels=4,
        kwargs={},
        params=None,
        source="IEEE TMI 37(11) 2018, Section II and the authors' code github.com/lc12git/DRINet (DRINet.py); the "
               "growth rates are an argument there and the paper's values and parameter figure could not be read "
               "(CSF segmentation in brain CT: background + 3 classes)",
    ),
    divisor=8,
    test_kwargs={2: {"initial_features": 8, "growth_rates": (4, 4, 4, 4), "blocks_per_level": 1},
                 3: {"initial_features": 8, "growth_rates": (4, 4, 4), "blocks_per_level": 1}},
)
class DRINet(SegmentationModel):
    """DRINet (Chen et al., IEEE TMI 2018): dense encoder, residual-inception decoder with unpooling blocks.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of 8.

    Args:
        spatial_dims: 2 (paper; its multi-organ experiment also 3D) or 3.
        in_channels: Input channels.
        out_channels: Output channels (classes, background included).
        initial_features: Channels of the first convolution (code: 32).
        growth_rates: Growth rate of each of the four dense connection blocks.
        blocks_per_level: Residual inception blocks per decoder resolution (code: 3).
        norm: Normalisation (paper: batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        initial_features: int = 32,
        growth_rates: Sequence[int] = (16, 16, 16, 16),
        blocks_per_level: int = 3,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        growth = [int(g) for g in growth_rates]
        if len(growth) < 2 or blocks_per_level < 1:
            raise ModelError(f"{self.model_name}: needs at least 2 growth rates and 1 block per level, got "
                             f"{growth} and {blocks_per_level}")
        self.stem = make_conv(spatial_dims, in_channels, initial_features, 3)
        self.pool = make_pool("max", spatial_dims, 2)
        self.encoder = nn.ModuleList()
        channels = initial_features
        for g in growth:
            block = DenseConnectionBlock(spatial_dims, channels, g, norm=norm)
            self.encoder.append(block)
            channels = block.out_channels
        self.bottom_act = nn.Sequential(make_norm(norm, spatial_dims, channels) or nn.Identity(),
                                        make_act(RELU) or nn.Identity())
        self.decoder = nn.ModuleList()
        for level in range(len(growth)):
            blocks: list[nn.Module] = [ResidualInceptionBlock(spatial_dims, channels, norm)
                                       for _ in range(blocks_per_level)]
            if level < len(growth) - 1:
                unpool = UnpoolingBlock(spatial_dims, channels, norm)
                blocks.append(unpool)
                channels = unpool.out_channels
            self.decoder.append(nn.Sequential(*blocks))
        self.head = make_conv(spatial_dims, channels, out_channels, 1)
        self.bottom_channels = self.encoder[-1].out_channels
        self.input_divisor = (2 ** (len(growth) - 1),) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        h = self.stem(x)
        for i, block in enumerate(self.encoder):
            h = block(h if i == 0 else self.pool(h))
        h = self.bottom_act(h)
        for stage in self.decoder:
            h = stage(h)
        return self.head(h)
