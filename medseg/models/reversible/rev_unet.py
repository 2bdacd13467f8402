"""Partially reversible U-Net: reversible blocks within each resolution level (Brügger, Baumgartner & Konukoglu, 2019).

Paper: R. Brügger, C. F. Baumgartner, E. Konukoglu, "A Partially Reversible U-Net for Memory-Efficient Volumetric
Image Segmentation", MICCAI 2019, LNCS 11766 (arXiv:1906.06148), Section 2 (Fig. 1-2) and Section 3; reference
code: github.com/RobinBruegger/PartiallyReversibleUnet (``experiments/noNewReversible.py``).

Reversible block (additive coupling, RevNet): the channels are split in halves, ``y1 = x1 + F(x2)``,
``y2 = x2 + G(y1)``; the inverse ``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)`` lets backward recompute the block inputs
from its outputs, so the activations inside a level's reversible sequence are not stored. ``F`` and ``G`` are each
group norm + leaky ReLU + a bias-free 3x3x3 convolution on half the channels (the "no new-Net" residual unit). Only
the level transitions are non-reversible and store their activations: encoder level ``i > 0`` is 2x max pooling,
a 1x1x1 convolution to the level's channels and the reversible sequence; decoder level ``i`` is the reversible
sequence, then (except at the finest level) a 1x1x1 convolution to the next finer level's channels and trilinear
upsampling; the skips are added (not concatenated). A 3x3x3 convolution maps the input to the first level's
channels and a 1x1x1 convolution gives the output.

We write our own implementation: MONAI has no reversible network. The reversible mechanics are a custom autograd
function over a whole level's sequence (:class:`ReversibleSequence`): forward runs without building a graph and
keeps only the sequence's output; backward inverts the blocks one by one, recomputes ``F`` and ``G`` with
gradients and back-propagates through them. ``reversible=False`` runs the same blocks with ordinary autograd (the
same weights and outputs; used to check the gradients).

Paper configuration: 3D, four MRI modalities in, three tumour regions out (BraTS 2018), five levels with channels
(60, 120, 240, 360, 480), one reversible block per encoder and decoder level, 30 groups in every group norm (the
reference code). We count 12,365,283 parameters for it; we found no parameter count in the paper (it reports
memory use and Dice scores), so the registry records ``None``. The layout is dimension-agnostic, so 2D works too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv, make_pool, resample_linear
from medseg.models.registry import PaperConfig, register_model

__all__ = ["RevUNet", "ReversibleBlock", "ReversibleSequence"]


class _NormActConv(nn.Module):
    """Group norm, leaky ReLU, bias-free 3x3 convolution (the ``F``/``G`` of a reversible block)."""

    def __init__(self, spatial_dims: int, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.act = nn.LeakyReLU(0.01, inplace=True)
        self.conv = make_conv(spatial_dims, channels, channels, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.norm(x)))


class ReversibleBlock(nn.Module):
    """Additive-coupling reversible block: ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``.

    Shapes: ``(B, C, *spatial)`` to the same (C even; ``x1``/``x2`` are the channel halves).

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        groups: Groups of the group norms of ``F`` and ``G`` (must divide ``C / 2``).
    """

    def __init__(self, spatial_dims: int, channels: int, groups: int) -> None:
        super().__init__()
        if channels % 2 or (channels // 2) % groups:
            raise ModelError(f"reversible block: channels ({channels}) must be even and channels / 2 divisible by "
                             f"groups ({groups})")
        self.f = _NormActConv(spatial_dims, channels // 2, groups)
        self.g = _NormActConv(spatial_dims, channels // 2, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the coupling (ordinary autograd)."""
        x1, x2 = torch.chunk(x, 2, dim=1)
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return torch.cat((y1, y2), dim=1)

    def backward_pass(self, y: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[Any]]:
        """Reconstruct the input from the output ``y`` and back-propagate ``dy``.

        Returns:
            The reconstructed input, its gradient, and the gradients of ``F``'s then ``G``'s trainable parameters.
        """
        y1, y2 = torch.chunk(y, 2, dim=1)
        dy1, dy2 = torch.chunk(dy, 2, dim=1)
        f_params = [p for p in self.f.parameters() if p.requires_grad]
        g_params = [p for p in self.g.parameters() if p.requires_grad]
        with torch.enable_grad():
            y1_ = y1.detach().requires_grad_(True)
            g_out = self.g(y1_)
            g_grads = torch.autograd.grad(g_out, (y1_, *g_params), dy2, allow_unused=True)
        with torch.no_grad():
            x2 = y2 - g_out
            dy1_total = dy1 + g_grads[0]
        del g_out
        with torch.enable_grad():
            x2_ = x2.detach().requires_grad_(True)
            f_out = self.f(x2_)
            f_grads = torch.autograd.grad(f_out, (x2_, *f_params), dy1_total, allow_unused=True)
        with torch.no_grad():
            x1 = y1 - f_out
            dx2 = dy2 + f_grads[0]
            x = torch.cat((x1, x2), dim=1)
            dx = torch.cat((dy1_total, dx2), dim=1)
        return x, dx, [*f_grads[1:], *g_grads[1:]]


