"""MultiResUNet: a U-Net with MultiRes blocks and residual skip paths (Ibtehaz & Rahman, 2020).

Paper: N. Ibtehaz, M. S. Rahman, "MultiResUNet: Rethinking the U-Net Architecture for Multimodal Biomedical Image
Segmentation", Neural Networks 121:74-87, 2020 (arXiv:1902.04049, 2019), Section 3 (Fig. 3-5); reference code:
github.com/nibtehaz/MultiResUNet (``tensorflow/MultiResUNet.py``).

MultiRes block (Fig. 3c): for a U-Net level with ``U`` filters, ``W = alpha * U`` (``alpha = 1.67``); a chain of
three 3x3 convolutions with ``int(0.167 W)``, ``int(0.333 W)`` and ``int(0.5 W)`` filters (the 3x3, "5x5" and "7x7"
receptive fields), concatenated and batch-normalised, plus a 1x1 convolution shortcut to the same width; the sum
goes through ReLU and batch norm. Each convolution is bias-free and followed by batch norm (+ ReLU, except the
shortcut). Res path (Fig. 4): ``length`` residual units of a 3x3 convolution (+ BN + ReLU) with a 1x1 convolution
(+ BN) shortcut, each sum followed by ReLU and BN; the paths on the four skips have lengths 4, 3, 2, 1 (finest
first). The network (Fig. 5): five levels with ``U`` = 32, 64, 128, 256, 512, 2x2 max pooling, 2x2 transposed
convolutions (with bias) to ``U`` filters, concatenation with the res path, and a final 1x1 convolution + BN.

We write our own implementation: MONAI has no MultiResUNet. Differences from the Keras code: Keras' ``conv2d_bn``
uses ``BatchNormalization(scale=False)`` (no learnable scale); we use the standard affine batch norm (one scale per
channel more), and we return logits (the Keras model ends with a sigmoid; it belongs to the loss).

Paper configuration: 2D, 3 input channels (RGB, as the reference code's demo), 1 output channel, ``alpha = 1.67``,
``features=(32, 64, 128, 256, 512)``. We count 7,244,775 parameters for it (the same layers counted the Keras way,
with non-trainable BN statistics and without BN scales where Keras has none, give 7,262,750). The paper reports a
parameter count for MultiResUNet and for the U-Net it compares with (recalled as about 7.26M and 7.76M); we could
not read it in the sources we searched, so the registry records ``None`` and a model test pins our count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, NormSpec, make_norm, make_pool, make_transposed_conv
from medseg.models.registry import PaperConfig, register_model

__all__ = ["MultiResBlock", "MultiResUNet", "ResPath"]

_RELU = ("relu", {"inplace": True})


def multires_widths(u: int, alpha: float = 1.67) -> tuple[int, int, int]:
    """Widths of the three convolutions of a MultiRes block for ``U = u``: ``int(W/6), int(W/3), int(W/2)``."""
    w = alpha * u
    return int(w * 0.167), int(w * 0.333), int(w * 0.5)


class MultiResBlock(nn.Module):
    """MultiRes block (Ibtehaz & Rahman, Fig. 3c).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, sum(multires_widths(u, alpha)), *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        u: Filters of the corresponding U-Net level.
        alpha: Width factor (paper: 1.67).
        norm: Normalisation (paper: batch norm).
    """

    def __init__(self, spatial_dims: int, in_channels: int, u: int, alpha: float = 1.67,
                 norm: NormSpec = "batch") -> None:
        super().__init__()
        w3, w5, w7 = multires_widths(u, alpha)
        if min(w3, w5, w7) < 1:
            raise ModelError(f"MultiRes block: U={u} with alpha={alpha} gives an empty convolution ({w3}, {w5}, "
                             f"{w7}); use U >= 4")
        self.out_channels = w3 + w5 + w7
        kw = {"bias": False, "norm": norm}
        self.shortcut = ConvNormAct(spatial_dims, in_channels, self.out_channels, 1, act=None, **kw)
        self.conv3 = ConvNormAct(spatial_dims, in_channels, w3, 3, act=_RELU, **kw)
        self.conv5 = ConvNormAct(spatial_dims, w3, w5, 3, act=_RELU, **kw)
        self.conv7 = ConvNormAct(spatial_dims, w5, w7, 3, act=_RELU, **kw)
        self.norm_cat = make_norm(norm, spatial_dims, self.out_channels) or nn.Identity()
        self.act = nn.ReLU(inplace=True)
        self.norm_out = make_norm(norm, spatial_dims, self.out_channels) or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        a = self.conv3(x)
        b = self.conv5(a)
        c = self.conv7(b)
        return self.norm_out(self.act(self.norm_cat(torch.cat((a, b, c), dim=1)) + self.shortcut(x)))


class ResPath(nn.Sequential):
    """Res path (Ibtehaz & Rahman, Fig. 4): ``length`` residual units on a skip connection.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out (the filters ``U`` of the level).
        length: Number of residual units (at least 1).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, length: int,
                 norm: NormSpec = "batch") -> None:
        super().__init__(*[_ResPathUnit(spatial_dims, in_channels if i == 0 else out_channels, out_channels, norm)
                           for i in range(length)])


