"""LWBNA-UNet: a lightweight constant-width U-Net with channel attention and a narrowing attention bottleneck.

Paper: P. Sharma, T. Ninomiya, K. Omodaka, N. Takahashi, T. Miya, N. Himori, T. Okatani, T. Nakazawa, "A lightweight
deep learning model for automatic segmentation and analysis of ophthalmic images", Scientific Reports 12, 8508,
2022 (doi:10.1038/s41598-022-12486-w), Fig. 1 ("LWBNA-Unet": light-weight bottleneck narrowing with attention).
The code the seeds list (PyPI ``lwbna-unet``, github.com/fcossio/LWBNA_Unet, TensorFlow) is an independent
implementation "unrelated to the authors of the paper"; the authors published none.

Layout (Fig. 1 as that implementation reads it):

* every convolution is a conv-block: 3x3 convolution + batch norm + ReLU, with the same width ``filters`` (128)
  everywhere;
* attention block (:class:`ChannelAttentionBlock`): global average pooling, a dense layer ``C -> C``, ReLU,
  sigmoid, channel-wise multiplication;
* encoder level: (dropout), two conv-blocks, an attention block, 2x max pooling (``depth`` = 4 levels); the
  attention output is the skip (at the first level the pooling takes the conv-block output);
* bottleneck (:class:`NarrowingBottleneck`): dropout, then ``midblock_steps`` (4) conv-blocks whose widths narrow
  by 2 each step (128, 64, 32, 16), each followed by an attention block, and a conv-block back to ``filters``, added
  to the output of the first conv-block (a residual connection); then two conv-blocks and an attention block;
* decoder level: nearest 2x upsampling, the skip added (not concatenated), dropout, two conv-blocks, an attention
  block; a final 1x1 convolution to the classes.

One difference from that implementation: its bottleneck returns ``input + first conv-block output`` and drops the
final conv-block's result (so the narrowing attention path never reaches the output); we add the final conv-block
to the first conv-block output, which is what the residual around the narrowing path is for.

Which configuration reproduces the paper: the implementation's example (``filters=128, depth=4,
midblock_steps=4, dropout=0.3``), 2D, 3 input channels, 1 output. The paper's own parameter figure could not be read
here, so the registry records ``None``; we count 2,951,617 parameters at that configuration, the same as the layers
that implementation builds (counted from its layer definitions in a scratch script).

Planned topology: ``strides`` (plans format) sets the number of levels and the pooling per level; the width stays
constant (``features_per_stage`` does not apply to this design).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, NormSpec, make_conv, make_pool
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["ChannelAttentionBlock", "LWBNAUNet", "NarrowingBottleneck"]

RELU = ("relu", {"inplace": True})


class ChannelAttentionBlock(nn.Module):
    """LWBNA's attention block: global average pooling, dense ``C -> C``, ReLU, sigmoid, channel-wise rescaling.

    Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.dense = make_conv(spatial_dims, channels, channels, 1)  # a dense layer on the pooled vector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rescale the channels of ``x``."""
        pooled = x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        return x * torch.sigmoid(torch.relu(self.dense(pooled)))


class NarrowingBottleneck(nn.Module):
    """The bottleneck narrowing with attention: conv-blocks of halving width, each with channel attention.

    ``h_0 = cb_0(x)`` (``C`` channels), then ``h_s = att_s(cb_s(...))`` with ``C / 2**s`` channels for
    ``s = 0 .. steps-1``, and ``y = h_0 + cb_final(h_last)`` back at ``C`` channels.

    Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        steps: Number of narrowing steps.
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, channels: int, steps: int, norm: NormSpec = "batch") -> None:
        super().__init__()
        if steps < 1 or channels // 2 ** (steps - 1) < 1:
            raise ModelError(f"NarrowingBottleneck: steps must be in [1, log2({channels}) + 1], got {steps}")
        widths = [channels // 2**s for s in range(steps)]
        self.convs = nn.ModuleList(
            ConvNormAct(spatial_dims, channels if s == 0 else widths[s - 1], w, 3, norm=norm, act=RELU)
            for s, w in enumerate(widths)
        )
        self.attentions = nn.ModuleList(ChannelAttentionBlock(spatial_dims, w) for w in widths)
        self.final = ConvNormAct(spatial_dims, widths[-1], channels, 3, norm=norm, act=RELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Narrow, attend, widen and add the first step's features."""
        first = None
        for conv, attention in zip(self.convs, self.attentions, strict=True):
            x = conv(x)
            if first is None:
                first = x
            x = attention(x)
        return first + self.final(x)


