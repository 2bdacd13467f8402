"""nnU-Net's dynamic plain-convolution U-Net, built from a plan.

Paper: F. Isensee, P. F. Jaeger, S. A. A. Kohl, J. Petersen, K. H. Maier-Hein, "nnU-Net: a self-configuring method
for deep learning-based biomedical image segmentation", Nature Methods 18, 203-211 (2021).

The topology (number of stages, per-stage kernel sizes and strides) comes from nnU-Net's planner; this module
builds the network for a given plan, as nnU-Net's ``PlainConvUNet`` (dynamic_network_architectures) does:

* encoder stage ``s``: ``n_conv_per_stage`` blocks conv-instance norm (eps 1e-5, affine)-LeakyReLU(0.01); the first
  conv of the stage carries the stride (strided-conv downsampling, no pooling);
* features per stage ``min(32 * 2**s, 320)`` in 3D, capped at 512 in 2D;
* decoder stage: transposed conv (kernel = stride of the stage below) to the skip's features, concatenation with
  the skip, ``n_conv_per_stage_decoder`` conv blocks with the encoder stage's kernel size;
* a 1x1 conv segmentation head on every decoder stage (deep supervision) or only on the last one.

We write our own implementation rather than wrapping MONAI's ``DynUNet``: DynUNet's default blocks differ
(residual/"UnetBasicBlock" with a different conv-norm-act layout, its deep-supervision heads are upsampled to full
resolution and stacked) and we want the plan-to-layer mapping of nnU-Net itself.

Which configuration reproduces the paper: the paper's networks are plan-dependent (Fig. 2 and the Supplementary
Note give the configured topologies per dataset); the default here is the usual 3D full-resolution plan for a
128^3 patch with isotropic spacing (6 stages, 3x3x3 kernels, strides 1,2,2,2,2,2, features 32..320). The paper
gives no parameter count for any plan, so the registry records ``None``.

One deliberate difference from nnU-Net's code: nnU-Net always builds the auxiliary segmentation heads so that its
checkpoints load with and without deep supervision; here they exist only when ``deep_supervision=True`` (so every
parameter takes part in the forward pass). The full-resolution head is identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ActSpec, NormSpec, StackedConvNormAct, as_tuple, make_conv, make_transposed_conv
from medseg.models.registry import PaperConfig, register_model

__all__ = ["NNUNetDecoder", "PlainConvUNet", "default_plan", "resolve_plan"]

NNUNET_NORM: NormSpec = ("instance", {"eps": 1e-5, "affine": True})
NNUNET_ACT: ActSpec = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})

IntOrSeq = int | Sequence[int]


def default_plan(spatial_dims: int) -> tuple[list[int], list[int]]:
    """Default (kernel_sizes, strides): 6 stages in 3D (divisor 32), 7 stages in 2D (divisor 64), 3x3(x3) kernels."""
    n_stages = 6 if spatial_dims == 3 else 7
    return [3] * n_stages, [1] + [2] * (n_stages - 1)


def resolve_plan(
    name: str,
    spatial_dims: int,
    kernel_sizes: Sequence[IntOrSeq] | None,
    strides: Sequence[IntOrSeq] | None,
    features_per_stage: Sequence[int] | None,
    base_features: int,
    max_features: int | None,
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]], list[int]]:
    """Validate a plan and fill in the defaults; returns per-stage kernel sizes, strides and features."""
    if kernel_sizes is None and strides is None:
        kernel_sizes, strides = default_plan(spatial_dims)
    elif strides is None:
        strides = [1] + [2] * (len(kernel_sizes) - 1)  # type: ignore[arg-type]
    elif kernel_sizes is None:
        kernel_sizes = [3] * len(strides)
    if len(kernel_sizes) != len(strides) or len(strides) < 2:
        raise ModelError(f"{name}: kernel_sizes and strides need one entry per stage (at least 2 stages), got "
                         f"{len(kernel_sizes)} and {len(strides)}")
    try:
        ks = [as_tuple(k, spatial_dims) for k in kernel_sizes]
        st = [as_tuple(s, spatial_dims) for s in strides]
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{name}: each kernel size and stride must be an int or {spatial_dims} ints ({exc})") from None
    if any(k % 2 == 0 for kk in ks for k in kk) or any(s < 1 for ss in st for s in ss):
        raise ModelError(f"{name}: kernel sizes must be odd and strides positive, got {ks} and {st}")
    n = len(st)
    if features_per_stage is None:
        cap = max_features if max_features is not None else (320 if spatial_dims == 3 else 512)
        features = [min(base_features * 2**i, cap) for i in range(n)]
    else:
        features = [int(f) for f in features_per_stage]
        if len(features) != n:
            raise ModelError(f"{name}: features_per_stage needs {n} entries (one per stage), got {len(features)}")
    return ks, st, features


class NNUNetDecoder(nn.Module):
    """nnU-Net's U-Net decoder (transposed conv, concatenation, conv blocks, 1x1 segmentation heads).

    Input: the encoder's stage outputs, highest resolution first; stage ``s`` has ``features[s]`` channels.
    Output: ``(B, C_out, *spatial_0)`` or, with deep supervision, one output per decoder stage, highest resolution
    first: ``(B, C_out, *spatial_s)`` for ``s = 0 .. n_stages - 2``.

    Args:
        spatial_dims: 2 or 3.
        out_channels: C_out.
        features: Channels of each encoder stage.
        kernel_sizes: Kernel size of each encoder stage (the decoder stage at the same resolution reuses it).
        strides: Stride of each encoder stage.
        n_conv_per_stage: Conv blocks per decoder stage (one int or one per decoder stage, lowest resolution first).
        deep_supervision: Build a head on every decoder stage.
        conv_bias: Bias of convolutions and transposed convolutions.
        norm: Normalisation.
        act: Activation.
    """

    def __init__(
        self,
        spatial_dims: int,
        out_channels: int,
        features: Sequence[int],
        kernel_sizes: Sequence[tuple[int, ...]],
        strides: Sequence[tuple[int, ...]],
        n_conv_per_stage: int | Sequence[int],
        deep_supervision: bool,
        conv_bias: bool = True,
        norm: NormSpec = NNUNET_NORM,
        act: ActSpec = NNUNET_ACT,
    ) -> None:
        super().__init__()
        n = len(features)
        n_conv = [n_conv_per_stage] * (n - 1) if isinstance(n_conv_per_stage, int) else list(n_conv_per_stage)
        if len(n_conv) != n - 1:
            raise ModelError(f"decoder needs {n - 1} conv counts (one per decoder stage), got {len(n_conv)}")
        self.deep_supervision = deep_supervision
        self.transpconvs = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.seg_layers = nn.ModuleList()
        for i, s in enumerate(range(n - 1, 0, -1)):  # s: the encoder stage below, from the bottleneck upwards
            skip = s - 1
            self.transpconvs.append(
                make_transposed_conv(spatial_dims, features[s], features[skip], strides[s], bias=conv_bias)
            )
            self.stages.append(
                StackedConvNormAct(n_conv[i], spatial_dims, 2 * features[skip], features[skip], kernel_sizes[skip], 1,
                                   bias=conv_bias, norm=norm, act=act)
            )
            if deep_supervision or skip == 0:
                self.seg_layers.append(make_conv(spatial_dims, features[skip], out_channels, 1, bias=True))

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Decode the encoder outputs (highest resolution first); see the class docstring for the shapes."""
        x = skips[-1]
        outputs: list[torch.Tensor] = []
        n_dec = len(self.stages)
        for i in range(n_dec):
            x = self.transpconvs[i](x)
            x = self.stages[i](torch.cat((x, skips[-(i + 2)]), dim=1))
            if self.deep_supervision and self.training:
                outputs.append(self.seg_layers[i](x))
        if self.deep_supervision and self.training:
            return outputs[::-1]
        return self.seg_layers[-1](x)


