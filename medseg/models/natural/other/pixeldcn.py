"""Pixel deconvolutional layer (PixelDCL / iPixelDCL) and the U-Net built with it (Gao et al., 2017), 2D and 3D.

Paper: H. Gao, H. Yuan, Z. Wang, S. Ji, "Pixel Deconvolutional Networks" (later "Pixel Transposed Convolutional
Networks", IEEE TPAMI 2019), arXiv:1705.06820, Section 3 (Figs. 2-4); official TensorFlow code
github.com/HongyangGao/PixelDCN (``utils/pixel_dcn.py``, ``utils/ops.py``, ``network.py``, ``main.py``).

The layer. A transposed convolution with stride 2 is equivalent to computing the ``2**d`` sub-grids of its output
("intermediate feature maps") independently from the input, which causes checkerboard artifacts because adjacent
output pixels do not depend on each other. PixelDCL computes the intermediate maps *sequentially*, each from the ones
already generated, and interleaves them (periodic shuffling) into the 2x output: in 2D, the map at offset (0, 0) from
the input, the map at (1, 1) from it, and the maps at (1, 0) and (0, 1) together from both (they are not adjacent to
each other); in 3D the eight offsets go (0,0,0), (1,1,1), the three offsets with two ones, the three with one one
(``pixel_dcl3d``). The input variant iPixelDCL (``mode="ipixel"``) also feeds the input to every step; PixelDCL
(``mode="pixel"``) feeds it only to the first. Each step is a 3x3 convolution (no bias); the interleaved output goes
through BN and ReLU. Maps are combined by concatenation (``combine="concat"``) or, in the 3D code's other option, by
addition (``combine="add"``, which needs ``in_channels == out_channels``). The 2D PixelDCL of the official code
implements its last step with a masked convolution on the partial 2x map; here every variant uses the sequential form
above, which is the paper's definition.

The network (``network.py``; the paper's segmentation experiments replace the transposed convolutions of a U-Net):
``depth - 1`` encoder levels of two 3x3 convolutions (``base_features * 2**l`` channels, BN, ReLU) and 2x2 max pooling;
a bottom of two convolutions (``2C`` then back to ``C``); per decoder level, a 2x upsampling layer keeping the channels
(iPixelDCL by default, or PixelDCL, or a 3x3 transposed convolution with ``upsample="deconv"``), concatenation with the
encoder skip, a 3x3 convolution to ``C`` and a 3x3 convolution to ``C/2`` (the classes at the last level, with BN and
no ReLU, as the code).

Parameter figure: none in the paper. The official code at its ``main.py`` defaults (3D, 1 input channel, 2 classes,
``start_channel_num`` 16, ``network_depth`` 5, ``deconv_name`` ``ipixel_dcl``, ``action`` ``concat``) has 21,740,994
parameters (counted from its variable shapes; TensorFlow's ``batch_norm`` there has no scale). We count 21,742,452: the
1,458 extra are the BN scales of our BN layers (0.007%).

Dims: 2D and 3D.
"""

from __future__ import annotations

import itertools

import torch
from monai.networks.layers import Conv
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, make_act, make_conv, make_norm, make_pool
from medseg.models.registry import PaperConfig, register_model

__all__ = ["PixelDCL", "PixelDCN", "pixel_dcl_groups"]

_RELU = ("relu", {"inplace": True})


def pixel_dcl_groups(spatial_dims: int) -> list[list[tuple[int, ...]]]:
    """Offsets (in the 2x output grid) of the intermediate maps generated at each sequential step.

    2D: ``[[(0, 0)], [(1, 1)], [(0, 1), (1, 0)]]``; 3D: ``(0,0,0)``, ``(1,1,1)``, the three offsets with two ones, the
    three with one one (the order of the official ``pixel_dcl3d``).
    """
    offsets = list(itertools.product((0, 1), repeat=spatial_dims))
    groups = [[(0,) * spatial_dims], [(1,) * spatial_dims]]
    for ones in range(spatial_dims - 1, 0, -1):
        groups.append([o for o in offsets if sum(o) == ones])
    return groups


class PixelDCL(nn.Module):
    """Pixel deconvolutional layer: 2x upsampling whose ``2**d`` interleaved maps are generated sequentially.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *(2 * spatial))`` (before any normalisation).

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: Kernel of each step's convolution (3).
        mode: ``"ipixel"`` (input fed to every step, iPixelDCL) or ``"pixel"`` (PixelDCL).
        combine: ``"concat"`` or ``"add"`` for joining the inputs of a step.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 mode: str = "ipixel", combine: str = "concat") -> None:
        super().__init__()
        if mode not in ("ipixel", "pixel"):
            raise ModelError(f"PixelDCL: mode must be 'ipixel' or 'pixel', got {mode!r}")
        if combine not in ("concat", "add"):
            raise ModelError(f"PixelDCL: combine must be 'concat' or 'add', got {combine!r}")
        if combine == "add" and mode == "ipixel" and in_channels != out_channels:
            raise ModelError("PixelDCL: combine='add' with mode='ipixel' needs in_channels == out_channels")
        self.spatial_dims = spatial_dims
        self.mode = mode
        self.combine = combine
        self.out_ch = out_channels
        self.groups = pixel_dcl_groups(spatial_dims)
        self.convs = nn.ModuleList()
        made = 0
        for g, group in enumerate(self.groups):
            uses_input = g == 0 or mode == "ipixel"
            if combine == "concat":
                cin = (in_channels if uses_input else 0) + made * out_channels
            else:
                cin = in_channels if g == 0 else out_channels
            self.convs.append(make_conv(spatial_dims, cin, len(group) * out_channels, kernel_size, bias=False))
            made += len(group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` by 2 along every spatial axis."""
        maps: list[torch.Tensor] = []
        by_offset: dict[tuple[int, ...], torch.Tensor] = {}
        for g, (group, conv) in enumerate(zip(self.groups, self.convs, strict=True)):
            parts = ([x] if g == 0 or self.mode == "ipixel" else []) + maps
            inp = torch.cat(parts, dim=1) if self.combine == "concat" else torch.stack(parts).sum(0)
            out = conv(inp)
            for offset, m in zip(group, out.split(self.out_ch, dim=1), strict=True):
                maps.append(m)
                by_offset[offset] = m
        return interleave(by_offset, self.spatial_dims)


