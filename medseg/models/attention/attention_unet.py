"""Attention U-Net: a U-Net whose skip connections pass through additive attention gates (Oktay et al., 2018).

Paper: O. Oktay, J. Schlemper, L. Le Folgoc, M. Lee, M. Heinrich, K. Misawa, K. Mori, S. McDonagh, N. Y. Hammerla,
B. Kainz, B. Glocker, D. Rueckert, "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018
(arXiv:1804.03999), Section 2, Fig. 1 and Fig. 2; reference code: github.com/ozan-oktay/Attention-Gated-Networks
(``unet_CT_multi_att_dsv_3D``, the CT model of the paper).

Layout (Fig. 1 and the reference code): a 3D U-Net with five resolution levels (four 2x max poolings); each level
has two 3x3x3 convolutions + batch norm + ReLU, with ``features`` channels (64..1024 scaled down by the code's
``feature_scale = 4``: 16, 32, 64, 128, 256). The gating signal of the coarsest gate is the bottleneck after a 1x1x1
conv + BN + ReLU; every other gate takes its gating signal from the decoder output of the next coarser level
("the gating signal is collected from a coarser scale"). The skips of levels 1-3 pass through attention gates
(:class:`~medseg.models.blocks.GridAttentionGate`: ``W_x`` with kernel = stride = 2, ``W_g`` 1x1, ReLU, ``psi``
1x1, sigmoid, linear resampling of the coefficients, output transform 1x1 conv + BN); the full-resolution skip is
not gated (the paper: the finest level's features carry little context). Each gated level has ``gates_per_level``
gates (2 in the authors' CT model, "multi_att") whose outputs a 1x1 conv + BN + ReLU merges. The decoder upsamples
by trilinear interpolation, concatenates the skip and applies two conv-BN-ReLU. Deep supervision: a 1x1 convolution
on each decoder level, resampled to full resolution, and a final 1x1 convolution over their concatenation gives the
output (the paper: "deep-supervision is used to force the intermediate feature-maps to be semantically
discriminative at each image scale").

We write our own implementation: MONAI's ``AttentionUnet`` differs from the paper. Its gate takes the gating signal
after the decoder's up-convolution at the skip's own resolution (no subsampled ``W_x``, no resampling of the
coefficients), adds BN to ``W_x``/``W_g``/``psi`` and has no output transform; it gates every level including the
finest one, downsamples with strided convolutions instead of max pooling, upsamples with transposed convolutions
and has no deep supervision.

Paper configuration: 3D, one CT channel in, 4 classes out (background, pancreas, spleen, kidney in CT-150),
``features=(16, 32, 64, 128, 256)`` (the authors' ``feature_scale=4`` configs), two gates per level. We count
6,473,322 parameters for it, 6,214,151 with one gate per level (the authors' ``single_att`` variant) and 5,888,004
for the same network without gates and gating convolution (``gates_per_level=0``, the authors' ``unet_CT_dsv``).
The paper's Table 1 is recalled to give 5.88M (U-Net) and 6.40M (Attention U-Net)
parameters, which these counts are close to (0.1% and 1.1%); we could not read the table itself in the sources we
searched, so the registry records ``None`` and a model test pins our counts instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import (
    ConvNormAct,
    GridAttentionGate,
    NormSpec,
    StackedConvNormAct,
    make_conv,
    make_pool,
    resample_linear,
)
from medseg.models.registry import PaperConfig, register_model

__all__ = ["AttentionUNet", "MultiGridAttention"]


class MultiGridAttention(nn.Module):
    """``n`` parallel :class:`GridAttentionGate` s on one skip, merged by a 1x1 conv + norm + ReLU.

    Shapes: ``x`` ``(B, C_x, *spatial)``, ``g`` ``(B, C_g, *spatial_g)`` to ``((B, C_x, *spatial),
    alphas (B, n, *spatial))``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_x.
        gating_channels: C_g.
        n: Number of gates (at least 1).
        norm: Normalisation of the gates' output transforms and of the merge.
    """

    def __init__(self, spatial_dims: int, in_channels: int, gating_channels: int, n: int, norm: NormSpec) -> None:
        super().__init__()
        self.gates = nn.ModuleList(
            GridAttentionGate(spatial_dims, in_channels, gating_channels, in_channels, 2, norm) for _ in range(n)
        )
        self.merge = ConvNormAct(spatial_dims, n * in_channels, in_channels, 1, norm=norm,
                                 act=("relu", {"inplace": True}))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate ``x`` with every gate and merge; also return the attention coefficients."""
        outs, alphas = zip(*(gate(x, g) for gate in self.gates), strict=True)
        return self.merge(torch.cat(outs, dim=1)), torch.cat(alphas, dim=1)


