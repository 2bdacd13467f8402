"""Bridged U-Net (W-Net): two U-Nets whose first decoder feeds, level by level, the second encoder (Chen et al.).

Paper: W. Chen, Y. Zhang, J. He, Y. Qiao, Y. Chen, H. Shi, X. Tang, "Prostate Segmentation using 2D Bridged U-net",
IJCNN 2019 (arXiv:1807.04459, first titled "W-net: Bridged U-net for 2D Medical Image Segmentation"), Sections 1-2.

Layout: two U-Nets in sequence, bridged: "we connect each decoder layer of the first Unet with the corresponding
encoder layer of the second Unet, which directly inputs the features of the previous layers into the latter
layers"; the bridges fuse by concatenation (the paper compares addition and concatenation and bridges with the
latter), and the network combines two activation functions ("a combination of different activation functions",
ELU and ReLU). Each U-Net has U-Net's five levels (64 ... 1024 channels), two 3x3 conv-BN-activation per unit, 2x2
max pooling and 2x2 up-convolutions.

Our reading where the text leaves details open: the second U-Net's first encoder unit takes the first U-Net's last
decoder features, and its encoder unit of every further level ``l`` takes the concatenation of its own pooled
features and the first decoder's output of level ``l`` (the bottleneck has no bridge: the first U-Net has no
decoder layer there); the first U-Net uses ELU and the second ReLU; a 1x1 convolution on the second decoder gives
the logits. The paper's new loss is a training choice and not part of this module. In 3D every 2D operation has
its 3D counterpart.

Paper configuration: 2D, one MR channel (PROMISE12 prostate), two classes. No parameter figure in the paper and no
official code was found; built from the text, so the registry records ``None``; we count 65,217,602 parameters at
that configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.blocks import ActSpec, NormSpec, StackedConvNormAct, make_conv, make_pool, make_transposed_conv
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import StagePlan, resolve_stages

__all__ = ["BridgedUNet"]


class _UNetHalf(nn.Module):
    """One U-Net: encoder units whose inputs may carry bridge channels, decoder with up-convolutions and skips."""

    def __init__(self, spatial_dims: int, in_channels: int, plan: StagePlan, bridge: Sequence[int], act: ActSpec,
                 norm: NormSpec) -> None:
        super().__init__()
        f, n = plan.features, len(plan)
        kw = {"norm": norm, "act": act}
        self.encoder = nn.ModuleList(
            StackedConvNormAct(2, spatial_dims, (in_channels if lv == 0 else f[lv - 1]) + bridge[lv], f[lv], 3, **kw)
            for lv in range(n)
        )
        self.pools = nn.ModuleList([nn.Identity()] + [make_pool("max", spatial_dims, s) for s in plan.strides[1:]])
        self.up = nn.ModuleList(make_transposed_conv(spatial_dims, f[lv + 1], f[lv], plan.strides[lv + 1])
                                for lv in range(n - 2, -1, -1))
        self.decoder = nn.ModuleList(StackedConvNormAct(2, spatial_dims, 2 * f[lv], f[lv], 3, **kw)
                                     for lv in range(n - 2, -1, -1))

    def forward(self, x: torch.Tensor, bridges: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """Return the decoder outputs per level, finest first; ``bridges[l]`` joins the encoder input of level l."""
        skips = []
        h = x
        for lv, (pool, unit) in enumerate(zip(self.pools, self.encoder, strict=True)):
            h = pool(h) if lv > 0 else h
            bridge = bridges[lv]
            if bridge is not None:
                h = torch.cat((h, bridge), dim=1)
            h = unit(h)
            skips.append(h)
        h = skips.pop()
        outs = []
        for up, unit in zip(self.up, self.decoder, strict=True):
            h = unit(torch.cat((skips.pop(), up(h)), dim=1))
            outs.append(h)
        return outs[::-1]


@register_model(
    "bridged_unet",
    family="unet",
    spatial_dims=(2, 3),
    paper_title="Prostate Segmentation using 2D Bridged U-net",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        kwargs={"features_per_stage": (64, 128, 256, 512, 1024)},
        params=None,
        source="IJCNN 2019 (arXiv:1807.04459), Sections 1-2 (bridging by concatenation, ELU + ReLU); no parameter "
               "figure in the paper and no official code; built from the text",
    ),
    divisor=16,
    test_kwargs={2: {"features_per_stage": (4, 8, 8, 16, 16)}, 3: {"features_per_stage": (4, 4, 8, 8)}},
)
class BridgedUNet(SegmentationModel):
    """Bridged U-Net of Chen et al. (2018): two U-Nets, decoder 1 bridged into encoder 2 level by level; 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    product of the strides (16 by default).

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Output channels (classes).
        features_per_stage: Channels per level of both U-Nets (U-Net's 64 ... 1024).
        strides: Pooling stride into each level (``strides[0]`` = 1), one int or one per axis; default 2.
        activations: Activations of the first and of the second U-Net (our reading of the paper: ELU, ReLU).
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
        activations: tuple[ActSpec, ActSpec] = (("elu", {"inplace": True}), ("relu", {"inplace": True})),
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        plan = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides, features_per_stage, 2)
        f, n = plan.features, len(plan)
        self.plan = plan
        self.first = _UNetHalf(spatial_dims, in_channels, plan, [0] * n, activations[0], norm)
        # the second U-Net starts from the first decoder's full-resolution features; levels 1 .. n-2 are bridged
        bridge = [0] + [f[lv] for lv in range(1, n - 1)] + [0]
        self.second = _UNetHalf(spatial_dims, f[0], plan, bridge, activations[1], norm)
        self.head = make_conv(spatial_dims, f[0], out_channels, 1)
        self.input_divisor = plan.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``; returns logits ``(B, out_channels, *spatial)``."""
        self.check_input(x)
        first = self.first(x, [None] * len(self.plan))
        bridges: list[torch.Tensor | None] = [None, *first[1:], None]
        second = self.second(first[0], bridges)
        return self.head(second[0])