def interleave(by_offset: dict[tuple[int, ...], torch.Tensor], spatial_dims: int) -> torch.Tensor:
    """Periodic shuffling: place the map of each offset ``o`` at ``out[..., 2i + o]`` (one map per offset)."""
    offsets = list(itertools.product((0, 1), repeat=spatial_dims))
    stacked = torch.stack([by_offset[o] for o in offsets], dim=2)  # (B, C, 2**d, *spatial)
    b, c = stacked.shape[:2]
    spatial = stacked.shape[3:]
    stacked = stacked.reshape(b, c, *([2] * spatial_dims), *spatial)
    # (B, C, o_1..o_d, s_1..s_d) -> (B, C, s_1, o_1, ..., s_d, o_d)
    order = [0, 1] + [p for i in range(spatial_dims) for p in (2 + spatial_dims + i, 2 + i)]
    return stacked.permute(*order).reshape(b, c, *(2 * s for s in spatial))


class _UpLayer(nn.Sequential):
    """The decoder's 2x upsampling (PixelDCL, iPixelDCL or a 3x3 transposed convolution), BN and ReLU."""

    def __init__(self, spatial_dims: int, channels: int, upsample: str, combine: str) -> None:
        super().__init__()
        if upsample == "deconv":
            self.add_module("up", Conv[Conv.CONVTRANS, spatial_dims](channels, channels, kernel_size=3, stride=2,
                                                                       padding=1, output_padding=1, bias=False))
        else:
            self.add_module("up", PixelDCL(spatial_dims, channels, channels, mode=upsample, combine=combine))
        self.add_module("norm", make_norm("batch", spatial_dims, channels))
        self.add_module("act", make_act(_RELU))


@register_model(
    "pixeldcn",
    family="natural",
    spatial_dims=(2, 3),
    paper_title="Pixel Deconvolutional Networks",
    paper_year=2017,
    paper=PaperConfig(
        spatial_dims=3, in_channels=1, out_channels=2, params=21_740_994,
        source="no figure in the paper; official code github.com/HongyangGao/PixelDCN main.py defaults (3D, "
               "channel 1, class_num 2, start_channel_num 16, network_depth 5, deconv ipixel_dcl, action concat), "
               "network.py and utils/pixel_dcn.py, counted from the variable shapes",
    ),
    divisor=16,
    test_kwargs={"base_features": 4},
)
class PixelDCN(SegmentationModel):
    """U-Net with pixel deconvolutional upsampling (Gao et al., arXiv:1705.06820), 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each spatial size a multiple of
    ``2**(depth - 1)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (official configuration: 1).
        out_channels: Classes (official configuration: 2).
        base_features: Channels of the first level (official: 16).
        depth: Number of levels including the bottom (official: 5).
        upsample: ``"ipixel"`` (iPixelDCL, official default), ``"pixel"`` (PixelDCL) or ``"deconv"``.
        combine: How a PixelDCL step joins its inputs: ``"concat"`` (default) or ``"add"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        base_features: int = 16,
        depth: int = 5,
        upsample: str = "ipixel",
        combine: str = "concat",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if upsample not in ("ipixel", "pixel", "deconv"):
            raise ModelError(f"{self.model_name}: upsample must be 'ipixel', 'pixel' or 'deconv', got {upsample!r}")
        if depth < 2:
            raise ModelError(f"{self.model_name}: depth must be at least 2, got {depth}")
        kw = {"bias": False, "norm": "batch", "act": _RELU}
        self.down = nn.ModuleList()
        skips = []
        c = in_channels
        for level in range(depth - 1):
            out = base_features * 2**level
            self.down.append(nn.Sequential(ConvNormAct(spatial_dims, c, out, 3, **kw),
                                           ConvNormAct(spatial_dims, out, out, 3, **kw)))
            skips.append(out)
            c = out
        self.pool = make_pool("max", spatial_dims, 2)
        self.bottom = nn.Sequential(ConvNormAct(spatial_dims, c, 2 * c, 3, **kw),
                                    ConvNormAct(spatial_dims, 2 * c, c, 3, **kw))
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for level in range(depth - 2, -1, -1):
            last = level == 0
            out = out_channels if last else c // 2
            self.ups.append(_UpLayer(spatial_dims, c, upsample, combine))
            self.up_convs.append(nn.Sequential(
                ConvNormAct(spatial_dims, c + skips[level], c, 3, **kw),
                ConvNormAct(spatial_dims, c, out, 3, bias=False, norm="batch", act=None if last else _RELU),
            ))
            c = out
        self.input_divisor = (2 ** (depth - 1),) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, conv, skip in zip(self.ups, self.up_convs, reversed(skips), strict=True):
            x = conv(torch.cat([up(x), skip], dim=1))
        return x
