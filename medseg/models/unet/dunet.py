"""DUNet: a U-Net whose middle encoder and last decoder blocks use deformable convolutions (Jin et al., 2019).

Paper: Q. Jin, Z. Meng, T. D. Pham, Q. Chen, L. Wei, R. Su, "DUNet: A deformable network for retinal vessel
segmentation", Knowledge-Based Systems 178, 149-162 (2019) (arXiv:1811.01206), Section 3 and Fig. 3; authors' code:
github.com/RanSuLab/DUNet-retinal-vessel-detection (``models/deform_unet.py``, ``DUNetV1V2``, the ``deform_unet_v1``
experiment of ``pytorch_train.py``).

Layout (the authors' ``DUNetV1V2``): five resolution levels with 16, 32, 64, 128, 128 channels (U-Net's 64..512
divided by the code's ``downsize_nb_filters_factor = 4``; the bottleneck keeps the width of the level above, as in
U-Nets with bilinear upsampling). Each level is a double convolution (3x3 conv + batch norm + ReLU, twice) after 2x2
max pooling; encoder levels 1 and 2 use deformable convolutions (:class:`~medseg.models.deformable.DeformConv`,
bias-free, offsets from a 3x3 convolution initialised to zero), levels 0, 3 and 4 regular ones (with bias). The
decoder upsamples bilinearly (``align_corners=True``), concatenates the skip and runs a double convolution whose
output has the width of the next finer level (64, 32, 16, 16); its last two blocks (levels 1 and 0) are deformable.
The input image is concatenated to the last decoder features before the 1x1 output convolution (the paper: the
network sees the raw patch again at the end). In 3D the same layout uses trilinear upsampling and 3D deformable
convolutions (27 sampling points, 81 offset channels).

Differences from the authors' code: their deformable layer (a copy of a public ``DeformConv2d``) is called with
``padding=0`` but keeps the output size by clamping the sampling positions to the image, which shifts its regular
grid by one pixel and replicates the border; ours samples the centred 3x3 grid with zero padding as in Dai et al.
(the parameters are the same). The network returns logits; the authors apply a sigmoid (one output channel).

Paper configuration: 2D, one (grey, preprocessed) input channel, one output channel (the code's ``n_classes=1`` for
the ``deform_unet_v1`` experiment, sigmoid), 48x48 patches. The paper gives no parameter count; the authors'
``DUNetV1V2(n_channels=1, n_classes=1)`` has 883,442 parameters, which the registry records, and so do we.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, NormSpec, make_conv, make_pool
from medseg.models.deformable import DeformConvNormAct
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["DUNet"]


def _double_conv(spatial_dims: int, in_channels: int, out_channels: int, deformable: bool, norm: NormSpec
                 ) -> nn.Sequential:
    act = ("relu", {"inplace": True})
    if deformable:
        return nn.Sequential(
            DeformConvNormAct(spatial_dims, in_channels, out_channels, 3, bias=False, norm=norm, act=act),
            DeformConvNormAct(spatial_dims, out_channels, out_channels, 3, bias=False, norm=norm, act=act),
        )
    return nn.Sequential(
        ConvNormAct(spatial_dims, in_channels, out_channels, 3, norm=norm, act=act),
        ConvNormAct(spatial_dims, out_channels, out_channels, 3, norm=norm, act=act),
    )


def _resize_linear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return nn.functional.interpolate(x, size=tuple(size), mode=mode, align_corners=True)


@register_model(
    "dunet",
    family="unet",
    spatial_dims=(2, 3),
    paper_title="DUNet: A deformable network for retinal vessel segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        kwargs={"features_per_stage": (16, 32, 64, 128, 128)},
        params=883_442,
        source="authors' code github.com/RanSuLab/DUNet-retinal-vessel-detection, models/deform_unet.py "
               "DUNetV1V2(n_channels=1, n_classes=1) as trained by pytorch_train.py (deform_unet_v1); the paper "
               "(Knowledge-Based Systems 2019) states no parameter count",
    ),
    divisor=16,
    test_kwargs={2: {"features_per_stage": (4, 8, 8, 16, 16)},
                 3: {"features_per_stage": (4, 4, 8, 8), "deformable_encoder_levels": (1,),
                     "deformable_decoder_levels": (1,)}},
)
class DUNet(SegmentationModel):
    """DUNet (deformable U-Net) of Jin et al. (Knowledge-Based Systems 2019), 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    product of the strides (16 by default).

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Output channels (the paper: 1, sigmoid).
        features_per_stage: Channels per level, highest resolution first (paper: 16, 32, 64, 128, 128); decoder
            level ``l`` outputs ``features_per_stage[max(l - 1, 0)]`` channels.
        strides: Pooling stride into each level (``strides[0]`` = 1), one int or one per axis; default 2.
        deformable_encoder_levels: Encoder levels built from deformable convolutions (paper: 1 and 2).
        deformable_decoder_levels: Decoder levels built from deformable convolutions (paper: 1 and 0).
        norm: Normalisation (paper: batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features_per_stage: Sequence[int] = (16, 32, 64, 128, 128),
        strides: Sequence[int | Sequence[int]] | None = None,
        deformable_encoder_levels: Sequence[int] = (1, 2),
        deformable_decoder_levels: Sequence[int] = (0, 1),
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        plan = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides, features_per_stage, 3)
        f, n = plan.features, len(plan)
        bad = [lv for lv in (*deformable_encoder_levels, *deformable_decoder_levels) if not 0 <= lv < n - 1]
        if bad:
            raise ModelError(f"{self.model_name}: deformable levels must lie in 0..{n - 2} (the bottleneck is "
                             f"level {n - 1} and has no decoder block), got {bad}")
        self.plan = plan
        self.encoder = nn.ModuleList(
            _double_conv(spatial_dims, in_channels if lv == 0 else f[lv - 1], f[lv], lv in deformable_encoder_levels,
                         norm)
            for lv in range(n)
        )
        self.pools = nn.ModuleList([nn.Identity()] + [make_pool("max", spatial_dims, s) for s in plan.strides[1:]])
        # decoder[k] builds level n-2-k: input = upsampled coarser features + skip, output f[max(level - 1, 0)]
        self.decoder = nn.ModuleList()
        coarse = f[n - 1]
        for lv in range(n - 2, -1, -1):
            out = f[max(lv - 1, 0)]
            self.decoder.append(_double_conv(spatial_dims, coarse + f[lv], out, lv in deformable_decoder_levels, norm))
            coarse = out
        self.head = make_conv(spatial_dims, coarse + in_channels, out_channels, 1)
        self.input_divisor = plan.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``; returns logits ``(B, out_channels, *spatial)``."""
        self.check_input(x)
        skips = []
        h = x
        for pool, block in zip(self.pools, self.encoder, strict=True):
            h = block(pool(h))
            skips.append(h)
        h = skips.pop()
        for block in self.decoder:
            skip = skips.pop()
            h = block(torch.cat((skip, _resize_linear(h, skip.shape[2:])), dim=1))
        return self.head(torch.cat((x, h), dim=1))
