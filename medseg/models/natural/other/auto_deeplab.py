"""Auto-DeepLab-S/M/L: the network found by hierarchical architecture search (Liu et al., CVPR 2019), 2D and 3D.

Paper: C. Liu, L.-C. Chen, F. Schroff, H. Adam, W. Hua, A. Yuille, L. Fei-Fei, "Auto-DeepLab: Hierarchical Neural
Architecture Search for Semantic Image Segmentation", CVPR 2019 (arXiv:1901.02985), Section 3 and 5, Fig. 3 (the
found network and cell), Table 3 (Cityscapes); the found cell and network-level path as released in the authors'
DeepLab code github.com/tensorflow/models ``research/deeplab/core/nas_network.py`` (``hnasnet``) and ``nas_cell.py``.
The search itself is not implemented; this is the searched network.

Layout. Stem: three 3x3 convolutions with BN (64 with stride 2, 64, 128 with stride 2). Then L = 12 cells on the
found network-level path ``[0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1]`` (level ``s`` = output stride ``4 * 2**s``): a cell
one level deeper downsamples (its operations on the two cell inputs have stride 2), one level shallower is preceded
by 2x bilinear upsampling. Each cell at level ``s`` has ``f = F * 2**s`` filters: its two inputs (the previous cell's
output, and the one before it resized to the same size) are brought to ``f`` channels by ReLU-1x1 convolution-BN;
B = 5 blocks each add two operations; the cell output concatenates the five block outputs (``5f`` channels). The found
cell (``hnasnet``): block 1 = atrous 5x5 on ``H(l-2)`` + separable 3x3 on ``H(l-1)``; block 2 = separable 3x3 on
``H(l-2)`` + atrous 3x3 on ``H(l-1)``; block 3 = separable 3x3 on block 2 + separable 3x3 on ``H(l-2)``; block 4 =
separable 5x5 on block 3 + separable 5x5 on block 1; block 5 = separable 5x5 on block 2 + atrous 5x5 on block 4.
"Separable kxk" is twice ReLU, depthwise kxk + pointwise convolution, BN; "atrous kxk" is ReLU, a kxk convolution with
rate 2, BN (with stride 2: bilinear downsampling and rate 1, as the code). Head: ReLU, DeepLabv3's ASPP (256 filters,
1x1 + three atrous 3x3 + image pooling, BN) on the last cell (stride 8) and DeepLabv3+'s decoder (low-level features
of cell 3 at stride 4 projected to 48 channels, two 3x3 convolutions with 256 filters) and 1x1 logits, upsampled 4x.

Variants (Table 3): Auto-DeepLab-S (``F = 20``), -M (``F = 40``), -L (``F = 48``), one class with ``variant`` (or
``filter_multiplier``). Parameter figures: Table 3 gives 10.15M for Auto-DeepLab-S and 44.42M for -L (Cityscapes,
19 classes). With non-separable ASPP and decoder convolutions (which is what reproduces both figures) we count
10,147,427 for S (network 7,030,832, ASPP and decoder 3,116,595) and 44,424,691 for L; -M has 31,951,827. ASPP rates:
(12, 24, 36), DeepLab's rates at output stride 8 (the paper does not list them; they have no parameters).

Dims: 2D (the paper) and 3D (every operation has a 3D counterpart).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from monai.networks.layers import Conv
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_act, make_conv, make_norm
from medseg.models.natural.classic._modules import ASPP, resize
from medseg.models.registry import PaperConfig, register_model

__all__ = ["CELL_INPUTS", "CELL_OPERATIONS", "NETWORK_PATH", "AutoDeepLab", "NASCell"]

#: Network-level path found on Cityscapes (``hnasnet`` backbone): level s = output stride 4 * 2**s.
NETWORK_PATH = (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)
#: Found cell: two operations per block and the hidden state each is applied to (0 = H(l-1), 1 = H(l-2), 2.. =
#: earlier blocks of the cell), as ``operations``/``hiddenstate_indices`` of ``hnasnet``.
CELL_OPERATIONS = ("atrous_5x5", "separable_3x3_2", "separable_3x3_2", "atrous_3x3", "separable_3x3_2",
                   "separable_3x3_2", "separable_5x5_2", "separable_5x5_2", "separable_5x5_2", "atrous_5x5")
CELL_INPUTS = (1, 0, 1, 0, 3, 1, 4, 2, 3, 5)
VARIANT_FILTERS = {"s": 20, "m": 40, "l": 48}


class _ReluConvBN(nn.Sequential):
    """ReLU, convolution (no bias), BN."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.add_module("act", make_act(("relu", {"inplace": False})))
        self.add_module("conv", ConvNormActD(spatial_dims, in_channels, out_channels, kernel_size, stride, dilation,
                                             groups, act=None))


