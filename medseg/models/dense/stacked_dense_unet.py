"""Stacked dense U-Nets (SDU-Net) with deformable convolutions, as a heatmap / segmentation network (Guo et al.).

Paper: J. Guo, J. Deng, N. Xue, S. Zafeiriou, "Stacked Dense U-Nets with Dual Transformers for Robust Face
Alignment", BMVC 2018 (arXiv:1812.01936), Section 3 (Fig. 2-4); authors' code: github.com/deepinsight/insightface
(MXNet, ``alignment/heatmap/symbol/sym_heatmap.py``, network ``sdu`` of ``sample_config.py``: ``net_sta=1``,
``net_n=3``, ``net_dcn=3``, ``net_stacks=2``, ``net_block='cab'``, 128x128 input, 64x64 heatmaps, 68 landmarks).

Layout (the ``sdu`` network):

* stem: 3x3 conv (64, no bias) + BN + ReLU at full resolution (the code's 7x7 stride-2 stem when the heatmaps are a
  quarter of the input, ``stem_stride=2``); an HPM block to 128 channels, 2x max pooling, a channel aggregation
  block, an HPM block to 256 channels;
* HPM block (the code's ``conv_hpm``): pre-activation BN-ReLU-3x3 convolutions to ``C/2``, ``C/4``, ``C/4``
  channels in a cascade, concatenated, plus the input (or a bias-free 1x1 convolution of the pre-activated input
  when the width changes);
* channel aggregation block (CAB, Fig. 4; :class:`ChannelAggregationBlock`): a cascade of 3x3 conv-BN-ReLU halving
  the channels three times (``C/2, C/4, C/8``), then merges back up: at each step the finer map (through a 3x3
  depthwise conv-BN-ReLU on odd rows) is averaged with the coarser one duplicated along the channels, giving ``C``
  channels again (the code's recursive ``CAB.get_output``);
* scale aggregation topology (SAT, Fig. 3; :class:`ScaleAggregationTopology`): a dense U-Net over four resolutions
  whose every node is a CAB: the encoder row is CAB, 2x max pooling, CAB per level; each inner node averages a finer
  node (through a 3x3 depthwise conv-BN-ReLU on odd rows) with the coarser node upsampled - by a 2x2 transposed
  convolution + BN + ReLU, or in the first column by nearest upsampling and a CAB (the code's ``STA.get_output``);
* two stacks: SAT, CAB, a 3x3 deformable conv + BN + ReLU (256), a 3x3 deformable convolution to the heatmaps; between
  stacks the input of the stack, a 1x1 convolution of the features and a 1x1 convolution of the heatmaps are summed
  and go through a 3x3 deformable convolution (256). Deformable convolutions (:class:`~medseg.models.deformable.
  DeformConv`) learn their offsets with a 3x3 convolution (18 channels in 2D). MXNet batch norm: epsilon 2e-5,
  momentum 0.9.

"Dual transformers": the deformable convolutions inside the network and, outside, a spatial transformation of the
training data with a coherence loss between the predictions of an image and of its transformed (flipped) copy; the
latter is a training-time loss, not part of the network, and is not included here.

As a segmentation network: the heatmaps (half the input resolution with the default stem, one channel per class)
are upsampled bilinearly to the input size and returned as logits. With ``deep_supervision=True`` training mode also
returns every earlier stack's heatmaps at their own resolution (the paper supervises each stack, equal weights).
In 3D every operation has its 3D counterpart (3D deformable convolutions with 81 offset channels).

Paper configuration: 2D, three (RGB) input channels, 68 heatmaps. The paper states no parameter count; the authors'
``sdu`` network has 12,219,874 parameters (counted from ``get_symbol(68)``'s layer definitions, MXNet batch norm with
two learnable parameters per channel), which the registry records; ours has the same number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormActConv, NormSpec, make_act, make_conv, make_norm, make_pool
from medseg.models.deformable import DeformConv, DeformConvNormAct
from medseg.models.registry import PaperConfig, register_model

__all__ = ["ChannelAggregationBlock", "HPMBlock", "ScaleAggregationTopology", "StackedDenseUNet"]

MXNET_BN: NormSpec = ("batch", {"eps": 2e-5, "momentum": 0.1})
RELU = ("relu", {"inplace": True})
Node = tuple[int, int]


def _lin3(spatial_dims: int, in_channels: int, out_channels: int, groups: int = 1, dilation: int = 1,
          norm: NormSpec = MXNET_BN) -> nn.Module:
    """3x3 conv (no bias) + norm + ReLU: the code's ``lin3``."""
    return ConvNormActD(spatial_dims, in_channels, out_channels, 3, 1, dilation, groups, bias=False, norm=norm,
                        act=RELU)


