"""PBR-UNet: probability-map-guided bi-directional recurrent U-Net over the slices of a volume (Li et al., 2019).

Paper: J. Li, X. Lin, H. Che, H. Li, X. Qian, "Probability Map Guided Bi-directional Recurrent UNet for Pancreas
Segmentation", arXiv:1903.00923 (2019); journal version "Pancreas segmentation with probabilistic map guided
bi-directional recurrent UNet", Physics in Medicine & Biology 66(11), 2021 (abstracts, Section 2 and Fig. 1-3).

Layout: a volume is a sequence of 2D slices. An *initial estimation module* (a 2D U-Net) gives a pixel-wise
probability map ``P0_t`` for every slice. The *primary segmentation module* (a second 2D U-Net) segments slice
``t`` from "hybrid data": the image slice concatenated with the probability maps of the adjacent slices ``t - 1``
and ``t + 1``, a local 3D context at 2D cost. The "bi-directional recurrent optimisation" then updates this hybrid
information along the sequence in both directions: a forward pass over ``t = 1 .. D`` replaces the previous
slice's map by its refined map ``Pf_(t-1)``; a backward pass over ``t = D .. 1`` uses ``Pf_(t-1)`` and the
backward-refined ``Pb_(t+1)``, and its logits are the output. The recurrent state is the refined probability map
handed from slice to slice; at the ends of the sequence the missing neighbour is the slice's own initial estimate.

How it fits the ``(B, C, *spatial)`` contract: with ``spatial_dims=3`` the input ``(B, C, D, H, W)`` is read as
``D`` slices along the first spatial axis (the transposed plans put the lowest-resolution axis first); with
``spatial_dims=2`` the input is a single slice (a sequence of length one, whose neighbours are its own estimate).
Both U-Nets are 2D: two 3x3 convolutions + BN + ReLU per level, 2x2 max pooling, 2x2 transposed convolutions,
concatenated skips (the standard U-Net the paper builds on); probabilities are softmaxes over the classes.
``features_per_stage`` and ``strides`` can be planned; in 3D the slice axis is never pooled (the in-plane part of
each planned stride is used).

We write our own implementation from the papers' text. The paper states no parameter count we could read and no
code was released, so the registry records ``None``; we count 62,087,172 parameters at 3D (slices), one CT
channel, 2 classes, widths 64 ... 1024.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.blocks import (
    NormSpec,
    StackedConvNormAct,
    as_tuple,
    make_conv,
    make_pool,
    make_transposed_conv,
)
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["BiRNNUNet", "SliceUNet"]

RELU = ("relu", {"inplace": True})


class SliceUNet(nn.Module):
    """A plain 2D U-Net applied slice by slice (the estimation and segmentation modules of PBR-UNet).

    Shapes: ``(N, C_in, H, W)`` to ``(N, C_out, H, W)``.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        features: Width of each level.
        pools: In-plane pooling into levels ``1..L``.
        norm: Normalisation.
    """

    def __init__(self, in_channels: int, out_channels: int, features: Sequence[int],
                 pools: Sequence[tuple[int, ...]], norm: NormSpec) -> None:
        super().__init__()
        kw = {"norm": norm, "act": RELU}
        n = len(features)
        self.encoder = nn.ModuleList(StackedConvNormAct(2, 2, in_channels if i == 0 else features[i - 1],
                                                        features[i], 3, **kw) for i in range(n))
        self.pools = nn.ModuleList(make_pool("max", 2, p) for p in pools)
        self.ups = nn.ModuleList(make_transposed_conv(2, features[i + 1], features[i], pools[i])
                                 for i in range(n - 2, -1, -1))
        self.decoder = nn.ModuleList(StackedConvNormAct(2, 2, 2 * features[i], features[i], 3, **kw)
                                     for i in range(n - 2, -1, -1))
        self.head = make_conv(2, features[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch of slices."""
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pools[i - 1](x))
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.ups, self.decoder, strict=True):
            x = block(torch.cat((skips.pop(), up(x)), dim=1))
        return self.head(x)


@register_model(
    "birnn_unet",
    family="recurrent",
    spatial_dims=(2, 3),
    paper_title="Probability Map Guided Bi-directional Recurrent UNet for Pancreas Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        params=None,
        source="arXiv:1903.00923 and Phys. Med. Biol. 66(11) 2021 (initial estimation module, hybrid data of "
               "adjacent probability maps, bi-directional recurrent optimisation); no parameter figure we could "
               "read and no official code; built from the papers' text",
    ),
    divisor=16,
    test_kwargs={"features_per_stage": (4, 8, 16)},
)
class BiRNNUNet(SegmentationModel):
    """PBR-UNet of Li et al. (2019): slice-wise U-Nets refined by probability maps passed along the slices both ways.

    Shapes: ``(B, in_channels, D, H, W)`` (3D: ``D`` slices) or ``(B, in_channels, H, W)`` (2D: one slice) to the
    same with ``out_channels``; ``H`` and ``W`` multiples of the product of the in-plane strides (16 by default), any
    ``D``. :attr:`initial_estimate` holds the last forward's initial-estimation logits.

    Args:
        spatial_dims: 3 (a slice sequence, paper) or 2 (one slice).
        in_channels: Input channels.
        out_channels: Classes.
        features_per_stage: Width of each U-Net level (default 64 ... 1024).
        strides: Downsampling into each level (first entry 1); in 3D only the in-plane part is used.
        norm: Normalisation of the U-Nets (batch norm).
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
        in_plane = None if strides is None else [as_tuple(s, spatial_dims)[-2:] for s in strides]
        plan = resolve_stages(self.model_name, 2, features_per_stage, in_plane)
        features, pools, divisor = plan.features, plan.pools, plan.divisor
        self.estimator = SliceUNet(in_channels, out_channels, features, pools, norm)
        self.segmenter = SliceUNet(in_channels + 2 * out_channels, out_channels, features, pools, norm)
        self.input_divisor = divisor if spatial_dims == 2 else (1, *divisor)
        self.initial_estimate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` (a slice sequence in 3D, one slice in 2D)."""
        self.check_input(x)
        volume = x if self.spatial_dims == 3 else x.unsqueeze(2)
        b, c, d, h, w = volume.shape
        slices = volume.permute(0, 2, 1, 3, 4)  # (B, D, C, H, W)
        initial = self.estimator(slices.reshape(b * d, c, h, w)).view(b, d, -1, h, w)
        self.initial_estimate = initial.detach()
        p0 = torch.softmax(initial, dim=2)
        forward: list[torch.Tensor] = []
        for t in range(d):
            prev = forward[t - 1] if t > 0 else p0[:, t]
            nxt = p0[:, t + 1] if t + 1 < d else p0[:, t]
            forward.append(torch.softmax(self.segmenter(torch.cat((slices[:, t], prev, nxt), dim=1)), dim=1))
        logits: list[torch.Tensor] = [x.new_empty(0)] * d
        backward_next = p0[:, d - 1]
        for t in range(d - 1, -1, -1):
            prev = forward[t - 1] if t > 0 else p0[:, t]
            nxt = backward_next if t + 1 < d else p0[:, t]
            logits[t] = self.segmenter(torch.cat((slices[:, t], prev, nxt), dim=1))
            backward_next = torch.softmax(logits[t], dim=1)
        out = torch.stack(logits, dim=2)
        return out if self.spatial_dims == 3 else out.squeeze(2)
