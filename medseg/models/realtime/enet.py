"""ENet (Paszke, Chaurasia, Kim & Culurciello, 2016), 2D and 3D.

Paper: A. Paszke, A. Chaurasia, S. Kim, E. Culurciello, "ENet: A Deep Neural Network Architecture for Real-Time
Semantic Segmentation", arXiv:1606.02147, 2016, Section 3, Table 1 and Fig. 2; the authors' Torch7 code
(github.com/e-lab/ENet-training, ``train/models/encoder.lua`` and ``decoder.lua``) fixes what the paper leaves open.

Layout (Table 1, input 512x512 in the paper):

* Initial block (Fig. 2a): a 3x3 convolution with stride 2 and ``16 - C_in`` filters (13 for RGB) next to a 2x2 max
  pooling of the input, concatenated to 16 channels, then BN and PReLU.
* Bottleneck (Fig. 2b): main branch = 1x1 projection to ``C_out / 4`` channels (a 2x2 convolution with stride 2 when
  downsampling), a middle convolution, 1x1 expansion to ``C_out``, each followed by BN (PReLU after the first two),
  then spatial dropout; skip branch = identity (when downsampling: 2x2 max pooling whose argmax indices are kept and
  zero padding of the channels); sum, then PReLU. The middle convolution is a 3x3 convolution ("regular"), a dilated
  3x3 convolution ("dilated"), or a 5x1 followed by a 1x5 convolution ("asymmetric"; in 3D one 5-tap convolution per
  axis). Projections have no bias (Section 4: "we did not use bias terms in any of the projections").
* Stage 1: downsampling bottleneck 16 -> 64 and 4 regular ones (dropout 0.01). Stages 2 and 3: 128 channels, the
  pattern regular, dilated 2, asymmetric 5, dilated 4, regular, dilated 8, asymmetric 5, dilated 16; stage 2 starts
  with a downsampling bottleneck 64 -> 128 (dropout 0.1 from stage 2 on).
* Decoder (ReLU instead of PReLU, no dropout): upsampling bottleneck 128 -> 64 (main: 1x1, 3x3 transposed convolution
  with stride 2, 1x1; skip: 1x1 convolution and BN, then max unpooling with the indices of the stage-2 downsampling),
  two regular bottlenecks at 64, upsampling bottleneck 64 -> 16 (indices of stage 1), one regular bottleneck at 16,
  and a 2x2 transposed convolution with stride 2 to the classes ("fullconv").

The input must be a multiple of 8 per axis (three 2x poolings, the decoder unpools to the exact pooled sizes).
``in_channels`` must be below ``channels[0]`` (the initial block's convolution has ``channels[0] - in_channels``
filters). 3D: every layer has a 3D counterpart (MONAI factories); the asymmetric convolution becomes three 1D
convolutions, one per axis.

Parameter figure: the paper's hardware-requirements table gives ENet 0.37 M parameters. At ``in_channels=3`` and the
20 classes of the authors' Cityscapes loader (19 + "Unlabeled") we count 364,376 (initial block 412, encoder
bottlenecks 337,744, decoder 26,220; the encoder-only 1x1 classifier of the Torch7 encoder training is not part of
the network), 1.5 % below the rounded figure and equal to the Torch7 encoder/decoder counted layer by layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv, Dropout, Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ActSpec, NormSpec, axis_conv, make_act, make_norm
from medseg.models.natural.classic._modules import MaxUnpool, max_pool_with_indices
from medseg.models.registry import PaperConfig, register_model

__all__ = ["BN_EPS3", "ConcatDownsampler", "ENet", "ENetBottleneck", "ENetDecoderBottleneck"]

#: Batch norm with eps 1e-3, as in the Torch7 and PyTorch code of ENet, ERFNet, LEDNet, CGNet and ESPNet.
BN_EPS3: NormSpec = ("batch", {"eps": 1e-3})
_RELU: ActSpec = ("relu", {"inplace": True})

#: Middle convolutions of stages 2 and 3 (Table 1): (kind, dilation).
STAGE_PATTERN: tuple[tuple[str, int], ...] = (
    ("regular", 1), ("dilated", 2), ("asymmetric", 1), ("dilated", 4),
    ("regular", 1), ("dilated", 8), ("asymmetric", 1), ("dilated", 16),
)


class ConcatDownsampler(nn.Module):
    """Strided 3x3 convolution next to 2x2 max pooling, concatenated, then BN and activation (ENet's initial block).

    ENet's initial block (Fig. 2a) and ERFNet's and LEDNet's downsampler block: the convolution has
    ``C_out - C_in`` filters, the pooled input fills the other ``C_in`` channels.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / 2)`` (even sizes).

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out (greater than C_in).
        act: Activation after the BN (ENet: PReLU, ERFNet/LEDNet: ReLU).
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, act: ActSpec,
                 norm: NormSpec = BN_EPS3) -> None:
        super().__init__()
        if out_channels <= in_channels:
            raise ModelError(f"the downsampler block needs more output than input channels (its convolution has "
                             f"out - in = {out_channels - in_channels} filters); got {in_channels} -> {out_channels}")
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels - in_channels, kernel_size=3, stride=2,
                                                  padding=1, bias=True)
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2)
        self.norm = make_norm(norm, spatial_dims, out_channels) or nn.Identity()
        self.act = make_act(act, out_channels) or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / 2)``."""
        return self.act(self.norm(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class ENetBottleneck(nn.Module):
    """ENet's encoder bottleneck (Fig. 2b): projection, middle convolution, expansion, dropout, plus the skip branch.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``, or ``*spatial / 2`` when downsampling; ``forward``
    returns the output and the max-pooling indices of the skip branch (``None`` unless downsampling).

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out (at least C_in).
        kind: ``"regular"``, ``"dilated"``, ``"asymmetric"`` or ``"downsampling"``.
        dilation: Dilation of the ``"dilated"`` middle convolution.
        asymmetric_kernel: Length of the 1D kernels of the ``"asymmetric"`` middle convolution (paper: 5).
        dropout: Spatial dropout probability of the main branch.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kind: str = "regular",
                 dilation: int = 1, asymmetric_kernel: int = 5, dropout: float = 0.1) -> None:
        super().__init__()
        if kind not in ("regular", "dilated", "asymmetric", "downsampling"):
            raise ModelError(f"ENet bottleneck kind must be regular, dilated, asymmetric or downsampling, got {kind!r}")
        if out_channels < in_channels:
            raise ModelError(f"ENet bottleneck: out_channels ({out_channels}) below in_channels ({in_channels})")
        self.kind = kind
        self.downsample = kind == "downsampling"
        self.extra_channels = out_channels - in_channels
        internal = out_channels // 4
        conv = Conv[Conv.CONV, spatial_dims]
        stride = 2 if self.downsample else 1
        self.project = nn.Sequential(
            conv(in_channels, internal, kernel_size=stride, stride=stride, bias=False),
            make_norm(BN_EPS3, spatial_dims, internal), make_act("prelu", internal))
        if kind == "asymmetric":
            # the Torch7 code runs the k x 1 (width) convolution first; only the last one of the chain has a bias
            axes = list(reversed(range(spatial_dims)))
            middle: nn.Module = nn.Sequential(*[
                axis_conv(spatial_dims, internal, internal, asymmetric_kernel, axis, bias=axis == axes[-1])
                for axis in axes])
        else:
            d = dilation if kind == "dilated" else 1
            middle = conv(internal, internal, kernel_size=3, padding=d, dilation=d, bias=True)
        self.middle = nn.Sequential(middle, make_norm(BN_EPS3, spatial_dims, internal), make_act("prelu", internal))
        self.expand = nn.Sequential(conv(internal, out_channels, kernel_size=1, bias=False),
                                    make_norm(BN_EPS3, spatial_dims, out_channels))
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout) if dropout > 0 else nn.Identity()
        self.pool = max_pool_with_indices(spatial_dims) if self.downsample else None
        self.act = make_act("prelu", out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the block output and the skip branch's pooling indices (``None`` unless downsampling)."""
        main = self.dropout(self.expand(self.middle(self.project(x))))
        indices = None
        skip = x
        if self.pool is not None:
            skip, indices = self.pool(x)
        if self.extra_channels:
            skip = nn.functional.pad(skip, [0, 0] * (x.dim() - 2) + [0, self.extra_channels])
        return self.act(main + skip), indices


class ENetDecoderBottleneck(nn.Module):
    """ENet's decoder bottleneck: regular (identity skip) or upsampling (1x1 skip + max unpooling), with ReLU.

    Upsampling (Torch7 ``decoder.lua``): main branch 1x1 (``C_out / 4``), 3x3 transposed convolution with stride 2,
    1x1 to ``C_out``, each followed by BN (ReLU after the first two); skip branch 1x1 convolution and BN, then max
    unpooling with the indices of the matching encoder pooling; the sum goes through ReLU.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``, or ``*spatial * 2`` when upsampling.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out (equal to C_in unless upsampling).
        upsample: Upsampling bottleneck or regular one.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, upsample: bool = False) -> None:
        super().__init__()
        if not upsample and in_channels != out_channels:
            raise ModelError("a regular ENet decoder bottleneck keeps the channels")
        internal = out_channels // 4
        conv = Conv[Conv.CONV, spatial_dims]
        if upsample:
            middle: nn.Module = Conv[Conv.CONVTRANS, spatial_dims](internal, internal, kernel_size=3, stride=2,
                                                                   padding=1, output_padding=1, bias=True)
        else:
            middle = conv(internal, internal, kernel_size=3, padding=1, bias=True)
        self.main = nn.Sequential(
            conv(in_channels, internal, kernel_size=1, bias=False), make_norm(BN_EPS3, spatial_dims, internal),
            make_act(_RELU),
            middle, make_norm(BN_EPS3, spatial_dims, internal), make_act(_RELU),
            conv(internal, out_channels, kernel_size=1, bias=False), make_norm(BN_EPS3, spatial_dims, out_channels))
        self.upsample = upsample
        self.skip = (nn.Sequential(conv(in_channels, out_channels, kernel_size=1, bias=False),
                                   make_norm(BN_EPS3, spatial_dims, out_channels)) if upsample else nn.Identity())
        self.unpool = MaxUnpool(spatial_dims) if upsample else None
        self.act = make_act(_RELU)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None,
                output_size: Sequence[int] | None = None) -> torch.Tensor:
        """Map ``x``; an upsampling block unpools its skip branch with ``indices`` to ``output_size``."""
        skip = self.skip(x)
        if self.unpool is not None:
            if indices is None or output_size is None:
                raise ModelError("an upsampling ENet bottleneck needs the encoder's pooling indices and size")
            skip = self.unpool(skip, indices, output_size)
        return self.act(self.main(x) + skip)


@register_model(
    "enet",
    family="realtime",
    spatial_dims=(2, 3),
    paper_title="ENet: A Deep Neural Network Architecture for Real-Time Semantic Segmentation",
    paper_year=2016,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=20, params=370_000,
        source="arXiv:1606.02147, hardware-requirements table (ENet: 0.37 M parameters), Table 1 and Fig. 2; "
               "layer details of github.com/e-lab/ENet-training train/models/encoder.lua, decoder.lua (Cityscapes "
               "loader: 20 classes)",
    ),
    divisor=8,
    test_kwargs={"channels": (8, 16, 32)},
)
class ENet(SegmentationModel):
    """ENet (Paszke et al., 2016): initial block, bottleneck stages with max-pooling indices, unpooling decoder.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each size a multiple of 8.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (below ``channels[0]``).
        out_channels: Classes.
        channels: Widths of the initial block, stage 1 and stages 2-3 (paper: 16, 64, 128).
        asymmetric_kernel: Kernel length of the asymmetric bottlenecks (paper: 5).
        dropout: Spatial dropout of stage 1 and of stages 2-3 (paper: 0.01, 0.1).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        channels: Sequence[int] = (16, 64, 128),
        asymmetric_kernel: int = 5,
        dropout: Sequence[float] = (0.01, 0.1),
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        c0, c1, c2 = (int(c) for c in channels)
        if in_channels >= c0:
            raise ModelError(f"{self.model_name}: in_channels ({in_channels}) must be below channels[0] ({c0}); the "
                             f"initial block concatenates {c0} - in_channels convolution filters with the pooled input")
        self.input_divisor = (8,) * spatial_dims
        p1, p2 = (float(p) for p in dropout)
        dims = spatial_dims
        self.initial = ConcatDownsampler(dims, in_channels, c0, act="prelu")
        self.stage1 = nn.ModuleList(
            [ENetBottleneck(dims, c0, c1, "downsampling", dropout=p1)]
            + [ENetBottleneck(dims, c1, c1, "regular", dropout=p1) for _ in range(4)])
        blocks: list[nn.Module] = [ENetBottleneck(dims, c1, c2, "downsampling", dropout=p2)]
        for _ in range(2):  # stages 2 and 3 share the pattern; only stage 2 starts with a downsampling bottleneck
            blocks += [ENetBottleneck(dims, c2, c2, kind, d, asymmetric_kernel, p2) for kind, d in STAGE_PATTERN]
        self.stage23 = nn.ModuleList(blocks)
        self.stage4 = nn.ModuleList([ENetDecoderBottleneck(dims, c2, c1, upsample=True),
                                     ENetDecoderBottleneck(dims, c1, c1), ENetDecoderBottleneck(dims, c1, c1)])
        self.stage5 = nn.ModuleList([ENetDecoderBottleneck(dims, c1, c0, upsample=True),
                                     ENetDecoderBottleneck(dims, c0, c0)])
        self.fullconv = Conv[Conv.CONVTRANS, dims](c0, out_channels, kernel_size=2, stride=2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        x = self.initial(x)
        pooled: list[tuple[torch.Tensor, tuple[int, ...]]] = []
        for stage in (self.stage1, self.stage23):
            for block in stage:
                size = tuple(x.shape[2:])
                x, indices = block(x)
                if indices is not None:
                    pooled.append((indices, size))
        for stage in (self.stage4, self.stage5):
            indices, size = pooled.pop()
            x = stage[0](x, indices, size)
            for block in stage[1:]:
                x = block(x)
        return self.fullconv(x)