class HPMBlock(nn.Module):
    """Hierarchical, parallel and multi-scale block (the code's ``conv_hpm``): three cascaded 3x3 convolutions.

    Pre-activation BN-ReLU-conv to ``C/2``, ``C/4`` and ``C/4`` channels, each from the previous one, concatenated
    (``C``), plus the input, or a bias-free 1x1 convolution of the pre-activated input when ``C_in != C``.
    Shapes: ``(B, C_in, *spatial)`` to ``(B, C, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C (a multiple of 4).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: NormSpec = MXNET_BN) -> None:
        super().__init__()
        half, quarter = out_channels // 2, out_channels // 4
        self.pre = nn.Sequential(make_norm(norm, spatial_dims, in_channels) or nn.Identity(), make_act(RELU))
        self.conv1 = make_conv(spatial_dims, in_channels, half, 3, bias=False)
        self.conv2 = NormActConv(spatial_dims, half, quarter, 3, bias=False, norm=norm, act=RELU)
        self.conv3 = NormActConv(spatial_dims, quarter, quarter, 3, bias=False, norm=norm, act=RELU)
        self.shortcut = (make_conv(spatial_dims, in_channels, out_channels, 1, bias=False)
                         if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C, *spatial)``."""
        act = self.pre(x)
        c1 = self.conv1(act)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        shortcut = x if self.shortcut is None else self.shortcut(act)
        return torch.cat((c1, c2, c3), dim=1) + shortcut


def _evaluate(node_fn: Callable[[Node, Callable[[Node], torch.Tensor]], torch.Tensor], start: Node) -> torch.Tensor:
    """Evaluate a grid of nodes by the authors' memoised recursion: each node is computed once."""
    cache: dict[Node, torch.Tensor] = {}

    def get(node: Node) -> torch.Tensor:
        if node not in cache:
            cache[node] = node_fn(node, get)
        return cache[node]

    return get(start)


