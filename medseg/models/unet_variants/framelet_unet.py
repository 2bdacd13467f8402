"""Framing U-Net: the tight-frame U-Net of deep convolutional framelets, Haar wavelet pooling with high-pass bypass.

Paper: Y. Han, J. C. Ye, "Framing U-Net via Deep Convolutional Framelets: Application to Sparse-view CT", IEEE
Transactions on Medical Imaging 37(6), 1418-1429, 2018 (arXiv:1708.08333), Section III (tight frame U-Net, Fig. 7(c)
/ Fig. 8); theory in J. C. Ye, Y. Han, E. Cha, "Deep Convolutional Framelets", SIAM J. Imaging Sci. 2018
(arXiv:1707.00372). Official code: github.com/hanyoseob/framing-u-net (MatConvNet): its custom layers ``WaveDec``
and ``WaveRec`` are the orthonormal Haar analysis and synthesis filters (``[0.7071, 0.7071]`` low pass,
``[-0.7071, 0.7071]`` high pass, one layer per sub-band); the network definitions themselves are distributed only as
trained ``.mat`` files, which are not in the repository.

U-Net pooling discards the high frequencies, so the U-Net's non-local basis does not satisfy the frame condition
and the decoder cannot recover edges; the tight frame U-Net replaces max pooling by the Haar wavelet decomposition,
which is a tight frame (perfect reconstruction). Layout:

* stage ``i``: two 3x3 conv + batch norm + ReLU (64, 128, 256, 512 channels; the bottom stage 1024 then back to
  512, so that it returns the width of the stage above);
* pooling: Haar decomposition of each stage output (:class:`HaarWavelet`): the low-pass band (LL) goes down to the
  next stage; the high-pass bands (LH, HL, HH in 2D; seven bands in 3D) bypass to the decoder;
* unpooling: the Haar synthesis of every band separately, i.e. of the decoder output below (in the LL position)
  and of each bypassed high-pass band, concatenated with the stage's skip: ``(2**d + 1) * C`` channels
  (5C in 2D), followed by two 3x3 conv + BN + ReLU (to C, then to the width of the stage above);
* a 1x1 convolution to the classes. The paper's network regresses the artefact (residual learning, output added to
  the input image) with one output channel; as a segmentation network it outputs class logits instead.

Which configuration reproduces the paper: ``spatial_dims=2, in_channels=1, out_channels=1`` with the default widths
64-1024 (4 wavelet decompositions), input 512x512 CT slices. The paper gives no parameter count that we could read
and the official repository holds no network definition, so the registry records ``None``; we count 31,386,689 at
that configuration.

3D: the separable 3D Haar transform (8 sub-bands). Planned topology: ``features_per_stage`` and ``strides`` with
strides 1 or 2 per axis (the Haar transform runs along the axes with stride 2 only; an axis with stride 1 is not
transformed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormSpec, StackedConvNormAct, make_conv
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["FrameletUNet", "HaarWavelet"]

_SQRT1_2 = 1.0 / math.sqrt(2.0)


class HaarWavelet(nn.Module):
    """Orthonormal separable Haar analysis and per-band synthesis along chosen axes (a tight frame).

    Per transformed axis the analysis pair is ``L = (a + b) / sqrt(2)``, ``H = (b - a) / sqrt(2)`` of each even/odd
    sample pair ``(a, b)`` (MatConvNet ``WaveDec`` filters), the synthesis its transpose. With ``k`` transformed axes
    there are ``2**k`` bands, band ``0`` the all-low-pass one; band ``j`` is high-pass along the ``m``-th transformed
    axis when bit ``m`` of ``j`` is set. Summing :meth:`synthesize` over all bands of :meth:`analyze` gives the input
    back exactly.

    Shapes: :meth:`analyze` maps ``(B, C, *spatial)`` to ``2**k`` tensors ``(B, C, *spatial / stride)``;
    :meth:`synthesize` maps one band back to ``(B, C, *spatial)``.

    Args:
        stride: Per spatial axis 2 (transformed) or 1 (left as is).
    """

    def __init__(self, stride: Sequence[int]) -> None:
        super().__init__()
        self.stride = tuple(int(s) for s in stride)
        self.axes = tuple(i for i, s in enumerate(self.stride) if s == 2)

    @property
    def n_bands(self) -> int:
        """Number of sub-bands: ``2**k`` for ``k`` transformed axes."""
        return 2 ** len(self.axes)

    def analyze(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Decompose ``x`` into its ``2**k`` sub-bands, band 0 the low-pass one."""
        bands = [x]
        for axis in self.axes:
            dim = axis + 2
            split = []
            for band in bands:
                a, b = band.unflatten(dim, (-1, 2)).unbind(dim + 1)
                split.extend(((a + b) * _SQRT1_2, (b - a) * _SQRT1_2))
            bands = split
        # reorder so that bit m of the band index is the m-th axis (the loop above made the last axis the lowest bit)
        k = len(self.axes)
        return [bands[int(format(j, f"0{k}b")[::-1], 2) if k else 0] for j in range(len(bands))]

    def synthesize(self, band: torch.Tensor, index: int) -> torch.Tensor:
        """Synthesis of one sub-band alone: ``band`` placed at ``index``, all other bands zero."""
        x = band
        for m, axis in enumerate(self.axes):
            dim = axis + 2
            first = -x if (index >> m) & 1 else x  # high pass: (-h, h) / sqrt(2); low pass: (l, l) / sqrt(2)
            x = torch.stack((first * _SQRT1_2, x * _SQRT1_2), dim=dim + 1).flatten(dim, dim + 1)
        return x