@register_model(
    "attention_unet",
    family="attention",
    spatial_dims=(2, 3),
    paper_title="Attention U-Net: Learning Where to Look for the Pancreas",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=4,
        kwargs={"features": (16, 32, 64, 128, 256), "gates_per_level": 2},
        params=None,
        source="MIDL 2018 (arXiv:1804.03999), Section 2, Fig. 1-2 and the authors' unet_CT_multi_att_dsv_3D "
               "(feature_scale=4); Table 1's figures (recalled as 5.88M U-Net / 6.40M Attention U-Net) not verified",
    ),
    divisor=16,
    deep_supervision=True,
    test_kwargs={2: {"features": (4, 8, 8, 16, 16)}, 3: {"features": (4, 4, 8, 8, 16), "gates_per_level": 1}},
)
class AttentionUNet(SegmentationModel):
    """Attention U-Net of Oktay et al. (MIDL 2018), 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of
    ``2**(len(features) - 1)`` (16 by default). With ``deep_supervision=True`` in training mode, forward returns the
    fused output followed by the per-level deep-supervision logits at their own resolution, finest first
    (downsampling factors 1, 2, 4, ...: see :attr:`deep_supervision_scales`); in eval mode only the fused output.
    :attr:`attention_maps` holds the attention coefficients ``(B, gates_per_level, *spatial_level)`` of the last
    forward, coarsest gate first.

    Args:
        spatial_dims: 3 (paper) or 2.
        in_channels: Input channels.
        out_channels: Output channels (classes).
        features: Channels per level (paper: 16, 32, 64, 128, 256).
        gates_per_level: Attention gates per gated skip (paper code: 2); 0 gives the plain deeply-supervised U-Net
            the paper compares against.
        deep_supervision: Return the per-level outputs in training mode.
        norm: Normalisation (paper: batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features: Sequence[int] = (64, 128, 256, 512, 1024),
        gates_per_level: int = 2,
        deep_supervision: bool = False,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        features = tuple(int(f) for f in features)
        depth = len(features)
        if depth < 3:
            raise ModelError(f"{self.model_name}: features needs at least 3 levels, got {features}")
        if gates_per_level < 0:
            raise ModelError(f"{self.model_name}: gates_per_level must be >= 0, got {gates_per_level}")
        self.depth = depth
        self.deep_supervision = deep_supervision
        act = ("relu", {"inplace": True})
        kw = {"norm": norm, "act": act}
        self.pool = make_pool("max", spatial_dims, 2)
        self.encoder = nn.ModuleList(
            StackedConvNormAct(2, spatial_dims, in_channels if i == 0 else features[i - 1], f, 3, **kw)
            for i, f in enumerate(features)
        )
        self.gating = ConvNormAct(spatial_dims, features[-1], features[-1], 1, **kw) if gates_per_level else None
        # gates[k] / decoder[k] / heads[k] belong to level depth-2-k (coarsest first); level 0 has no gate.
        self.gates = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(depth - 2, -1, -1):
            if gates_per_level and level > 0:
                self.gates.append(MultiGridAttention(spatial_dims, features[level], features[level + 1],
                                                     gates_per_level, norm))
            else:
                self.gates.append(nn.Identity())
            self.decoder.append(StackedConvNormAct(2, spatial_dims, features[level] + features[level + 1],
                                                   features[level], 3, **kw))
        self.heads = nn.ModuleList(make_conv(spatial_dims, features[level], out_channels, 1)
                                   for level in range(depth - 2, -1, -1))
        self.fuse = make_conv(spatial_dims, (depth - 1) * out_channels, out_channels, 1)
        self.input_divisor = (2 ** (depth - 1),) * spatial_dims
        if deep_supervision:
            self.deep_supervision_scales = [(1,) * spatial_dims] + [(2**level,) * spatial_dims
                                                                      for level in range(depth - 1)]
        self.attention_maps: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``; see the class docstring for the outputs."""
        self.check_input(x)
        size = x.shape[2:]
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        g = self.gating(x) if self.gating is not None else x
        maps: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        for gate, block, head in zip(self.gates, self.decoder, self.heads, strict=True):
            skip = skips.pop()
            if isinstance(gate, MultiGridAttention):
                skip, alpha = gate(skip, g)
                maps.append(alpha.detach())
            x = block(torch.cat((skip, resample_linear(x, skip.shape[2:])), dim=1))
            g = x
            logits.append(head(x))
        self.attention_maps = maps
        logits.reverse()  # finest first
        out = self.fuse(torch.cat([resample_linear(lo, size) if lo.shape[2:] != size else lo for lo in logits],
                                  dim=1))
        if self.deep_supervision and self.training:
            return [out, *logits]
        return out
