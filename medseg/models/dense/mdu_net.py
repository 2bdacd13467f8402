"""MDU-Net: a U-Net with multi-scale dense connections in the encoder, the decoder and across them (Zhang et al.).

Paper: J. Zhang, Y. Jin, J. Xu, X. Xu, Y. Zhang, "MDU-Net: Multi-scale Densely Connected U-Net for biomedical image
segmentation", arXiv:1812.00352 (2018; Health Information Science and Systems, 2023), Section 3 (Fig. 1-4).

Layout: U-Net's five levels (64, 128, 256, 512, 1024 channels, two 3x3 conv-BN-ReLU per unit, 2x2 max pooling,
2x2 up-convolutions, a 1x1 output convolution) with three kinds of multi-scale dense connections, named by how many
levels feed a unit; the paper's chosen network is "encoder2-cross3-decoder2":

* encoder ``k``: the unit of level ``l`` convolves the concatenation of the outputs of the ``k`` previous encoder
  levels ``l-1, ..., l-k``, each max-pooled to level ``l`` ("feature maps from the previous levels are downsampled
  and concatenated");
* decoder ``k``: the unit of level ``l`` sees the up-convolved output of the decoder level ``l+1`` (U-Net's path)
  and the outputs of the decoder levels ``l+2, ..., l+k`` upsampled to level ``l``;
* cross ``k``: besides the encoder output of its own level (U-Net's skip), the decoder unit of level ``l`` sees the
  encoder outputs of the previous (finer, max-pooled) and - for ``k = 3`` - the next (coarser, upsampled) level.

Our reading where the text leaves details open: the extra (non-U-Net) connections resample without parameters -
max pooling down, (bi/tri)linear interpolation up - and are concatenated before the unit's first convolution; the
next-level cross connection is left out where it would repeat the decoder path (the bottleneck feeds the last
decoder unit already). The paper's weight quantization is a training method and is not part of this module. In 3D
every 2D operation has its 3D counterpart.

Paper configuration: 2D, RGB gland images (MICCAI 2015 GlaS), two classes, encoder2-cross3-decoder2. No parameter
figure in the paper and no official code was found; built from Section 3, so the registry records ``None``; we
count 40,333,314 parameters at that configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormSpec, StackedConvNormAct, make_conv, make_pool, make_transposed_conv
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["MDUNet"]

RELU = ("relu", {"inplace": True})


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


@register_model(
    "mdu_net",
    family="dense",
    spatial_dims=(2, 3),
    paper_title="MDU-Net: Multi-scale Densely Connected U-Net for biomedical image segmentation",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=3,
        out_channels=2,
        kwargs={"features_per_stage": (64, 128, 256, 512, 1024), "encoder_connections": 2, "cross_connections": 3,
                "decoder_connections": 2},
        params=None,
        source="arXiv:1812.00352, Section 3 and Fig. 1 (encoder2-cross3-decoder2 on GlaS); no parameter figure in "
               "the paper and no official code; built from Section 3",
    ),
    divisor=16,
    test_kwargs={2: {"features_per_stage": (4, 8, 8, 16, 16)}, 3: {"features_per_stage": (4, 4, 8, 8)}},
)
class MDUNet(SegmentationModel):
    """MDU-Net of Zhang et al. (2018): U-Net with multi-scale dense connections, 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    product of the strides (16 by default).

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Output channels (classes).
        features_per_stage: Channels per level (paper: U-Net's 64 ... 1024).
        strides: Pooling stride into each level (``strides[0]`` = 1), one int or one per axis; default 2.
        encoder_connections: Previous encoder levels feeding an encoder unit (1 = U-Net; paper: 2).
        cross_connections: Encoder levels feeding a decoder unit: 1 (U-Net's skip), 2 (also the finer level) or 3
            (also the coarser level; paper: 3).
        decoder_connections: Coarser decoder levels feeding a decoder unit (1 = U-Net; paper: 2).
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
        encoder_connections: int = 2,
        cross_connections: int = 3,
        decoder_connections: int = 2,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        plan = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides, features_per_stage, 2)
        if encoder_connections < 1 or decoder_connections < 1 or cross_connections not in (1, 2, 3):
            raise ModelError(f"{self.model_name}: encoder/decoder connections must be >= 1 and cross connections "
                             f"1, 2 or 3, got {encoder_connections}, {decoder_connections}, {cross_connections}")
        f, n = plan.features, len(plan)
        self.plan = plan
        self.enc_k, self.cross_k, self.dec_k = encoder_connections, cross_connections, decoder_connections
        kw = {"norm": norm, "act": RELU}
        self.encoder = nn.ModuleList()
        for lv in range(n):
            cin = in_channels if lv == 0 else sum(f[lv - k] for k in range(1, min(self.enc_k, lv) + 1))
            self.encoder.append(StackedConvNormAct(2, spatial_dims, cin, f[lv], 3, **kw))
        self.pools = nn.ModuleDict()
        for lv in range(1, n):
            for k in range(1, lv + 1):
                self.pools[f"{lv - k}_{lv}"] = make_pool("max", spatial_dims, plan.between(lv - k, lv))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for lv in range(n - 2, -1, -1):
            self.up.append(make_transposed_conv(spatial_dims, f[lv + 1], f[lv], plan.strides[lv + 1]))
            cin = f[lv] + sum(f[lv + k] for k in self._decoder_sources(lv)) + sum(f[j] for j in self._cross(lv))
            self.decoder.append(StackedConvNormAct(2, spatial_dims, cin, f[lv], 3, **kw))
        self.head = make_conv(spatial_dims, f[0], out_channels, 1)
        self.input_divisor = plan.divisor

    def _decoder_sources(self, level: int) -> list[int]:
        """Offsets ``k >= 2`` of the coarser decoder levels ``level + k`` feeding the unit of ``level``."""
        n = len(self.plan)
        return [k for k in range(2, self.dec_k + 1) if level + k <= n - 1]

    def _cross(self, level: int) -> list[int]:
        """Encoder levels feeding the decoder unit of ``level``."""
        n = len(self.plan)
        levels = [level]
        if self.cross_k >= 2 and level >= 1:
            levels.append(level - 1)
        if self.cross_k >= 3 and level + 1 < n - 1:
            levels.append(level + 1)
        return levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``; returns logits ``(B, out_channels, *spatial)``."""
        self.check_input(x)
        enc: list[torch.Tensor] = []
        for lv, unit in enumerate(self.encoder):
            if lv == 0:
                enc.append(unit(x))
                continue
            sources = [self.pools[f"{lv - k}_{lv}"](enc[lv - k]) for k in range(1, min(self.enc_k, lv) + 1)]
            enc.append(unit(torch.cat(sources, dim=1)))
        n = len(enc)
        dec: dict[int, torch.Tensor] = {n - 1: enc[-1]}
        for up, unit, lv in zip(self.up, self.decoder, range(n - 2, -1, -1), strict=True):
            size = enc[lv].shape[2:]
            parts = [up(dec[lv + 1])]
            parts += [_resize(dec[lv + k], size) for k in self._decoder_sources(lv)]
            for j in self._cross(lv):
                e = enc[j]
                parts.append(e if j == lv else self.pools[f"{j}_{lv}"](e) if j < lv else _resize(e, size))
            dec[lv] = unit(torch.cat(parts, dim=1))
        return self.head(dec[0])