class _Grid(nn.Module):
    """A grid of nodes ``(w, h)``, ``1 <= w <= h <= levels``, whose layers live in :attr:`nodes`."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels
        self.nodes = nn.ModuleDict()

    @staticmethod
    def _key(node: Node, role: str) -> str:
        return f"w{node[0]}_h{node[1]}_{role}"


class ChannelAggregationBlock(_Grid):
    """Channel aggregation block (CAB) of SDU-Net: ``(B, C, *spatial)`` to the same (``C`` a multiple of 8).

    Node ``(w, n)`` of the top row halves the channels of ``(w + 1, n)`` with a 3x3 conv-BN-ReLU (dilated by
    ``dilation`` next to the input); an inner node ``(w, h)`` averages ``(w + 1, h + 1)`` (through a 3x3 depthwise
    conv-BN-ReLU when ``h`` is odd and ``h != w``) with ``(w, h + 1)`` duplicated along the channels.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        levels: Grid size ``n`` (the code: 4).
        dilation: Dilation of the first convolution.
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, channels: int, levels: int = 4, dilation: int = 1,
                 norm: NormSpec = MXNET_BN) -> None:
        super().__init__(levels)
        if channels % 2 ** (levels - 1):
            raise ModelError(f"channel aggregation block: {channels} channels cannot be halved {levels - 1} times")
        n = levels
        width = {(n, n): channels}
        for w in range(n - 1, 0, -1):
            width[(w, n)] = width[(w + 1, n)] // 2
            self.nodes[self._key((w, n), "conv")] = _lin3(spatial_dims, width[(w + 1, n)], width[(w, n)], 1,
                                                          dilation if w == n - 1 else 1, norm)
        for h in range(n - 1, 0, -1):
            for w in range(h, 0, -1):
                width[(w, h)] = width[(w + 1, h + 1)]
                if h % 2 == 1 and h != w:
                    c = width[(w + 1, h + 1)]
                    self.nodes[self._key((w, h), "x")] = _lin3(spatial_dims, c, c, c, 1, norm)

    def _node(self, x: torch.Tensor, node: Node, get: Callable[[Node], torch.Tensor]) -> torch.Tensor:
        w, h = node
        n = self.levels
        if h == n:
            return x if w == n else self.nodes[self._key(node, "conv")](get((w + 1, n)))
        xb = get((w + 1, h + 1))
        key = self._key(node, "x")
        if key in self.nodes:
            xb = self.nodes[key](xb)
        y = get((w, h + 1))
        return (xb + torch.cat((y, y), dim=1)) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, *spatial)`` to the same (node ``(1, 1)`` of the grid whose corner is ``x``)."""
        return _evaluate(lambda node, get: self._node(x, node, get), (1, 1))


class ScaleAggregationTopology(_Grid):
    """Scale aggregation topology (SAT) of SDU-Net: a dense U-Net of CABs, ``(B, C, *spatial)`` to the same.

    Node ``(n, n)`` is the input; the top row ``(w, n)`` is CAB, max pooling, CAB of ``(w + 1, n)`` (one level
    coarser each); an inner node ``(w, h)`` (level ``h - w``) averages ``(w + 1, h + 1)`` (through a 3x3 depthwise
    conv-BN-ReLU when ``h`` is odd and ``h != w``) with ``(w, h + 1)`` brought up one level: a 2x2 transposed
    convolution + BN + ReLU, or for ``w = 1`` nearest upsampling and a CAB. Each spatial size must be a multiple of
    ``2**(levels - 1)``.

    Args:
        spatial_dims: 2 or 3.
        channels: C (a multiple of 8).
        levels: Grid size ``n`` (the code: ``net_n + 1 = 4``).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, channels: int, levels: int = 4, norm: NormSpec = MXNET_BN) -> None:
        super().__init__(levels)
        n = levels

        def cab() -> ChannelAggregationBlock:
            return ChannelAggregationBlock(spatial_dims, channels, 4, 1, norm)

        self.pool = make_pool("max", spatial_dims, 2)
        for w in range(n - 1, 0, -1):
            self.nodes[self._key((w, n), "cab1")] = cab()
            self.nodes[self._key((w, n), "cab2")] = cab()
        for h in range(n - 1, 0, -1):
            for w in range(h, 0, -1):
                if h % 2 == 1 and h != w:
                    self.nodes[self._key((w, h), "x")] = _lin3(spatial_dims, channels, channels, channels, 1, norm)
                if w > 1:
                    self.nodes[self._key((w, h), "y")] = nn.Sequential(
                        Conv[Conv.CONVTRANS, spatial_dims](channels, channels, kernel_size=2, stride=2, bias=False),
                        make_norm(norm, spatial_dims, channels) or nn.Identity(), make_act(RELU))
                else:
                    self.nodes[self._key((w, h), "y")] = cab()

    def _node(self, x: torch.Tensor, node: Node, get: Callable[[Node], torch.Tensor]) -> torch.Tensor:
        w, h = node
        n = self.levels
        if h == n:
            if w == n:
                return x
            body = self.nodes[self._key(node, "cab1")](get((w + 1, n)))
            return self.nodes[self._key(node, "cab2")](self.pool(body))
        xb = get((w + 1, h + 1))
        key = self._key(node, "x")
        if key in self.nodes:
            xb = self.nodes[key](xb)
        y = get((w, h + 1))
        if w == 1:
            y = F.interpolate(y, size=tuple(xb.shape[2:]), mode="nearest")
        return (xb + self.nodes[self._key(node, "y")](y)) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, *spatial)`` to the same (node ``(1, 1)`` of the grid whose corner is ``x``)."""
        return _evaluate(lambda node, get: self._node(x, node, get), (1, 1))


def _deform(spatial_dims: int, in_channels: int, out_channels: int, deformable: bool, norm: NormSpec | None,
            plain_kernel: int = 1, plain_bias: bool = True) -> nn.Module:
    """A 3x3 deformable convolution (with bias) or, without deformation, the code's plain 1x1 convolution."""
    act = RELU if norm is not None else None
    if deformable:
        if norm is None:
            return DeformConv(spatial_dims, in_channels, out_channels, 3, bias=True)
        return DeformConvNormAct(spatial_dims, in_channels, out_channels, 3, bias=True, norm=norm, act=act)
    if norm is None:
        return make_conv(spatial_dims, in_channels, out_channels, plain_kernel, bias=plain_bias)
    return ConvNormActD(spatial_dims, in_channels, out_channels, plain_kernel, bias=plain_bias, norm=norm, act=act)