def _depthwise(spatial_dims: int, channels: int, kernel_size: int, stride: int) -> nn.Module:
    return Conv[Conv.CONV, spatial_dims](channels, channels, kernel_size=kernel_size, stride=stride,
                                         padding=kernel_size // 2, groups=channels, bias=False)


class SeparableOperation(nn.Module):
    """``separable_kxk_2`` of the found cell: twice ReLU, depthwise kxk, pointwise 1x1 (no bias), BN.

    Shapes: ``(B, f, *spatial)`` to ``(B, f, *spatial / stride)``.
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int, stride: int, layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for i in range(layers):
            self.layers.append(nn.Sequential(
                nn.ReLU(),
                _depthwise(spatial_dims, channels, kernel_size, stride if i == 0 else 1),
                make_conv(spatial_dims, channels, channels, 1, bias=False),
                make_norm("batch", spatial_dims, channels),
            ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the separable layers."""
        for layer in self.layers:
            x = layer(x)
        return x


class AtrousOperation(nn.Module):
    """``atrous_kxk``: ReLU, kxk convolution with rate 2, BN; with stride 2, bilinear halving then rate 1.

    Shapes: ``(B, f, *spatial)`` to ``(B, f, *spatial / stride)``.
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        rate = 1 if stride == 2 else 2
        self.op = _ReluConvBN(spatial_dims, channels, channels, kernel_size, dilation=rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the (downsampled) atrous convolution."""
        if self.stride == 2:
            x = resize(x, [-(-s // 2) for s in x.shape[2:]])
        return self.op(x)


def make_operation(name: str, spatial_dims: int, channels: int, stride: int) -> nn.Module:
    """Build one operation of the found cell by its ``hnasnet`` name (``separable_3x3_2``, ``atrous_5x5``)."""
    kernel = int(name.split("x")[0][-1])
    if name.startswith("separable"):
        return SeparableOperation(spatial_dims, channels, kernel, stride, int(name.split("_")[-1]))
    if name.startswith("atrous"):
        return AtrousOperation(spatial_dims, channels, kernel, stride)
    raise ModelError(f"Auto-DeepLab: unknown operation {name!r}")


class NASCell(nn.Module):
    """One cell of the found architecture (``NASBaseCell`` with the ``hnasnet`` genotype).

    Shapes: ``h_prev`` ``(B, C1, *spatial)`` and ``h_prev_prev`` ``(B, C2, *any)`` to ``(B, 5f, *spatial / stride)``.

    Args:
        spatial_dims: 2 or 3.
        prev_channels: Channels of ``H(l-1)``.
        prev_prev_channels: Channels of ``H(l-2)``.
        filters: ``f`` of this cell.
        stride: 2 when the cell goes one level deeper, else 1.
        operations: Operation names, two per block.
        inputs: Hidden state of each operation.
    """

    def __init__(self, spatial_dims: int, prev_channels: int, prev_prev_channels: int, filters: int, stride: int,
                 operations: Sequence[str] = CELL_OPERATIONS, inputs: Sequence[int] = CELL_INPUTS) -> None:
        super().__init__()
        self.inputs = tuple(inputs)
        self.stride = stride
        self.preprocess = _ReluConvBN(spatial_dims, prev_channels, filters)
        self.preprocess_prev: nn.Module = (_ReluConvBN(spatial_dims, prev_prev_channels, filters)
                                           if prev_prev_channels != filters else nn.Identity())
        self.ops = nn.ModuleList(
            make_operation(op, spatial_dims, filters, stride if idx < 2 else 1)
            for op, idx in zip(operations, inputs, strict=True)
        )
        self.n_blocks = len(operations) // 2
        self.out_channels = self.n_blocks * filters

    def forward(self, h_prev: torch.Tensor, h_prev_prev: torch.Tensor) -> torch.Tensor:
        """Run the five blocks and concatenate their outputs."""
        h_prev_prev = resize(h_prev_prev, h_prev.shape[2:])
        states = [self.preprocess(h_prev), self.preprocess_prev(h_prev_prev)]
        for b in range(self.n_blocks):
            left = self.ops[2 * b](states[self.inputs[2 * b]])
            right = self.ops[2 * b + 1](states[self.inputs[2 * b + 1]])
            states.append(left + right)
        return torch.cat(states[2:], dim=1)


@register_model(
    "auto_deeplab",
    family="natural",
    spatial_dims=(2, 3),
    paper_title="Auto-DeepLab: Hierarchical Neural Architecture Search for Semantic Image Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, kwargs={"variant": "s"}, params=10_150_000,
        source="CVPR 2019, Table 3 (Cityscapes: Auto-DeepLab-S, F=20, 10.15M params; -L, F=48, 44.42M); network and "
               "cell of tensorflow/models research/deeplab/core/nas_network.py (hnasnet) and nas_cell.py",
    ),
    divisor=32,
    test_kwargs={"filter_multiplier": 2, "aspp_channels": 8, "low_level_channels": 4, "decoder_channels": 8,
                 "stem_channels": (8, 8, 16)},
)
class AutoDeepLab(SegmentationModel):
    """Auto-DeepLab-S/M/L (Liu et al., CVPR 2019): the searched cell on the searched path, ASPP and decoder.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each spatial size a multiple of 32.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (paper: 3).
        out_channels: Classes (paper: 19 for Cityscapes).
        variant: ``"s"``, ``"m"`` or ``"l"`` (filter multiplier F = 20, 40, 48).
        filter_multiplier: F; overrides ``variant`` when given.
        network_path: Level of each cell (the found path :data:`NETWORK_PATH`).
        stem_channels: Channels of the three stem convolutions (64, 64, 128).
        aspp_channels: Filters of the ASPP branches and projection (256).
        aspp_rates: Atrous rates of the ASPP at output stride 8 ((12, 24, 36)).
        low_level_channels: Channels of the projected stride-4 features of the decoder (48).
        decoder_channels: Filters of the two decoder convolutions (256).
        low_level_cell: Index of the cell whose output feeds the decoder (2: the third cell, stride 4).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        variant: str = "s",
        filter_multiplier: int | None = None,
        network_path: Sequence[int] = NETWORK_PATH,
        stem_channels: Sequence[int] = (64, 64, 128),
        aspp_channels: int = 256,
        aspp_rates: Sequence[int] = (12, 24, 36),
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        low_level_cell: int = 2,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if variant not in VARIANT_FILTERS:
            raise ModelError(f"{self.model_name}: variant must be one of {sorted(VARIANT_FILTERS)}, got {variant!r}")
        path = tuple(int(s) for s in network_path)
        if not path or path[0] not in (0, 1) or any(s not in (0, 1, 2, 3) for s in path) or any(
                abs(a - b) > 1 for a, b in itertools.pairwise(path)):
            raise ModelError(f"{self.model_name}: network_path must start at level 0 or 1, stay in 0-3 and change by "
                             f"at most one level per cell, got {path}")
        if path[low_level_cell] != 0:
            raise ModelError(f"{self.model_name}: low_level_cell {low_level_cell} is not at stride 4 on {path}")
        f0 = int(filter_multiplier if filter_multiplier is not None else VARIANT_FILTERS[variant])
        c1, c2, c3 = stem_channels
        self.stem0 = ConvNormActD(spatial_dims, in_channels, c1, 3, 2)
        self.stem1 = ConvNormActD(spatial_dims, c1, c2, 3, act=None)
        self.stem2 = nn.Sequential(make_act(("relu", {"inplace": False})),
                                   ConvNormActD(spatial_dims, c2, c3, 3, 2, act=None))
        self.path = path
        self.low_level_cell = low_level_cell
        self.cells = nn.ModuleList()
        channels = [c2, c3]
        level = 0
        for s in path:
            stride = 2 if s == level + 1 else 1
            level = s
            cell = NASCell(spatial_dims, channels[-1], channels[-2], f0 * 2**s, stride)
            self.cells.append(cell)
            channels.append(cell.out_channels)
        self.final_act = nn.ReLU()
        self.aspp = ASPP(spatial_dims, channels[-1], aspp_channels, aspp_rates, dropout=0.1)
        self.project = ConvNormActD(spatial_dims, channels[2 + low_level_cell], low_level_channels, 1)
        self.decoder = nn.Sequential(
            ConvNormActD(spatial_dims, aspp_channels + low_level_channels, decoder_channels, 3),
            ConvNormActD(spatial_dims, decoder_channels, decoder_channels, 3),
        )
        self.classifier = make_conv(spatial_dims, decoder_channels, out_channels, 1)
        self.input_divisor = (4 * 2 ** max(path),) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        size = x.shape[2:]
        y = self.stem1(self.stem0(x))
        outputs = [y]
        y = self.stem2(y)
        outputs.append(y)
        sizes = {0: y.shape[2:]}
        level = 0
        low = y
        for n, (s, cell) in enumerate(zip(self.path, self.cells, strict=True)):
            prev = outputs[-1]
            if s == level - 1:
                prev = resize(prev, sizes[s])
            y = cell(prev, outputs[-2])
            sizes.setdefault(s, y.shape[2:])
            level = s
            outputs.append(y)
            if n == self.low_level_cell:
                low = y
        high = self.aspp(self.final_act(outputs[-1]))
        low = self.project(low)
        y = self.decoder(torch.cat([resize(high, low.shape[2:]), low], dim=1))
        return resize(self.classifier(y), size)
