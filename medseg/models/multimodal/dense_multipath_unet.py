"""Dense multi-path U-Net: one encoder path per modality, hyper-dense connections across paths (Dolz et al., 2018).

Paper: J. Dolz, I. Ben Ayed, C. Desrosiers, "Dense Multi-path U-Net for Ischemic Stroke Lesion Segmentation in
Multiple Image Modalities", MICCAI BrainLes workshop (ISLES 2018), LNCS 11383 (2019) (arXiv:1810.07003), Section 2.
The same authors' IVD-Net (:mod:`medseg.models.multimodal.ivd_net`) is this design with factorised encoder modules;
its official code (github.com/josedolz/IVD-Net, ``IVD_Net.py``, ``Blocks.py``) fixes the layout both share.

Layout (Section 2 and the shared code): each input channel (image modality) has its own encoder path. Every level of a
path is a dilated inception module (:class:`DilatedInceptionModule`: a 3x3 conv-BN-ReLU, five parallel conv-BN-ReLU
branches - 1x1, 3x3, 5x5, 3x3 dilated 2, 3x3 dilated 4 -, a 1x1 merge of their concatenation, the merge plus the first
convolution's output, and a 3x3 conv-BN-ReLU: "inception modules extended with two convolutional blocks with dilated
convolutions of different scale"). The paths are densely connected "within each path and across different paths,
similar to HyperDenseNet": the input of level ``l + 1`` of path ``m`` is the concatenation of the max-pooled
level-``l`` outputs of all paths (path ``m`` first, then the others cyclically) and, from level 2 on, of the (pooled)
input of level ``l`` of path ``m``. The bottleneck module sees the same concatenation (path 0's order). The decoder is
a single path: a 3x3 transposed convolution (stride 2) + BN + ReLU halves the width, its output is averaged with the
``M`` encoder outputs of that level (a residual skip, ``(up + sum_m enc_m) / (M + 1)``) and refined by a module; a 3x3
convolution gives the logits. Widths ``32, 64, 128, 256`` per path and 512 in the bottleneck (``ngf = 32`` in the
authors' code). In 3D every 2D operation has its 3D counterpart.

The number of paths is ``in_channels``: one modality per input channel.

Differences from the shared code: the code passes the previous level's input to the next level by cropping its
centre (a leftover of HyperDenseNet's unpadded convolutions, which here feeds spatially misaligned features); we
max-pool it to the next resolution, which keeps the connection dense and aligned and has the same channels (no
parameters change).

Paper configuration: 2D, the five ISLES 2018 images (CT, CBF, CBV, MTT, Tmax) one per path, two classes,
``ngf = 32`` as in the authors' IVD-Net code. The paper gives no parameter count and no code for this network was
found, so the registry records ``None``; we count 82,175,874 parameters at that configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, NormSpec, make_act, make_conv, make_norm, make_pool
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["DilatedInceptionModule", "MultiPathDenseUNet"]

RELU = ("relu", {})
#: (kernel, dilation) of the five parallel branches of the dilated inception module
BRANCHES: tuple[tuple[int, int], ...] = ((1, 1), (3, 1), (5, 1), (3, 2), (3, 4))


def _branch(spatial_dims: int, channels: int, kernel: int, dilation: int, factorised: bool, norm: NormSpec
            ) -> nn.Module:
    """One conv-norm-ReLU branch, or (factorised) one per axis with a 1D kernel along that axis."""
    if not factorised:
        conv = Conv[Conv.CONV, spatial_dims](channels, channels, kernel_size=kernel, padding=dilation * (kernel // 2),
                                             dilation=dilation)
        return nn.Sequential(conv, make_norm(norm, spatial_dims, channels) or nn.Identity(), make_act(RELU))
    layers: list[nn.Module] = []
    for axis in range(spatial_dims):
        k = tuple(kernel if a == axis else 1 for a in range(spatial_dims))
        p = tuple(dilation * (kernel // 2) if a == axis else 0 for a in range(spatial_dims))
        d = tuple(dilation if a == axis else 1 for a in range(spatial_dims))
        layers += [Conv[Conv.CONV, spatial_dims](channels, channels, kernel_size=k, padding=p, dilation=d),
                   make_norm(norm, spatial_dims, channels) or nn.Identity(), make_act(RELU)]
    return nn.Sequential(*layers)


class DilatedInceptionModule(nn.Module):
    """Residual inception module with two dilated branches (Dolz et al., 2018), 2D or 3D.

    ``h = conv3(x)``; five branches on ``h`` (1x1, 3x3, 5x5, 3x3 dilation 2, 3x3 dilation 4, each conv-norm-ReLU,
    or with ``factorised=True`` each as a cascade of 1D convolutions ``k x 1``, ``1 x k`` (``1 x 1 x k``), IVD-Net's
    asymmetric form); ``m = conv1x1(concat(branches))``; output ``conv3(m + h)``. Every convolution has a bias and is
    followed by normalisation and ReLU.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out (the width of every branch).
        factorised: Factorise the branches into 1D convolutions per axis.
        norm: Normalisation (paper: batch norm).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, factorised: bool = False,
                 norm: NormSpec = "batch") -> None:
        super().__init__()
        kw = {"norm": norm, "act": RELU}
        self.conv_in = ConvNormAct(spatial_dims, in_channels, out_channels, 3, **kw)
        self.branches = nn.ModuleList(_branch(spatial_dims, out_channels, k, d, factorised, norm) for k, d in BRANCHES)
        self.merge = ConvNormAct(spatial_dims, len(BRANCHES) * out_channels, out_channels, 1, **kw)
        self.conv_out = ConvNormAct(spatial_dims, out_channels, out_channels, 3, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``."""
        h = self.conv_in(x)
        merged = self.merge(torch.cat([branch(h) for branch in self.branches], dim=1))
        return self.conv_out(merged + h)


@register_model(
    "dense_multipath_unet",
    family="multimodal",
    spatial_dims=(2, 3),
    paper_title="Dense Multi-path U-Net for Ischemic Stroke Lesion Segmentation in Multiple Image Modalities",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=5,
        out_channels=2,
        kwargs={"features_per_stage": (32, 64, 128, 256, 512)},
        params=None,
        source="BrainLes 2018 (arXiv:1810.07003), Section 2 (one path per ISLES 2018 image, hyper-dense connections, "
               "dilated inception modules); widths of the authors' IVD-Net code (ngf=32); no parameter figure in "
               "the paper and no code for this network",
    ),
    divisor=16,
    test_kwargs={2: {"features_per_stage": (4, 8, 8, 16)}, 3: {"features_per_stage": (2, 4, 4)}},
)
class MultiPathDenseUNet(SegmentationModel):
    """Dense multi-path U-Net of Dolz et al. (2018): one encoder path per input channel, 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    product of the strides (16 by default). Each input channel is one modality and gets its own encoder path.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Number of modalities (paths).
        out_channels: Output channels (classes).
        features_per_stage: Channels per level of each path, the last entry the bottleneck (paper code: 32, 64,
            128, 256 and 512).
        strides: Pooling stride into each level (``strides[0]`` = 1), one int or one per axis; default 2.
        factorised_encoder: Build the encoder and bottleneck modules from per-axis 1D convolutions (IVD-Net).
        norm: Normalisation (paper: batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features_per_stage: Sequence[int] = (32, 64, 128, 256, 512),
        strides: Sequence[int | Sequence[int]] | None = None,
        factorised_encoder: bool = False,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        plan = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides, features_per_stage, 2)
        f, n, paths = plan.features, len(plan), in_channels
        self.plan = plan
        self.paths = paths
        # level_in[l]: channels entering level l of a path (the bottleneck, level n-1, included)
        level_in = [1, paths * f[0]]
        for lv in range(2, n):
            level_in.append(paths * f[lv - 1] + level_in[lv - 1])
        self.encoder = nn.ModuleList(
            nn.ModuleList(DilatedInceptionModule(spatial_dims, level_in[lv], f[lv], factorised_encoder, norm)
                          for _ in range(paths))
            for lv in range(n - 1)
        )
        self.bottleneck = DilatedInceptionModule(spatial_dims, level_in[n - 1], f[n - 1], factorised_encoder, norm)
        self.pools = nn.ModuleList([nn.Identity()] + [make_pool("max", spatial_dims, s) for s in plan.strides[1:]])
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for lv in range(n - 2, -1, -1):
            s = plan.strides[lv + 1]
            transposed = Conv[Conv.CONVTRANS, spatial_dims](
                f[lv + 1], f[lv], kernel_size=3, stride=s, padding=1, output_padding=tuple(si - 1 for si in s))
            self.up.append(nn.Sequential(transposed, make_norm(norm, spatial_dims, f[lv]) or nn.Identity(),
                                         make_act(RELU)))
            self.decoder.append(DilatedInceptionModule(spatial_dims, f[lv], f[lv], False, norm))
        self.head = make_conv(spatial_dims, f[0], out_channels, 3)
        self.input_divisor = plan.divisor
        self.level_in_channels = tuple(level_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``; returns logits ``(B, out_channels, *spatial)``."""
        self.check_input(x)
        m = self.paths
        inputs = [x[:, i: i + 1] for i in range(m)]
        skips: list[list[torch.Tensor]] = []
        n = len(self.plan)
        for lv in range(n):
            if lv > 0:
                pool = self.pools[lv]
                pooled = [pool(t) for t in skips[-1]]
                previous = [pool(t) for t in inputs] if lv > 1 else []
                inputs = [torch.cat([*pooled[i:], *pooled[:i], *previous[i: i + 1]], dim=1) for i in range(m)]
            if lv < n - 1:
                skips.append([block(t) for block, t in zip(self.encoder[lv], inputs, strict=True)])
        h = self.bottleneck(inputs[0])
        for up, block in zip(self.up, self.decoder, strict=True):
            level = skips.pop()
            h = block((up(h) + sum(level)) / (m + 1))
        return self.head(h)

