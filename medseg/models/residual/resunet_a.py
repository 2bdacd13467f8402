"""ResUNet-a: residual U-Net with parallel atrous convolutions, PSP pooling and conditioned multitask heads.

Paper: F. I. Diakogiannis, F. Waldner, P. Caccetta, C. Wu, "ResUNet-a: a deep learning framework for semantic
segmentation of remotely sensed data", ISPRS Journal of Photogrammetry and Remote Sensing 162, 94-114, 2020
(arXiv:1904.00592), Section 3 (Fig. 1-4, Tables 1-2); official code: github.com/feevos/resuneta (MXNet/gluon,
``models/resunet_d6_causal_mtskcolor_ddist.py`` and ``resunet_d7_causal_mtskcolor_ddist.py``, the conditioned
multitasking models "d6 cmtsk" and "d7 cmtsk").

Layout (official code):

* a 1x1 convolution + batch norm + ReLU to ``base_features`` (32) channels;
* encoder stage ``i`` (``32 * 2**i`` channels): a ResBlock-a unit, i.e. the input plus the sum of parallel
  pre-activation residual branches (BN-ReLU-3x3 conv-BN-ReLU-3x3 conv), one per dilation rate
  (:class:`AtrousResidualUnit`); between stages a 3x3 convolution with stride 2 (no bias, no normalisation)
  doubles the channels;
* dilation rates per stage: d6 ``(1,3,15,31), (1,3,15,31), (1,3,15), (1,3,5), (1), (1)``; d7 the same with a
  seventh stage ``(1)``;
* bridge: PSP pooling (:class:`PSPPooling`: the input concatenated with 1x1 conv + BN of max pooling over 1, 2x2,
  4x4, ... equal sub-regions, broadcast back, then a 1x1 conv + BN; 4 scales in d6, 3 in d7) and ReLU;
* decoder step: nearest 2x upsampling, 1x1 conv + BN to half the stage width, ReLU, concatenation with the
  encoder stage, 1x1 conv + BN ("combine"), then a ResBlock-a unit with dilations (decoder, coarsest first)
  d6 ``(1,3,5), (1,3,15), (1,3,15,31) x3``; d7 ``(1), (1,3,15), (1,3,15,31) x4``;
* head: the first 1x1 features concatenated with the last decoder output, PSP pooling (4 scales) + ReLU, then
  the conditioned multitask heads: distance transform (from the concatenation: two 3x3 conv-BN-ReLU and a 1x1
  conv, softmax, or sigmoid for one class), boundaries (from the PSP output and the distance: 3x3 conv-BN-ReLU,
  1x1 conv, sigmoid), segmentation (from the PSP output, the boundaries and the distance: two 3x3 conv-BN-ReLU
  and a 1x1 conv) and colour reconstruction (1x1 conv of the concatenation to 3 channels, sigmoid: the input's
  HSV values).

The segmentation output is the network's output (logits; the code applies softmax). With ``multitask=True``, in
training mode, forward returns a tuple ``(segmentation, boundary, distance, colour)`` of logits (apply sigmoid to
boundary and colour and softmax/sigmoid to distance as the paper's Tanimoto losses expect; the network itself
conditions the boundary and segmentation heads on the activated distance and boundary maps, as in the code). The
colour head is built only with ``multitask=True`` (nothing else depends on it). These multitask outputs need their
own targets (boundaries, distance transform, HSV image), so ``medseg train`` (which builds the model without
``multitask``) trains the segmentation output only.

Which configuration reproduces the paper: ``variant="d6"`` or ``"d7"``, ``base_features=32``, ``multitask=True``,
2D, 5 input channels (ISPRS Potsdam RGB + IR + DSM as in the code's example), 6 classes. No parameter count is
given in the text we could read; the official code at these configurations has 58,037,781 (d6) and 184,537,873
(d7) trainable parameters, counted from the gluon layer definitions (batch-norm running statistics excluded); we
count the same numbers. The registry records d6.

Input sizes must be multiples of ``2**(n_stages - 1) * 2**(psp_depth - 1)`` (the bridge's PSP pooling splits the
coarsest map into up to ``2**(psp_depth - 1)`` equal parts per axis): 256 for both d6 and d7, the code's 256x256
patches. The design is dimension-agnostic; 3D uses the same layers in 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD, conv_nd
from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormSpec, make_conv, make_norm
from medseg.models.registry import PaperConfig, register_model

__all__ = ["AtrousResidualUnit", "PSPPooling", "ResUNetA"]

RELU = ("relu", {"inplace": False})

#: Dilation rates of the ResBlock-a units (encoder from the finest stage; decoder from the coarsest step) and the
#: bridge's PSP depth of the official d6 / d7 models.
VARIANTS: dict[str, dict[str, tuple]] = {
    "d6": {
        "encoder": ((1, 3, 15, 31), (1, 3, 15, 31), (1, 3, 15), (1, 3, 5), (1,), (1,)),
        "decoder": ((1, 3, 5), (1, 3, 15), (1, 3, 15, 31), (1, 3, 15, 31), (1, 3, 15, 31)),
        "psp_depth": (4,),
    },
    "d7": {
        "encoder": ((1, 3, 15, 31), (1, 3, 15, 31), (1, 3, 15), (1, 3, 5), (1,), (1,), (1,)),
        "decoder": ((1,), (1, 3, 15), (1, 3, 15, 31), (1, 3, 15, 31), (1, 3, 15, 31), (1, 3, 15, 31)),
        "psp_depth": (3,),
    },
}


class _PreActBranch(nn.Sequential):
    """Pre-activation residual branch: BN, ReLU, 3x3 conv (dilated, no bias), BN, ReLU, 3x3 conv (dilated, bias)."""

    def __init__(self, spatial_dims: int, channels: int, dilation: int, norm: NormSpec) -> None:
        super().__init__(
            make_norm(norm, spatial_dims, channels) or nn.Identity(),
            nn.ReLU(),
            conv_nd(spatial_dims, channels, channels, 3, dilation=dilation, bias=False),
            make_norm(norm, spatial_dims, channels) or nn.Identity(),
            nn.ReLU(),
            conv_nd(spatial_dims, channels, channels, 3, dilation=dilation, bias=True),
        )


class AtrousResidualUnit(nn.Module):
    """ResBlock-a: the input plus the sum of parallel pre-activation residual branches, one per dilation rate.

    ``y = x + sum_d F_d(x)`` with ``F_d`` = BN-ReLU-conv3x3(d)-BN-ReLU-conv3x3(d) (ResNet v2 block). One rate gives
    a plain pre-activation residual unit.

    Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        spatial_dims: 2 or 3.
        channels: C.
        dilations: Dilation rate of each branch.
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, channels: int, dilations: Sequence[int], norm: NormSpec = "batch") -> None:
        super().__init__()
        if not dilations:
            raise ModelError("AtrousResidualUnit needs at least one dilation rate")
        self.dilations = tuple(int(d) for d in dilations)
        self.branches = nn.ModuleList(_PreActBranch(spatial_dims, channels, d, norm) for d in self.dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add every branch's output to ``x``."""
        out = x
        for branch in self.branches:
            out = out + branch(x)
        return out


class PSPPooling(nn.Module):
    """ResUNet-a's PSP pooling: max pooling over ``1, 2, 4, ...`` equal sub-regions per axis, concatenated.

    Branch ``d`` (``d = 0 .. depth-1``) max-pools each of the ``2**d`` equal parts per axis, broadcasts the maxima
    back over their parts and applies a 1x1 conv + norm to ``out_channels // depth`` channels; the input and the
    branches are concatenated and a 1x1 conv + norm gives ``out_channels`` (no activation).

    Shapes: ``(B, C_in, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of
    ``2**(depth - 1)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: Output channels.
        depth: Number of pooling scales.
        norm: Normalisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, depth: int = 4,
                 norm: NormSpec = "batch") -> None:
        super().__init__()
        if depth < 1 or out_channels // depth < 1:
            raise ModelError(f"PSPPooling: depth must be in [1, {out_channels}], got {depth}")
        self.depth = depth
        branch = out_channels // depth
        self.convs = nn.ModuleList(
            ConvNormActD(spatial_dims, in_channels, branch, 1, norm=norm, act=None) for _ in range(depth)
        )
        self.fuse = ConvNormActD(spatial_dims, in_channels + depth * branch, out_channels, 1, norm=norm, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate ``x`` with its pooled context and fuse."""
        spatial = x.shape[2:]
        pool = nn.functional.adaptive_max_pool2d if x.dim() == 4 else nn.functional.adaptive_max_pool3d
        parts = [x]
        for d, conv in enumerate(self.convs):
            bins = 2**d
            if any(s % bins for s in spatial):
                raise ModelError(f"PSPPooling: spatial size {tuple(spatial)} is not divisible by {bins}")
            pooled = pool(x, (bins,) * len(spatial))
            parts.append(conv(nn.functional.interpolate(pooled, size=tuple(spatial), mode="nearest")))
        return self.fuse(torch.cat(parts, dim=1))


class _Combine(nn.Module):
    """Decoder step: nearest 2x upsampling + 1x1 conv + BN to ``C // 2``, ReLU, concat with the skip, 1x1 conv + BN."""

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, norm: NormSpec) -> None:
        super().__init__()
        self.up = ConvNormActD(spatial_dims, in_channels, channels // 2, 1, norm=norm, act=RELU)
        self.fuse = ConvNormActD(spatial_dims, channels // 2 + channels, channels, 1, norm=norm, act=None)

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``low`` to ``skip``'s grid and fuse the two."""
        up = self.up(nn.functional.interpolate(low, size=skip.shape[2:], mode="nearest"))
        return self.fuse(torch.cat((up, skip), dim=1))


def _head(spatial_dims: int, in_channels: int, width: int, out_channels: int, n_convs: int,
          norm: NormSpec) -> nn.Sequential:
    layers: list[nn.Module] = [
        ConvNormActD(spatial_dims, in_channels if i == 0 else width, width, 3, norm=norm, act=RELU)
        for i in range(n_convs)
    ]
    layers.append(make_conv(spatial_dims, width, out_channels, 1))
    return nn.Sequential(*layers)


@register_model(
    "resunet_a",
    family="residual",
    spatial_dims=(2, 3),
    paper_title="ResUNet-a: a deep learning framework for semantic segmentation of remotely sensed data",
    paper_year=2020,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=5,
        out_channels=6,
        kwargs={"variant": "d6", "multitask": True},
        params=58_037_781,
        source="ISPRS J. Photogramm. Remote Sens. 162 (2020), Section 3; count of the official code feevos/resuneta "
               "models/resunet_d6_causal_mtskcolor_ddist.py ResUNet_d6(32, 6), 5 input bands (trainable parameters; "
               "d7: 184,537,873)",
    ),
    divisor=256,
    deep_supervision=False,
    test_kwargs={
        2: {"base_features": 4, "encoder_dilations": ((1, 3), (1, 3), (1,)), "decoder_dilations": ((1, 3), (1, 3)),
            "psp_depth": 2, "head_psp_depth": 2},
        3: {"base_features": 4, "encoder_dilations": ((1, 2), (1,), (1,)), "decoder_dilations": ((1,), (1, 2)),
            "psp_depth": 2, "head_psp_depth": 2},
    },
)
class ResUNetA(SegmentationModel):
    """ResUNet-a (Diakogiannis et al., ISPRS J. 2020): atrous residual U-Net with PSP pooling and multitask heads.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` (segmentation logits); each spatial
    size a multiple of :attr:`input_divisor` (256 for d6 and d7). With ``multitask=True`` in training mode, forward
    returns ``(segmentation, boundary, distance, colour)`` logits, the colour one with 3 channels.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels (bands).
        out_channels: Classes.
        variant: ``"d6"`` or ``"d7"``: the official dilation schedules and bridge PSP depth.
        base_features: Width of the first stage (paper: 32); stage ``i`` has ``base_features * 2**i``.
        encoder_dilations: Dilation rates of each encoder stage's unit (overrides the variant's).
        decoder_dilations: Dilation rates of each decoder step's unit, coarsest first (overrides the variant's).
        psp_depth: Pooling scales of the bridge's PSP pooling (overrides the variant's).
        head_psp_depth: Pooling scales of the PSP pooling before the heads (code: 4).
        multitask: Build the colour head and return all four outputs in training mode.
        norm: Normalisation (paper: batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        variant: str = "d6",
        base_features: int = 32,
        encoder_dilations: Sequence[Sequence[int]] | None = None,
        decoder_dilations: Sequence[Sequence[int]] | None = None,
        psp_depth: int | None = None,
        head_psp_depth: int = 4,
        multitask: bool = False,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if variant not in VARIANTS:
            raise ModelError(f"{self.model_name}: variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        schedule = VARIANTS[variant]
        enc = tuple(tuple(d) for d in (encoder_dilations or schedule["encoder"]))
        dec = tuple(tuple(d) for d in (decoder_dilations or schedule["decoder"]))
        depth_psp = int(psp_depth if psp_depth is not None else schedule["psp_depth"][0])
        if len(enc) < 2 or len(dec) != len(enc) - 1:
            raise ModelError(f"{self.model_name}: needs at least 2 encoder stages and one decoder unit per step "
                             f"below the top, got {len(enc)} and {len(dec)}")
        b = int(base_features)
        widths = [b * 2**i for i in range(len(enc))]
        self.widths = tuple(widths)
        self.multitask = multitask
        self.first = ConvNormActD(spatial_dims, in_channels, b, 1, norm=norm, act=RELU)
        self.encoder = nn.ModuleList(AtrousResidualUnit(spatial_dims, w, d, norm) for w, d in zip(widths, enc,
                                                                                                    strict=True))
        self.downs = nn.ModuleList(conv_nd(spatial_dims, w, 2 * w, 3, stride=2, bias=False) for w in widths[:-1])
        self.bridge = PSPPooling(spatial_dims, widths[-1], widths[-1], depth_psp, norm)
        self.combines = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for j, dils in enumerate(dec):
            level = len(enc) - 2 - j
            self.combines.append(_Combine(spatial_dims, widths[level + 1], widths[level], norm))
            self.decoder.append(AtrousResidualUnit(spatial_dims, widths[level], dils, norm))
        self.head_psp = PSPPooling(spatial_dims, 2 * b, b, head_psp_depth, norm)
        self.distance_head = _head(spatial_dims, 2 * b, b, out_channels, 2, norm)
        self.boundary_head = _head(spatial_dims, b + out_channels, b, out_channels, 1, norm)
        self.segmentation_head = _head(spatial_dims, b + 2 * out_channels, b, out_channels, 2, norm)
        self.colour_head = make_conv(spatial_dims, 2 * b, 3, 1) if multitask else None
        divisor = max(2 ** (len(enc) - 1) * 2 ** (depth_psp - 1), 2 ** (head_psp_depth - 1))
        self.input_divisor = (divisor,) * spatial_dims

    def _distance_activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.out_channels == 1 else torch.softmax(logits, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``; see the class docstring for the outputs."""
        self.check_input(x)
        first = self.first(x)
        skips = []
        h = first
        for i, unit in enumerate(self.encoder):
            h = unit(h)
            if i < len(self.downs):
                skips.append(h)
                h = self.downs[i](h)
        h = torch.relu(self.bridge(h))
        for combine, unit in zip(self.combines, self.decoder, strict=True):
            h = unit(combine(h, skips.pop()))
        features = torch.cat((first, h), dim=1)
        context = torch.relu(self.head_psp(features))
        distance = self.distance_head(features)
        distance_act = self._distance_activation(distance)
        boundary = self.boundary_head(torch.cat((context, distance_act), dim=1))
        segmentation = self.segmentation_head(torch.cat((context, torch.sigmoid(boundary), distance_act), dim=1))
        if self.multitask and self.training and self.colour_head is not None:
            return segmentation, boundary, distance, self.colour_head(features)
        return segmentation