class _ReversibleFunction(torch.autograd.Function):
    """Runs reversible blocks without storing their activations; backward recomputes them from the output."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, blocks: nn.ModuleList, *params: torch.Tensor) -> torch.Tensor:
        ctx.blocks = blocks
        ctx.n_params = len(params)
        with torch.no_grad():
            for block in blocks:
                x = block(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (y,) = ctx.saved_tensors
        grads_per_block: list[list[Any]] = []
        for block in reversed(ctx.blocks):
            y, dy, grads = block.backward_pass(y, dy)
            grads_per_block.append(grads)
        param_grads = [g for grads in reversed(grads_per_block) for g in grads]
        if len(param_grads) != ctx.n_params:
            raise RuntimeError("reversible sequence: parameter gradients do not match its parameters")
        return (dy, None, *param_grads)


class ReversibleSequence(nn.Module):
    """A sequence of :class:`ReversibleBlock` s whose backward recomputes activations instead of storing them.

    Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        depth: Number of blocks (at least 1).
        groups: Groups of every group norm.
        reversible: Use the memory-saving backward (``False``: ordinary autograd through the same blocks).
    """

    def __init__(self, spatial_dims: int, channels: int, depth: int, groups: int, reversible: bool = True) -> None:
        super().__init__()
        if depth < 1:
            raise ModelError(f"reversible sequence: depth must be >= 1, got {depth}")
        self.blocks = nn.ModuleList(ReversibleBlock(spatial_dims, channels, groups) for _ in range(depth))
        self.reversible = reversible

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the blocks."""
        # parameters in block order, F's then G's, as ReversibleBlock.backward_pass returns their gradients
        params = [p for block in self.blocks for part in (block.f, block.g) for p in part.parameters()
                  if p.requires_grad]
        if self.reversible and torch.is_grad_enabled() and (x.requires_grad or params):
            return _ReversibleFunction.apply(x, self.blocks, *params)
        for block in self.blocks:
            x = block(x)
        return x


@register_model(
    "rev_unet",
    family="reversible",
    spatial_dims=(2, 3),
    paper_title="A Partially Reversible U-Net for Memory-Efficient Volumetric Image Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=4,
        out_channels=3,
        kwargs={"features": (60, 120, 240, 360, 480), "depth": 1, "groups": 30},
        params=None,
        source="MICCAI 2019 (arXiv:1906.06148), Section 2 (Fig. 1-2) and the authors' noNewReversible experiment "
               "(channels 60, 120, 240, 360, 480; one block per level); no parameter count given",
    ),
    divisor=16,
    test_kwargs={"features": (4, 8, 8, 16, 16), "groups": 2},
)
class RevUNet(SegmentationModel):
    """Partially reversible U-Net of Brügger et al. (MICCAI 2019), 3D (paper) or 2D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of
    ``2**(len(features) - 1)`` (16 by default).

    Args:
        spatial_dims: 3 (paper) or 2.
        in_channels: Input channels (paper: 4 MRI modalities).
        out_channels: Output channels (paper: 3 tumour regions, each a sigmoid output).
        features: Channels per level (paper: 60, 120, 240, 360, 480); each even, half of each divisible by
            ``groups``.
        depth: Reversible blocks per encoder and decoder level (paper: 1).
        groups: Groups of every group norm (paper: 30).
        reversible: Recompute the activations of the reversible blocks in backward (the memory saving); ``False``
            stores them like an ordinary network.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features: Sequence[int] = (60, 120, 240, 360, 480),
        depth: int = 1,
        groups: int = 30,
        reversible: bool = True,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        features = tuple(int(f) for f in features)
        levels = len(features)
        if levels < 2:
            raise ModelError(f"{self.model_name}: features needs at least 2 levels, got {features}")
        bad = [f for f in features if f % 2 or (f // 2) % groups]
        if bad:
            raise ModelError(f"{self.model_name}: every level's channels must be even with half divisible by groups "
                             f"({groups}); {bad} are not")
        self.first = make_conv(spatial_dims, in_channels, features[0], 3, bias=False)
        self.pool = make_pool("max", spatial_dims, 2)
        self.down = nn.ModuleList(make_conv(spatial_dims, features[i - 1], features[i], 1) for i in range(1, levels))
        self.encoder = nn.ModuleList(ReversibleSequence(spatial_dims, f, depth, groups, reversible) for f in features)
        self.decoder = nn.ModuleList(ReversibleSequence(spatial_dims, features[i], depth, groups, reversible)
                                     for i in range(levels - 1, -1, -1))
        self.up = nn.ModuleList(make_conv(spatial_dims, features[i], features[i - 1], 1)
                                for i in range(levels - 1, 0, -1))
        self.head = make_conv(spatial_dims, features[0], out_channels, 1)
        self.input_divisor = (2 ** (levels - 1),) * spatial_dims

    @property
    def reversible(self) -> bool:
        """Whether the reversible sequences use the memory-saving backward."""
        return all(seq.reversible for seq in (*self.encoder, *self.decoder))

    @reversible.setter
    def reversible(self, value: bool) -> None:
        for seq in (*self.encoder, *self.decoder):
            seq.reversible = bool(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        x = self.first(x)
        skips = []
        for i, level in enumerate(self.encoder):
            if i > 0:
                x = self.down[i - 1](self.pool(x))
            x = level(x)
            skips.append(x)
        skips.pop()
        for i, level in enumerate(self.decoder):
            x = level(x)
            if i < len(self.up):
                x = self.up[i](x)
                x = resample_linear(x, [2 * s for s in x.shape[2:]]) + skips.pop()
        return self.head(x)