@register_model(
    "nnunet",
    family="nnunet",
    spatial_dims=(2, 3),
    paper_title="nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation",
    paper_year=2021,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        kwargs={"kernel_sizes": [3] * 6, "strides": [1, 2, 2, 2, 2, 2]},
        params=None,
        source="Nature Methods 2021, Online Methods and Supplementary Note 2 (plans are dataset-dependent; "
        "no parameter count is given)",
    ),
    divisor={2: 64, 3: 32},
    deep_supervision=True,
    test_kwargs={"kernel_sizes": [3, 3, 3], "strides": [1, 2, 2], "features_per_stage": [4, 8, 16]},
)
class PlainConvUNet(SegmentationModel):
    """nnU-Net's plain-convolution U-Net built from a plan (Isensee et al., Nature Methods 2021).

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size must be a multiple
    of the product of the strides along that axis (:attr:`input_divisor`). With ``deep_supervision=True`` and in
    training mode, forward returns a list with one output per decoder stage, highest resolution first:
    ``(B, out_channels, *spatial / prod(strides[: s + 1]))`` for ``s = 0 .. n_stages - 2``; in eval mode it returns
    the full-resolution tensor only.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (modalities).
        out_channels: Output channels (classes including background).
        kernel_sizes: Kernel size per stage (an int or one per axis); default: 3 for every stage.
        strides: Stride per stage (an int or one per axis; the first is usually 1); default: 6 stages in 3D,
            7 in 2D, all 2 after the first.
        features_per_stage: Channels per stage; default ``min(base_features * 2**s, max_features)``.
        n_conv_per_stage: Conv blocks per encoder stage (one int or one per stage).
        n_conv_per_stage_decoder: Conv blocks per decoder stage (one int or one per decoder stage, lowest
            resolution first).
        deep_supervision: Return one output per decoder stage in training mode.
        base_features: Channels of the first stage (nnU-Net: 32).
        max_features: Channel cap (nnU-Net: 320 in 3D, 512 in 2D; ``None`` picks these).
        conv_bias: Bias in the convolutions (nnU-Net's plans: ``True``).
        norm: Normalisation (nnU-Net: instance norm, eps 1e-5, affine).
        act: Activation (nnU-Net: LeakyReLU, slope 0.01).
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
        n_conv_per_stage: int | Sequence[int] = 2,
        n_conv_per_stage_decoder: int | Sequence[int] = 2,
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
        n_conv = [n_conv_per_stage] * n if isinstance(n_conv_per_stage, int) else list(n_conv_per_stage)
        if len(n_conv) != n:
            raise ModelError(f"{self.model_name}: n_conv_per_stage needs {n} entries, got {len(n_conv)}")
        self.kernel_sizes, self.strides, self.features_per_stage = ks, st, features
        self.deep_supervision = deep_supervision
        self.encoder = nn.ModuleList()
        channels = in_channels
        for s in range(n):
            self.encoder.append(StackedConvNormAct(n_conv[s], spatial_dims, channels, features[s], ks[s], st[s],
                                                   bias=conv_bias, norm=norm, act=act))
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
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        return self.decoder(skips)
