"""CSA-UNet: connection sensitive attention U-Net for retinal vessels (Li, Li, Li & Zhou, 2019).

Paper: R. Li, M. Li, J. Li, Y. Zhou, "Connection Sensitive Attention U-NET for Accurate Retinal Vessel Segmentation",
arXiv:1903.05558 (2019), Section 3 (the network, "CSAU") and Section 4 (the connection sensitive loss).

The paper improves Attention U-Net (Oktay et al., 2018) in three ways that concern the network: (2) an attention
gate with "a novel neural network structure and a concatenating DOWN-Link", (3) "additionally concatenating
attention weights to features before output"; (1) and (4) are the connection sensitive loss and metric (training
and evaluation, not layers). Our reading of the layout:

* a 2D U-Net with five levels (64 ... 1024 channels), two 3x3 convolutions + BN + ReLU per level, 2x2 max pooling
  and 2x2 transposed convolutions;
* every skip passes through :class:`ConnectionSensitiveGate`: the gating signal is the decoder feature upsampled
  to the skip's resolution concatenated with the DOWN-Link, the encoder's output one level deeper (what the skip
  became after pooling and the next level's convolutions), upsampled likewise; ``W_x`` (1x1 conv + BN) of the skip
  and ``W_g`` (1x1 conv + BN) of that concatenation are added, ReLU, ``psi`` (1x1 conv + BN to one channel),
  sigmoid: the attention map ``alpha``; the gated skip ``alpha * x`` is concatenated with the upsampled decoder
  feature;
* the attention maps of all levels, resampled to full resolution, are concatenated to the last decoder feature
  before the final 1x1 convolution.

We write our own implementation (2D as in the paper; the layout runs in 3D too). ``features_per_stage`` and
``strides`` (first entry 1) can be planned. The paper states no parameter count and no code was released, so the
registry records ``None``; we count 31,917,366 parameters at the paper configuration (2D, RGB, 2 classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.blocks import (
    ConvNormAct,
    NormSpec,
    StackedConvNormAct,
    make_conv,
    make_pool,
    make_transposed_conv,
    resample_linear,
)
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["CSAUNet", "ConnectionSensitiveGate"]

RELU = ("relu", {"inplace": True})


class ConnectionSensitiveGate(nn.Module):
    """CSA-UNet's attention gate: skip ``x`` gated by the decoder feature and the DOWN-Link (see module docstring).

    Shapes: ``x`` ``(B, C_x, *spatial)``, ``g`` ``(B, C_g, *spatial_g)``, ``down`` ``(B, C_d, *spatial_d)`` to
    ``((B, C_x, *spatial), alpha (B, 1, *spatial))``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_x.
        gating_channels: C_g + C_d.
        inter_channels: Width of the intermediate space (default C_x // 2, at least 1).
        norm: Normalisation of the three projections.
    """

    def __init__(self, spatial_dims: int, in_channels: int, gating_channels: int, inter_channels: int | None = None,
                 norm: NormSpec = "batch") -> None:
        super().__init__()
        inter = inter_channels or max(in_channels // 2, 1)
        self.w_x = ConvNormAct(spatial_dims, in_channels, inter, 1, norm=norm, act=None)
        self.w_g = ConvNormAct(spatial_dims, gating_channels, inter, 1, norm=norm, act=None)
        self.psi = ConvNormAct(spatial_dims, inter, 1, 1, norm=norm, act=None)

    def forward(self, x: torch.Tensor, g: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the gated skip and the attention map."""
        size = x.shape[2:]
        gating = torch.cat((resample_linear(g, size), resample_linear(down, size)), dim=1)
        alpha = torch.sigmoid(self.psi(torch.relu(self.w_x(x) + self.w_g(gating))))
        return x * alpha, alpha


@register_model(
    "csa_unet",
    family="attention",
    spatial_dims=(2, 3),
    paper_title="Connection Sensitive Attention U-NET for Accurate Retinal Vessel Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=3,
        out_channels=2,
        params=None,
        source="arXiv:1903.05558, Section 3 (attention gate with DOWN-Link, attention maps concatenated before the "
               "output); no parameter figure in the paper and no official code; built from the paper's text",
    ),
    divisor=16,
    test_kwargs={2: {"features_per_stage": (4, 8, 16, 32)}, 3: {"features_per_stage": (4, 8, 16)}},
)
class CSAUNet(SegmentationModel):
    """Connection sensitive attention U-Net of Li et al. (2019): DOWN-Link gates, attention maps at the output.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    product of the strides per axis (16 by default). :attr:`attention_maps` holds the last forward's maps, finest
    first.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Classes.
        features_per_stage: Width of each level (default 64 ... 1024).
        strides: Pooling into each level (first entry 1); default 2 per axis.
        norm: Normalisation (batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features_per_stage: Sequence[int] = (64, 128, 256, 512, 1024),
        strides: Sequence[int | Sequence[int]] | None = None,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        plan = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides)
        f, pools, divisor = plan.features, plan.pools, plan.divisor
        n = len(f)
        kw = {"norm": norm, "act": RELU}
        self.encoder = nn.ModuleList(StackedConvNormAct(2, spatial_dims, in_channels if i == 0 else f[i - 1], f[i],
                                                        3, **kw) for i in range(n))
        self.pools = nn.ModuleList(make_pool("max", spatial_dims, p) for p in pools)
        self.ups = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(n - 2, -1, -1):
            self.ups.append(make_transposed_conv(spatial_dims, f[level + 1], f[level], pools[level]))
            self.gates.append(ConnectionSensitiveGate(spatial_dims, f[level], f[level + 1] + f[level + 1], norm=norm))
            self.decoder.append(StackedConvNormAct(2, spatial_dims, 2 * f[level], f[level], 3, **kw))
        self.head = make_conv(spatial_dims, f[0] + n - 1, out_channels, 1)
        self.input_divisor = divisor
        self.attention_maps: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        size = x.shape[2:]
        enc = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pools[i - 1](x))
            enc.append(x)
        out = enc[-1]
        maps = []
        for k, (up, gate, block) in enumerate(zip(self.ups, self.gates, self.decoder, strict=True)):
            level = len(enc) - 2 - k
            skip, alpha = gate(enc[level], out, enc[level + 1])
            maps.append(alpha)
            out = block(torch.cat((skip, up(out)), dim=1))
        maps = [resample_linear(a, size) if a.shape[2:] != size else a for a in reversed(maps)]
        self.attention_maps = [a.detach() for a in maps]
        return self.head(torch.cat((out, *maps), dim=1))
