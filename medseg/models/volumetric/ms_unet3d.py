"""Multi-scale supervised 3D U-Net, "MSS U-Net", for kidney and kidney-tumour CT (Zhao et al., 2019), 3D and 2D.

Papers: W. Zhao, Z. Zeng, "Multi Scale Supervised 3D U-Net for Kidney and Tumor Segmentation", KiTS19 challenge
submission (2019); journal version W. Zhao, D. Jiang, J. Peña Queralta, T. Westerlund, "MSS U-Net: 3D segmentation of
kidneys and tumors from CT images with a multi-scale supervised U-Net", Informatics in Medicine Unlocked 19, 100357
(2020), arXiv:2004.08108. Official code: wenshuaizhao/MSSU-Net (built on an early nnU-Net):
``network_architecture/generic_UNet.py`` (the network), ``training/loss_functions/dice_loss.py``
(``DC_and_CE_loss``: the multi-scale weights), ``base_preprocessed/Task11_KITS/nnUNetPlans_plans_3D.pkl`` (the plan).

Layout (the early nnU-Net ``Generic_UNet`` with convolutional pooling and up-sampling):

* Encoder: six stages of two conv-instance norm (eps 1e-5, affine)-LeakyReLU(0.01) blocks (convolutions with bias);
  30, 60, 120, 240, 320, 320 features (doubling from 30, capped at 320); stage ``s > 0`` starts with a strided
  convolution (no pooling).
* Decoder: per stage a bias-free transposed convolution (kernel = stride) to the skip's features, concatenation,
  and two conv blocks. As in that code, decoder stage ``u`` (counted from the bottleneck) uses the kernel size of
  encoder stage ``n - 1 - u``, i.e. the kernel of the stage one level below its own resolution.
* Multi-scale supervision: a bias-free 1x1x1 convolution on every decoder stage gives logits at five scales; the
  loss is the Dice + cross-entropy loss of each scale weighted **0.6** (full resolution) and **0.1** for each of the
  four lower resolutions (``dice_loss.py``: ``dc_loss_layers[0]*0.6 + dc_loss_layers[1]*0.1 + ...``). These are
  :attr:`loss_weights`; with another plan each extra output keeps the weight 0.1. The exponential logarithmic loss
  of the journal paper and the connected-component post-processing belong to the trainer and the post-processing.

Paper configuration (the KiTS19 full-resolution plan): 3D, one CT channel, three outputs (background, kidney,
tumour), 48x192x192 patches; kernels (1,3,3) for the first stage and 3x3x3 for the others; strides (1,2,2),
(1,2,2), then (2,2,2) three times (the code lists axes as (x, y, z) with the thin axis last; we write them as
(D, H, W)). Parameter figure: 29,642,540, counted with the official ``Generic_UNet`` at that plan (deep supervision
heads included); ours is the same. In 2D the default plan is six stages of 3x3 kernels with stride 2 (features
capped at 480, the code's 2D cap).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ActSpec, NormSpec, StackedConvNormAct, as_tuple, make_conv, make_transposed_conv
from medseg.models.registry import PaperConfig, register_model

__all__ = ["MultiScaleSupervisedUNet3D"]

NORM: NormSpec = ("instance", {"eps": 1e-5, "affine": True})
ACT: ActSpec = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
PAPER_KERNELS = ((1, 3, 3), 3, 3, 3, 3, 3)
PAPER_STRIDES = (1, (1, 2, 2), (1, 2, 2), 2, 2, 2)
MAIN_WEIGHT, AUX_WEIGHT = 0.6, 0.1


@register_model(
    "ms_unet3d",
    family="volumetric",
    spatial_dims=(2, 3),
    paper_title="Multi Scale Supervised 3D U-Net for Kidney and Tumor Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=3,
        kwargs={"deep_supervision": True},
        params=29_642_540,
        source="official code wenshuaizhao/MSSU-Net, network_architecture/generic_UNet.py at the KiTS19 3D "
               "full-resolution plan (base_preprocessed/Task11_KITS/nnUNetPlans_plans_3D.pkl, stage 1: base 30 "
               "features, pools [2,2,1],[2,2,1],[2,2,2]x3), counted with that code",
    ),
    divisor=32,
    deep_supervision=True,
    test_kwargs={"kernel_sizes": (3, 3, 3), "strides": (1, 2, 2), "base_features": 4},
)
class MultiScaleSupervisedUNet3D(SegmentationModel):
    """MSS U-Net (Zhao et al., 2019): nnU-Net-style 3D U-Net with loss-weighted supervision at every decoder scale.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    product of the strides along that axis (:attr:`input_divisor`; (8, 32, 32) for the paper's plan). With
    ``deep_supervision=True`` in training mode, forward returns one output per decoder stage, highest resolution first
    (``deep_supervision_scales``), weighted by :attr:`loss_weights` (0.6, 0.1, 0.1, 0.1, 0.1).

    Args:
        spatial_dims: 3 (paper) or 2.
        in_channels: Input channels (paper: 1).
        out_channels: Output channels (paper: 3).
        kernel_sizes: Kernel size per encoder stage (int or one per axis); default: the paper's plan in 3D.
        strides: Stride per encoder stage, the first 1; default: the paper's plan in 3D.
        base_features: Features of the first stage (paper: 30), doubled per stage.
        max_features: Feature cap (paper code: 320 in 3D, 480 in 2D; ``None`` picks these).
        deep_supervision: Return the outputs of every decoder stage in training.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        kernel_sizes: Sequence[int | Sequence[int]] | None = None,
        strides: Sequence[int | Sequence[int]] | None = None,
        base_features: int = 30,
        max_features: int | None = None,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if kernel_sizes is None:
            kernel_sizes = PAPER_KERNELS if spatial_dims == 3 else (3,) * 6
        if strides is None:
            strides = PAPER_STRIDES if spatial_dims == 3 else (1,) + (2,) * (len(kernel_sizes) - 1)
        try:
            ks = [as_tuple(k, spatial_dims) for k in kernel_sizes]
            st = [as_tuple(s, spatial_dims) for s in strides]
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{self.model_name}: kernel sizes and strides must be ints or {spatial_dims} ints "
                             f"({exc})") from None
        n = len(st)
        if len(ks) != n or n < 2 or any(s != 1 for s in st[0]):
            raise ModelError(f"{self.model_name}: one kernel size and one stride per stage (at least 2 stages, the "
                             f"first stride 1), got {len(ks)} and {n}")
        cap = max_features if max_features is not None else (320 if spatial_dims == 3 else 480)
        features = [min(base_features * 2**i, cap) for i in range(n)]
        self.features_per_stage = features
        self.encoder = nn.ModuleList()
        channels = in_channels
        for s in range(n):
            self.encoder.append(StackedConvNormAct(2, spatial_dims, channels, features[s], ks[s], st[s], norm=NORM,
                                                   act=ACT))
            channels = features[s]
        self.transpconvs = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        for u in range(n - 1):
            below, skip = n - 1 - u, n - 2 - u
            self.transpconvs.append(make_transposed_conv(spatial_dims, features[below], features[skip], st[below],
                                                         bias=False))
            self.decoder.append(StackedConvNormAct(2, spatial_dims, 2 * features[skip], features[skip], ks[below],
                                                   norm=NORM, act=ACT))
            if deep_supervision or skip == 0:
                self.heads.append(make_conv(spatial_dims, features[skip], out_channels, 1, bias=False))
        self.deep_supervision = deep_supervision
        cumulative = [(1,) * spatial_dims]
        for s in st[1:]:
            cumulative.append(tuple(c * si for c, si in zip(cumulative[-1], s, strict=True)))
        self.input_divisor = cumulative[-1]
        if deep_supervision:
            self.deep_supervision_scales = cumulative[: n - 1]
            self.loss_weights = (MAIN_WEIGHT,) + (AUX_WEIGHT,) * (n - 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, out_channels, *spatial)``; every decoder scale (full resolution first) with supervision."""
        self.check_input(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        outputs: list[torch.Tensor] = []
        want_all = self.deep_supervision and self.training
        for u, (up, stage) in enumerate(zip(self.transpconvs, self.decoder, strict=True)):
            x = stage(torch.cat([up(x), skips[-2 - u]], dim=1))
            if want_all:
                outputs.append(self.heads[u](x))
        if want_all:
            return outputs[::-1]
        return self.heads[-1](x)
