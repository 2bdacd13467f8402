"""nnU-Net's residual-encoder U-Net (the ``nnUNetResEncUNet`` M/L/XL presets).

Paper: F. Isensee, T. Wald, C. Ulrich, M. Baumgartner, S. Roy, K. Maier-Hein, P. F. Jaeger, "nnU-Net Revisited: A
Call for Rigorous Validation in 3D Medical Image Segmentation", MICCAI 2024 (arXiv:2404.09556).

The network is nnU-Net's ``ResidualEncoderUNet`` (dynamic_network_architectures) as the ResEnc planners configure
it:

* a stem: one conv-instance norm-LeakyReLU block from the input to ``features[0]`` channels (stride 1);
* encoder stage ``s``: ``n_blocks_per_stage[s]`` residual blocks (:class:`~medseg.models.blocks.ResidualBlockD`,
  ResNet-D skips), the first carrying the stage's stride; the presets use 1, 3, 4, 6, 6, 6, ... blocks;
* the same decoder as the plain nnU-Net (:class:`~medseg.models.nnunet.dynamic_unet.NNUNetDecoder`) with one conv
  block per decoder stage.

M, L and XL are planner presets, not different architectures: they differ only in the GPU-memory target of the
planner (about 8, 24 and 40 GB), which changes the patch size and hence the number of stages, kernel sizes and
strides passed here. The plan therefore stays an argument; the default is the 6-stage 3D topology.

Neither the paper nor nnU-Net's documentation gives parameter counts (they report VRAM and run time), so the
registry records ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ActSpec, ConvNormAct, NormSpec, ResidualBlockD
from medseg.models.nnunet.dynamic_unet import NNUNET_ACT, NNUNET_NORM, IntOrSeq, NNUNetDecoder, resolve_plan
from medseg.models.registry import PaperConfig, register_model

__all__ = ["RESENC_BLOCKS_PER_STAGE", "ResidualEncoderUNet"]

#: Residual blocks per encoder stage in nnU-Net's ResEnc presets (truncated to the number of stages).
RESENC_BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6)


@register_model(
    "nnunet_resenc",
    family="nnunet",
    spatial_dims=(2, 3),
    paper_title="nnU-Net Revisited: A Call for Rigorous Validation in 3D Medical Image Segmentation",
    paper_year=2024,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        kwargs={"kernel_sizes": [3] * 6, "strides": [1, 2, 2, 2, 2, 2]},
        params=None,
        source="MICCAI 2024 / arXiv:2404.09556 and nnU-Net's documentation/resenc_presets.md (VRAM and run time "
        "only; no parameter count)",
    ),
    divisor={2: 64, 3: 32},
    deep_supervision=True,
    test_kwargs={"kernel_sizes": [3, 3, 3], "strides": [1, 2, 2], "features_per_stage": [4, 8, 16]},
)
class ResidualEncoderUNet(SegmentationModel):
    """nnU-Net's residual-encoder U-Net (ResEnc presets; Isensee et al., MICCAI 2024).

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size must be a multiple
    of the product of the strides along that axis (:attr:`input_divisor`). With ``deep_supervision=True`` and in
    training mode, forward returns one output per decoder stage, highest resolution first:
    ``(B, out_channels, *spatial / prod(strides[: s + 1]))`` for ``s = 0 .. n_stages - 2``; in eval mode only the
    full-resolution tensor.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_sizes: Kernel size per stage; default 3 everywhere.
        strides: Stride per stage; default 6 stages in 3D, 7 in 2D, all 2 after the first.
        features_per_stage: Channels per stage; default ``min(base_features * 2**s, max_features)``.
        n_blocks_per_stage: Residual blocks per stage; default the presets' 1, 3, 4, 6, 6, 6, ...
        n_conv_per_stage_decoder: Conv blocks per decoder stage (presets: 1).
        deep_supervision: Return one output per decoder stage in training mode.
        base_features: Channels of the first stage (32).
        max_features: Channel cap (``None``: 320 in 3D, 512 in 2D).
        conv_bias: Bias in the main-path convolutions (nnU-Net's plans: ``True``).
        norm: Normalisation (instance norm, eps 1e-5, affine).
        act: Activation (LeakyReLU 0.01).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        kernel_sizes: Sequence[IntOrSeq] | None = None,
        strides: Sequence[IntOrSeq] | None = None,
        features_per_stage: Sequence[int] | None = None,
        n_blocks_per_stage: Sequence[int] | None = None,
        n_conv_per_stage_decoder: int | Sequence[int] = 1,
        deep_supervision: bool = False,
        base_features: int = 32,
        max_features: int | None = None,
        conv_bias: bool = True,
        norm: NormSpec = NNUNET_NORM,
        act: ActSpec = NNUNET_ACT,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        ks, st, features = resolve_plan(self.model_name, spatial_dims, kernel_sizes, strides, features_per_stage,
                                        base_features, max_features)
        n = len(st)
        if n_blocks_per_stage is None:
            if n > len(RESENC_BLOCKS_PER_STAGE):
                raise ModelError(f"{self.model_name}: give n_blocks_per_stage for more than "
                                 f"{len(RESENC_BLOCKS_PER_STAGE)} stages")
            blocks = list(RESENC_BLOCKS_PER_STAGE[:n])
        else:
            blocks = [int(b) for b in n_blocks_per_stage]
        if len(blocks) != n or min(blocks) < 1:
            raise ModelError(f"{self.model_name}: n_blocks_per_stage needs {n} positive entries, got {blocks}")
        self.kernel_sizes, self.strides, self.features_per_stage = ks, st, features
        self.n_blocks_per_stage = blocks
        self.deep_supervision = deep_supervision
        self.stem = ConvNormAct(spatial_dims, in_channels, features[0], ks[0], 1, bias=conv_bias, norm=norm, act=act)
        self.encoder = nn.ModuleList()
        channels = features[0]
        for s in range(n):
            self.encoder.append(nn.Sequential(*[
                ResidualBlockD(spatial_dims, channels if b == 0 else features[s], features[s], ks[s],
                               st[s] if b == 0 else 1, bias=conv_bias, norm=norm, act=act)
                for b in range(blocks[s])
            ]))
            channels = features[s]
        self.decoder = NNUNetDecoder(spatial_dims, out_channels, features, ks, st, n_conv_per_stage_decoder,
                                     deep_supervision, conv_bias, norm, act)
        cumulative = [tuple(1 for _ in range(spatial_dims))]
        for s in st:
            cumulative.append(tuple(c * si for c, si in zip(cumulative[-1], s, strict=True)))
        self.input_divisor = cumulative[-1]
        if deep_supervision:
            self.deep_supervision_scales = cumulative[1:n]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``; see the class docstring for the outputs."""
        self.check_input(x)
        x = self.stem(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        return self.decoder(skips)