class _ResPathUnit(nn.Module):
    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: NormSpec) -> None:
        super().__init__()
        self.shortcut = ConvNormAct(spatial_dims, in_channels, out_channels, 1, bias=False, norm=norm, act=None)
        self.conv = ConvNormAct(spatial_dims, in_channels, out_channels, 3, bias=False, norm=norm, act=_RELU)
        self.act = nn.ReLU(inplace=True)
        self.norm = make_norm(norm, spatial_dims, out_channels) or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.conv(x) + self.shortcut(x)))


@register_model(
    "multiresunet",
    family="multires",
    spatial_dims=(2, 3),
    paper_title="MultiResUNet: Rethinking the U-Net Architecture for Multimodal Biomedical Image Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=3,
        out_channels=1,
        kwargs={"features": (32, 64, 128, 256, 512), "alpha": 1.67},
        params=None,
        source="Neural Networks 2020 / arXiv:1902.04049, Section 3 (Fig. 3-5) and the authors' Keras code; the "
               "paper's parameter count was not verified",
    ),
    divisor=16,
    test_kwargs={"features": (4, 8, 8, 16, 16)},
)
class MultiResUNet(SegmentationModel):
    """MultiResUNet of Ibtehaz & Rahman (2019/2020), 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of
    ``2**(len(features) - 1)`` (16 by default).

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Output channels.
        features: Filters ``U`` of the corresponding U-Net levels (paper: 32, 64, 128, 256, 512).
        alpha: Width factor of the MultiRes blocks (paper: 1.67).
        norm: Normalisation (paper: batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        alpha: float = 1.67,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        features = tuple(int(f) for f in features)
        depth = len(features)
        if depth < 2:
            raise ModelError(f"{self.model_name}: features needs at least 2 levels, got {features}")
        if min(multires_widths(min(features), alpha)) < 1:
            raise ModelError(f"{self.model_name}: features {features} with alpha={alpha} give an empty MultiRes "
                             f"convolution; raise the smallest level's filters or alpha")
        self.pool = make_pool("max", spatial_dims, 2)
        self.encoder = nn.ModuleList()
        self.paths = nn.ModuleList()
        channels = in_channels
        for level, u in enumerate(features):
            block = MultiResBlock(spatial_dims, channels, u, alpha, norm)
            self.encoder.append(block)
            channels = block.out_channels
            if level < depth - 1:
                self.paths.append(ResPath(spatial_dims, channels, u, depth - 1 - level, norm))
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(depth - 2, -1, -1):
            u = features[level]
            self.ups.append(make_transposed_conv(spatial_dims, channels, u, 2))
            block = MultiResBlock(spatial_dims, 2 * u, u, alpha, norm)
            self.decoder.append(block)
            channels = block.out_channels
        self.head = ConvNormAct(spatial_dims, channels, out_channels, 1, bias=False, norm=norm, act=None)
        self.input_divisor = (2 ** (depth - 1),) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.pool(x))
            if level < len(self.paths):
                skips.append(self.paths[level](x))
        for up, block in zip(self.ups, self.decoder, strict=True):
            x = block(torch.cat((up(x), skips.pop()), dim=1))
        return self.head(x)