@register_model(
    "framelet_unet",
    family="unet_variants",
    spatial_dims=(2, 3),
    paper_title="Framing U-Net via Deep Convolutional Framelets: Application to Sparse-view CT",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        kwargs={},
        params=None,
        source="IEEE TMI 37(6) 2018 (arXiv:1708.08333), Section III, tight frame U-Net (Fig. 7c/8); no parameter "
               "figure read, and github.com/hanyoseob/framing-u-net ships only the Haar layers, not the network "
               "definition; built from the paper text",
    ),
    divisor=16,
    test_kwargs={2: {"features_per_stage": (4, 8, 16, 16)}, 3: {"features_per_stage": (4, 8, 8)}},
)
class FrameletUNet(SegmentationModel):
    """Tight-frame U-Net of Han & Ye (IEEE TMI 2018): Haar wavelet pooling/unpooling with a high-pass bypass.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    total stride (16 by default, :attr:`input_divisor`).

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Output channels (classes).
        features_per_stage: Channels per stage (paper: 64, 128, 256, 512, 1024).
        strides: Downsampling into each stage (plans format), 1 or 2 per axis; default 2 after the first stage.
        norm: Normalisation (paper: batch norm).
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
        topo = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides,
                                (64, 128, 256, 512, 1024), allowed_strides=(1, 2))
        f, n = topo.features, topo.n_stages
        kw = {"norm": norm, "act": ("relu", {"inplace": True})}
        self.topology = topo
        self.wavelets = nn.ModuleList(HaarWavelet(s) for s in topo.strides[1:])
        self.encoder = nn.ModuleList()
        for i in range(n - 1):
            self.encoder.append(StackedConvNormAct(2, spatial_dims, in_channels if i == 0 else f[i - 1], f[i], 3, **kw))
        self.bottom = nn.Sequential(
            StackedConvNormAct(1, spatial_dims, f[-2], f[-1], 3, **kw),
            StackedConvNormAct(1, spatial_dims, f[-1], f[-2], 3, **kw),
        )
        self.decoder = nn.ModuleList()
        for i in range(n - 2, -1, -1):
            bands = self.wavelets[i].n_bands
            out = f[i - 1] if i > 0 else f[0]
            self.decoder.append(nn.Sequential(
                StackedConvNormAct(1, spatial_dims, (bands + 1) * f[i], f[i], 3, **kw),
                StackedConvNormAct(1, spatial_dims, f[i], out, 3, **kw),
            ))
        self.head = make_conv(spatial_dims, f[0], out_channels, 1)
        self.input_divisor = topo.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``."""
        self.check_input(x)
        skips: list[torch.Tensor] = []
        highs: list[list[torch.Tensor]] = []
        h = x
        for block, wavelet in zip(self.encoder, self.wavelets, strict=True):
            h = block(h)
            skips.append(h)
            low, *high = wavelet.analyze(h)
            highs.append(high)
            h = low
        h = self.bottom(h)
        for block in self.decoder:
            wavelet = self.wavelets[len(skips) - 1]
            high = highs.pop()
            parts = [wavelet.synthesize(h, 0)]
            parts.extend(wavelet.synthesize(band, j + 1) for j, band in enumerate(high))
            parts.append(skips.pop())
            h = block(torch.cat(parts, dim=1))
        return self.head(h)