@register_model(
    "stacked_dense_unet",
    family="dense",
    spatial_dims=(2, 3),
    paper_title="Stacked Dense U-Nets with Dual Transformers for Robust Face Alignment",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=3,
        out_channels=68,
        kwargs={},
        params=12_219_874,
        source="authors' code github.com/deepinsight/insightface, alignment/heatmap/symbol/sym_heatmap.py "
               "get_symbol(68) with the 'sdu' network of sample_config.py (net_sta=1, net_n=3, net_dcn=3, "
               "net_stacks=2, net_block='cab', 128->64); the paper (BMVC 2018) states no parameter count",
    ),
    divisor=16,
    deep_supervision=True,
    test_kwargs={2: {"features": (8, 8, 16), "levels": 2},
                 3: {"features": (8, 8, 8), "levels": 2, "deformable": False}},
)
class StackedDenseUNet(SegmentationModel):
    """Stacked dense U-Nets with deformable convolutions (SDU-Net, Guo et al., BMVC 2018), 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` (the heatmaps of the last stack,
    upsampled from ``1 / (2 * stem_stride)`` of the input); each spatial size a multiple of
    ``stem_stride * 2**levels`` (16 by default). With ``deep_supervision=True`` in training mode, forward returns the
    full-resolution output followed by the heatmaps of every earlier stack at their own resolution.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels (the paper: RGB).
        out_channels: Heatmaps / classes (the paper: 68 landmarks).
        features: Channels of the stem, of the middle blocks and of the stacks (paper code: 64, 128, 256; the last
            a multiple of 8).
        n_stacks: Number of stacked dense U-Nets (paper: 2).
        levels: Resolution levels of each scale aggregation topology (paper code: 4).
        stem_stride: 1 (3x3 stem, heatmaps at half the input size: the paper's 128 -> 64) or 2 (7x7 stride-2 stem,
            heatmaps at a quarter).
        deformable: Use the deformable convolutions (the code's ``net_dcn=3``); ``False`` gives its ``net_dcn=0``.
        deep_supervision: Also return the earlier stacks' heatmaps in training mode.
        norm: Normalisation (paper code: MXNet batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features: Sequence[int] = (64, 128, 256),
        n_stacks: int = 2,
        levels: int = 4,
        stem_stride: int = 1,
        deformable: bool = True,
        deep_supervision: bool = False,
        norm: NormSpec = MXNET_BN,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        s_f, m_f, n_f = (int(f) for f in features)
        if n_stacks < 1 or levels < 2 or stem_stride not in (1, 2):
            raise ModelError(f"{self.model_name}: needs n_stacks >= 1, levels >= 2 and stem_stride 1 or 2, got "
                             f"{n_stacks}, {levels}, {stem_stride}")
        if n_f % 8 or m_f % 8:
            raise ModelError(f"{self.model_name}: the block widths must be multiples of 8, got {features}")
        self.deep_supervision = deep_supervision
        stem_kernel = 7 if stem_stride == 2 else 3
        self.stem = nn.Sequential(
            ConvNormActD(spatial_dims, in_channels, s_f, stem_kernel, stem_stride, bias=False, norm=norm, act=RELU),
            HPMBlock(spatial_dims, s_f, m_f, norm) if s_f != m_f else ChannelAggregationBlock(spatial_dims, m_f, 4, 1,
                                                                                              norm),
            make_pool("max", spatial_dims, 2),
            ChannelAggregationBlock(spatial_dims, m_f, 4, 1, norm),
            HPMBlock(spatial_dims, m_f, n_f, norm) if m_f != n_f else ChannelAggregationBlock(spatial_dims, n_f, 4, 1,
                                                                                              norm),
        )
        self.stacks = nn.ModuleList(
            nn.Sequential(ScaleAggregationTopology(spatial_dims, n_f, levels, norm),
                          ChannelAggregationBlock(spatial_dims, n_f, 4, 1, norm))
            for _ in range(n_stacks)
        )
        self.features = nn.ModuleList(_deform(spatial_dims, n_f, n_f, deformable, norm, 1, False)
                                      for _ in range(n_stacks))
        self.heads = nn.ModuleList(_deform(spatial_dims, n_f, out_channels, deformable, None)
                                   for _ in range(n_stacks))
        self.feature_maps = nn.ModuleList(make_conv(spatial_dims, n_f, n_f, 1) for _ in range(n_stacks - 1))
        self.heatmap_maps = nn.ModuleList(make_conv(spatial_dims, out_channels, n_f, 1) for _ in range(n_stacks - 1))
        self.merges = nn.ModuleList(
            DeformConv(spatial_dims, n_f, n_f, 3, bias=True) if deformable else nn.Identity()
            for _ in range(n_stacks - 1)
        )
        self.input_divisor = (stem_stride * 2**levels,) * spatial_dims
        self.output_stride = 2 * stem_stride
        if deep_supervision:
            self.deep_supervision_scales = [(1,) * spatial_dims] + [(self.output_stride,) * spatial_dims] * (
                n_stacks - 1)
            self.loss_weights = (1.0,) * n_stacks

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Heatmaps of ``x`` (``(B, in_channels, *spatial)``) as logits ``(B, out_channels, *spatial)``."""
        self.check_input(x)
        size = x.shape[2:]
        body = self.stem(x)
        heatmaps = []
        for i, stack in enumerate(self.stacks):
            shortcut = body
            features = self.features[i](stack(body))
            heatmap = self.heads[i](features)
            heatmaps.append(heatmap)
            if i < len(self.stacks) - 1:
                body = self.merges[i](shortcut + self.feature_maps[i](features) + self.heatmap_maps[i](heatmap))
        mode = "bilinear" if x.dim() == 4 else "trilinear"
        out = F.interpolate(heatmaps[-1], size=tuple(size), mode=mode, align_corners=False)
        if self.deep_supervision and self.training:
            return [out, *heatmaps[:-1]]
        return out