class _Level(nn.Sequential):
    """Dropout (optional), two conv-blocks and a channel attention block."""

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, dropout: float, norm: NormSpec) -> None:
        super().__init__()
        if dropout > 0:
            self.add_module("dropout", nn.Dropout(dropout))
        self.add_module("conv1", ConvNormAct(spatial_dims, in_channels, channels, 3, norm=norm, act=RELU))
        self.add_module("conv2", ConvNormAct(spatial_dims, channels, channels, 3, norm=norm, act=RELU))
        self.add_module("attention", ChannelAttentionBlock(spatial_dims, channels))


@register_model(
    "lwbna_unet",
    family="attention",
    spatial_dims=(2, 3),
    paper_title="A lightweight deep learning model for automatic segmentation and analysis of ophthalmic images",
    paper_year=2022,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=3,
        out_channels=1,
        kwargs={"filters": 128, "depth": 4, "midblock_steps": 4, "dropout": 0.3},
        params=None,
        source="Sci. Rep. 12, 8508 (2022), Fig. 1; configuration of the independent implementation the seeds link "
               "(PyPI lwbna-unet / fcossio/LWBNA_Unet README); no official code, parameter figure not read",
    ),
    divisor=16,
    test_kwargs={2: {"filters": 8, "depth": 3, "midblock_steps": 3}, 3: {"filters": 8, "depth": 2,
                                                                           "midblock_steps": 2}},
)
class LWBNAUNet(SegmentationModel):
    """LWBNA-UNet (Sharma et al., Sci. Rep. 2022): constant-width attention U-Net with a narrowing bottleneck.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of
    ``2**depth`` (16 by default, :attr:`input_divisor`).

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Output channels (classes).
        filters: Width of every conv-block (128).
        depth: Number of encoder levels, i.e. poolings (4).
        midblock_steps: Narrowing steps of the bottleneck (4).
        dropout: Dropout before each level but the first (0.3).
        strides: Plans-format strides (first stage 1); when given they set the levels and their pooling and
            override ``depth``.
        norm: Normalisation (batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        filters: int = 128,
        depth: int = 4,
        midblock_steps: int = 4,
        dropout: float = 0.3,
        strides: Sequence[int | Sequence[int]] | None = None,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        n_stages = len(strides) if strides is not None else depth + 1
        topo = resolve_stages(self.model_name, spatial_dims, [filters] * n_stages, strides, [filters])
        self.topology = topo
        levels = n_stages - 1
        self.pools = nn.ModuleList(make_pool("max", spatial_dims, s) for s in topo.strides[1:])
        self.encoder = nn.ModuleList(
            _Level(spatial_dims, in_channels if i == 0 else filters, filters, dropout if i > 0 else 0.0, norm)
            for i in range(levels)
        )
        self.bottleneck_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.bottleneck = NarrowingBottleneck(spatial_dims, filters, midblock_steps, norm)
        self.post_bottleneck = _Level(spatial_dims, filters, filters, 0.0, norm)
        self.decoder = nn.ModuleList(_Level(spatial_dims, filters, filters, dropout, norm) for _ in range(levels))
        self.head = make_conv(spatial_dims, filters, out_channels, 1)
        self.input_divisor = topo.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        skips = []
        h = x
        for i, (level, pool) in enumerate(zip(self.encoder, self.pools, strict=True)):
            if i == 0:  # the first level pools the conv-block output; its attention output is the skip
                h = level.conv2(level.conv1(h))
                skips.append(level.attention(h))
            else:
                h = level(h)
                skips.append(h)
            h = pool(h)
        h = self.post_bottleneck(self.bottleneck(self.bottleneck_dropout(h)))
        for level in self.decoder:
            skip = skips.pop()
            h = level(nn.functional.interpolate(h, size=skip.shape[2:], mode="nearest") + skip)
        return self.head(h)
