"""M-Net: a 2D U-Net with a 3D-to-2D input block and two side legs, for deep brain structures (Mehta et al.).

Paper: R. Mehta, J. Sivaswamy, "M-Net: A Convolutional Neural Network for Deep Brain Structure Segmentation",
IEEE ISBI 2017, pp. 437-440 (doi:10.1109/ISBI.2017.7950555), Section 2 and Fig. 1.

Layout (Section 2): a slice ``s`` and its ``n`` neighbours on each side form a stack ``s-n : s+n`` that a 3D-to-2D
conversion block - one learned ``7 x 7 x (2n+1)`` 3D convolution filter - turns into a single 2D slice ``s̄``; the
rest of the network is 2D. Four paths of four steps give the network its M shape: the encoding path (each step a
cascade of 3x3 convolutions with a skip connection inside the cascade, then 2x2 max pooling), the decoding path
(the same with upsampling instead of pooling, and skip connections from the corresponding encoder steps), and two
side paths that give the network deep supervision: the left leg max-pools ``s̄`` step by step and feeds it to every
encoder step, the right leg upsamples the output of every decoder step to full resolution and feeds them all to the
final classification layer. The slice stack is the input's channels: a ``7 x 7 x (2n+1)`` 3D filter over
``2n+1`` slices is exactly a 7x7 2D convolution over ``2n+1`` channels (times the number of modalities), so
``in_channels = modalities * (2n + 1)``.

Our reading where the text leaves the layer details open (the figure's channel numbers could not be read): the
conversion block is a 7x7 convolution to ``converter_channels`` maps (1: "a single 2D slice") with batch norm and
ReLU; each step of either path is two 3x3 conv-BN-ReLU whose outputs are summed (the skip connection inside the
cascade) with ``32, 64, 128, 256`` channels and a 512-channel bottleneck; upsampling is nearest-neighbour; the right
leg concatenates the full-resolution upsampled outputs of the four decoder steps and a 1x1 convolution gives the
logits (one loss, as in the paper). The network is inherently 2D (its first block turns 3D context into a slice).

Paper configuration: 2D, one slice of one T1 image (``n = 0``; the paper chose ``n`` empirically, the value was not
recovered) and two classes. No parameter figure in the paper and no official code; built from Section 2, so the
registry records ``None``; we count 7,861,590 parameters at that configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, NormSpec, make_conv, make_pool
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["MNet"]

RELU = ("relu", {"inplace": True})


class _CascadeStep(nn.Module):
    """Two 3x3 conv-norm-ReLU whose outputs are summed (a skip connection inside the cascade)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: NormSpec) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(spatial_dims, in_channels, out_channels, 3, norm=norm, act=RELU)
        self.conv2 = ConvNormAct(spatial_dims, out_channels, out_channels, 3, norm=norm, act=RELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        return h + self.conv2(h)


@register_model(
    "mnet",
    family="unet",
    spatial_dims=(2,),
    paper_title="M-Net: A Convolutional Neural Network for Deep Brain Structure Segmentation",
    paper_year=2017,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        kwargs={"features_per_stage": (32, 64, 128, 256, 512)},
        params=None,
        source="ISBI 2017, Section 2 and Fig. 1; no parameter figure in the paper and no official code; built from "
               "Section 2 (widths and block details our reading, see the module docstring)",
    ),
    divisor=16,
    test_kwargs={"features_per_stage": (4, 8, 8, 16, 16)},
)
class MNet(SegmentationModel):
    """M-Net of Mehta & Sivaswamy (ISBI 2017): 3D-to-2D block, U-Net, left and right legs; 2D.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``, the input channels being the slice stack
    (``2n + 1`` neighbouring slices per modality); each spatial size a multiple of the product of the strides (16 by
    default).

    Args:
        spatial_dims: 2 (the network is 2D by design).
        in_channels: Slices of the stack times modalities.
        out_channels: Output channels (classes).
        features_per_stage: Channels of the four encoder/decoder steps and the bottleneck (our reading: 32, 64, 128,
            256, 512).
        strides: Pooling stride into each stage (``strides[0]`` = 1), one int or one per axis; default 2.
        converter_channels: Maps produced by the 3D-to-2D conversion block (the paper: one slice).
        norm: Normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features_per_stage: Sequence[int] = (32, 64, 128, 256, 512),
        strides: Sequence[int | Sequence[int]] | None = None,
        converter_channels: int = 1,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        plan = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides, features_per_stage, 2)
        f, n = plan.features, len(plan)
        self.plan = plan
        c = converter_channels
        self.converter = ConvNormAct(spatial_dims, in_channels, c, 7, norm=norm, act=RELU)
        self.pools = nn.ModuleList([nn.Identity()] + [make_pool("max", spatial_dims, s) for s in plan.strides[1:]])
        # encoder step l sees the pooled previous step and the left leg (s̄ pooled to level l)
        self.encoder = nn.ModuleList(
            _CascadeStep(spatial_dims, c if lv == 0 else f[lv - 1] + c, f[lv], norm) for lv in range(n)
        )
        self.decoder = nn.ModuleList(
            _CascadeStep(spatial_dims, f[lv + 1] + f[lv], f[lv], norm) for lv in range(n - 2, -1, -1)
        )
        self.head = make_conv(spatial_dims, sum(f[: n - 1]), out_channels, 1)
        self.input_divisor = plan.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment the slice stack ``x`` (``(B, in_channels, H, W)``); returns logits ``(B, out_channels, H, W)``."""
        self.check_input(x)
        leg = self.converter(x)
        skips = []
        h = leg
        for lv, (pool, step) in enumerate(zip(self.pools, self.encoder, strict=True)):
            if lv > 0:
                leg = pool(leg)
                h = torch.cat((pool(h), leg), dim=1)
            h = step(h)
            skips.append(h)
        h = skips.pop()
        right_leg = []
        for step in self.decoder:
            skip = skips.pop()
            h = step(torch.cat((F.interpolate(h, size=tuple(skip.shape[2:]), mode="nearest"), skip), dim=1))
            right_leg.append(F.interpolate(h, size=tuple(x.shape[2:]), mode="nearest"))
        return self.head(torch.cat(right_leg, dim=1))
