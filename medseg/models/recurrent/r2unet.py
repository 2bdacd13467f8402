"""R2U-Net: a U-Net built of recurrent residual convolutional units (Alom et al., 2018).

Paper: M. Z. Alom, M. Hasan, C. Yakopcic, T. M. Taha, V. K. Asari, "Recurrent Residual Convolutional Neural Network
based on U-Net (R2U-Net) for Medical Image Segmentation", arXiv:1802.06955 (2018), Section III, Eq. 1-3, Fig. 3-4.

Recurrent convolutional layer (RCL, Eq. 1-2): ``x(t) = f(w_f * x + w_r * x(t-1) + b)`` with a feed-forward kernel
``w_f`` on the unit's input and a recurrent kernel ``w_r`` on the previous state, ``x(0) = f(w_f * x + b)``; ``f``
is batch norm + ReLU; ``t = 2`` unfolds the layer into one convolution followed by two recurrent steps. Recurrent
residual unit (RRCU, Fig. 4d, Eq. 3): two RCLs and an identity skip, ``x_out = x_in + RCL(RCL(x_in))``; a 1x1
convolution first maps the unit's input to its output channels so that the skip is an identity. The network
(Fig. 3) is a U-Net whose double convolutions are RRCUs: max pooling 2x, up-convolution (2x2 transposed conv),
concatenation with the skip, and a final 1x1 convolution.

We write our own implementation: MONAI has no recurrent residual unit. The common PyTorch port (one shared kernel
applied to ``x + x(t-1)``) ties ``w_f = w_r``; we keep the paper's two kernels (Eq. 1).

Paper configuration: 2D, ``features=(16, 32, 64, 128)`` ("1 -> 16 -> 32 -> 64 -> 128 -> 64 -> 32 -> 16 -> 1"
feature maps for the retina, skin and lung experiments), ``t=2``, one input channel and one (sigmoid) output
channel. We count 1,044,017 parameters for it. The paper's tables list parameter counts per model (recalled as
about 1.037M for R2U-Net); we could not read them in the sources we searched, so the registry records ``None``
and a model test pins our count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormSpec, make_act, make_conv, make_norm, make_pool, make_transposed_conv
from medseg.models.registry import PaperConfig, register_model

__all__ = ["R2UNet", "RecurrentConv", "RecurrentResidualUnit"]


class RecurrentConv(nn.Module):
    """Recurrent convolutional layer (RCL) unfolded for ``t`` steps (Alom et al., Eq. 1-2).

    ``x(0) = f(w_f * x)``, ``x(k) = f(w_f * x + w_r * x(k-1))`` for ``k = 1..t``, ``f`` = norm + ReLU; the
    feed-forward term is computed once. Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        t: Recurrent steps (paper: 2).
        norm: Normalisation (paper: batch norm), shared across the steps.
    """

    def __init__(self, spatial_dims: int, channels: int, t: int = 2, norm: NormSpec = "batch") -> None:
        super().__init__()
        self.t = t
        self.feedforward = make_conv(spatial_dims, channels, channels, 3)
        self.recurrent = make_conv(spatial_dims, channels, channels, 3, bias=False)
        self.norm = make_norm(norm, spatial_dims, channels) or nn.Identity()
        self.act = make_act("relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the unfolded recurrence on ``x``."""
        ff = self.feedforward(x)
        state = self.act(self.norm(ff))
        for _ in range(self.t):
            state = self.act(self.norm(ff + self.recurrent(state)))
        return state


class RecurrentResidualUnit(nn.Module):
    """Recurrent residual convolutional unit (RRCU, Alom et al., Fig. 4d): ``y = x' + RCL(RCL(x'))``.

    ``x'`` is the input mapped to ``C_out`` channels by a 1x1 convolution. Shapes: ``(B, C_in, *spatial)`` to
    ``(B, C_out, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        t: Recurrent steps of each RCL.
        norm: Normalisation of the RCLs.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, t: int = 2,
                 norm: NormSpec = "batch") -> None:
        super().__init__()
        self.project = make_conv(spatial_dims, in_channels, out_channels, 1)
        self.rcls = nn.Sequential(RecurrentConv(spatial_dims, out_channels, t, norm),
                                  RecurrentConv(spatial_dims, out_channels, t, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` to ``C_out`` channels and add the recurrent path."""
        x = self.project(x)
        return x + self.rcls(x)


@register_model(
    "r2unet",
    family="recurrent",
    spatial_dims=(2, 3),
    paper_title="Recurrent Residual Convolutional Neural Network based on U-Net (R2U-Net) for Medical Image "
                "Segmentation",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        kwargs={"features": (16, 32, 64, 128), "t": 2},
        params=None,
        source="arXiv:1802.06955, Section III (Eq. 1-3, Fig. 3-4) and Section IV (1->16->32->64->128 feature maps, "
               "t=2); the tables' parameter counts were not verified",
    ),
    divisor=8,
    test_kwargs={"features": (4, 8, 8, 16)},
)
class R2UNet(SegmentationModel):
    """R2U-Net of Alom et al. (2018), 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of
    ``2**(len(features) - 1)`` (8 by default).

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Output channels.
        features: Channels per level (paper: 16, 32, 64, 128).
        t: Recurrent steps of every RCL (paper: 2).
        norm: Normalisation inside the RCLs (paper: batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features: Sequence[int] = (16, 32, 64, 128),
        t: int = 2,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        features = tuple(int(f) for f in features)
        if len(features) < 2:
            raise ModelError(f"{self.model_name}: features needs at least 2 levels, got {features}")
        if t < 0:
            raise ModelError(f"{self.model_name}: t must be >= 0, got {t}")
        self.pool = make_pool("max", spatial_dims, 2)
        self.encoder = nn.ModuleList(
            RecurrentResidualUnit(spatial_dims, in_channels if i == 0 else features[i - 1], f, t, norm)
            for i, f in enumerate(features)
        )
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(len(features) - 2, -1, -1):
            self.ups.append(make_transposed_conv(spatial_dims, features[level + 1], features[level], 2))
            self.decoder.append(RecurrentResidualUnit(spatial_dims, 2 * features[level], features[level], t, norm))
        self.head = make_conv(spatial_dims, features[0], out_channels, 1)
        self.input_divisor = (2 ** (len(features) - 1),) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        skips = []
        for i, unit in enumerate(self.encoder):
            x = unit(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, unit in zip(self.ups, self.decoder, strict=True):
            x = unit(torch.cat((skips.pop(), up(x)), dim=1))
        return self.head(x)
