"""Gated-SCNN, the gated shape CNN (Takikawa et al., ICCV 2019), 2D.

Paper: T. Takikawa, D. Acuna, V. Jampani, S. Fidler, "Gated-SCNN: Gated Shape CNNs for Semantic Segmentation",
ICCV 2019 (arXiv:1907.05740), Section 3 and Fig. 2.

Layout (Section 3; the authors' ``network/gscnn.py``):

* Regular stream: a dilated backbone at output stride 8 (the paper: WideResNet-38; here ResNet-101, see below).
* Shape stream (Section 3.1-3.2): 1x1 side outputs (``dsn``) of three backbone levels to one channel, upsampled to
  the input size; the first level's features (upsampled) pass a residual block (64), a 1x1 convolution to 32 and a
  *gated convolutional layer* (GCL) gated by the first side output, a residual block, 1x1 to 16, GCL with the second,
  residual block, 1x1 to 8, GCL with the third, a 1x1 convolution to one channel and a sigmoid: the boundary map
  (the dual-task/edge loss's input). A GCL computes ``α = σ(BN(C_1x1(ReLU(C_1x1(BN(s ‖ r))))))`` and returns
  ``C_1x1(s · (α + 1))`` (Eq. 1-2, the reference's ``GatedSpatialConv2d``).
* Fusion (Section 3.3): the boundary map and the image gradients are combined by a 1x1 convolution and a sigmoid,
  and an ASPP on the last backbone map with image pooling, an *edge* branch (1x1 convolution of the fused boundary),
  a 1x1 branch and three atrous branches (rates 12, 24, 36 at output stride 8), each 256 channels, concatenated
  (1536), reduced by a 1x1 convolution (256), upsampled to stride 4 and concatenated with 48 channels from a
  low-level map, two 3x3 convolution-BN-ReLU (256) and a 1x1 classifier; logits upsampled to the input.

Outputs: the segmentation logits ``(B, out_channels, H, W)``; with ``return_edges=True`` the pair ``(logits,
boundary)`` with the boundary probability ``(B, 1, H, W)`` (the paper trains with both: the segmentation loss, the
binary edge loss and the dual-task regulariser; the registry's deep-supervision flag is off because the boundary map
is not a class map).

Differences from the reference, documented: WideResNet-38 is not among our backbones, so the regular stream is our
ResNet-101 (torchvision layout) at output stride 8; the WideResNet levels map to ResNet's: ``mod1`` (first features)
-> the stem (stride 2), ``mod2`` (low-level map for the decoder) and ``mod3`` (first side output) -> ``layer1``
(stride 4), ``mod4`` -> ``layer2``, ``mod7`` -> ``layer4``. The reference computes image gradients with OpenCV's
Canny on the 8-bit image outside the graph; we use the Sobel gradient magnitude of the channel mean, scaled to ``[0,
1]`` per image, also without gradient (no OpenCV). Parameter figure: the paper states none, so none is recorded; at
the paper configuration (Cityscapes 19 classes) with ResNet-101 we count 59,515,309.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.backbones.resnet import BasicBlock
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_norm
from medseg.models.natural.attention._modules import build_backbone, conv1x1, resize_to
from medseg.models.registry import PaperConfig, register_model

__all__ = ["GSCNN", "GatedSpatialConv", "image_gradient_magnitude"]


def image_gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the channel mean of ``x`` (``(B, C, H, W)``), scaled to ``[0, 1]`` per image.

    The stand-in for the reference's Canny edges (no gradient flows through it). Returns ``(B, 1, H, W)``.
    """
    with torch.no_grad():
        g = x.mean(1, keepdim=True)
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
        kernels = torch.stack((kx, kx.t()))[:, None]
        grad = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), kernels)
        mag = grad.square().sum(1, keepdim=True).sqrt()
        return mag / mag.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)


class GatedSpatialConv(nn.Module):
    """Gated convolutional layer (Takikawa et al., 2019, Eq. 1-2).

    Shapes: shape-stream features ``(B, C, H, W)`` and a one-channel gate ``(B, 1, H, W)`` to ``(B, C, H, W)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            make_norm("batch", 2, channels + 1), conv1x1(2, channels + 1, channels + 1), nn.ReLU(),
            conv1x1(2, channels + 1, 1), make_norm("batch", 2, 1), nn.Sigmoid(),
        )
        self.conv = conv1x1(2, channels, channels, bias=False)

    def forward(self, features: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        """Gate ``features`` by the attention computed from it and ``gating``."""
        alpha = self.gate(torch.cat((features, gating), dim=1))
        return self.conv(features * (alpha + 1))


class _EdgeASPP(nn.Module):
    """Gated-SCNN's ASPP: image pooling, edge, 1x1 and atrous branches, concatenated (6 x ``channels``)."""

    def __init__(self, in_channels: int, channels: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.image_conv = ConvNormActD(2, in_channels, channels, 1)
        self.edge_conv = ConvNormActD(2, 1, channels, 1)
        self.branches = nn.ModuleList([ConvNormActD(2, in_channels, channels, 1)] + [
            ConvNormActD(2, in_channels, channels, 3, dilation=r) for r in rates])

    def forward(self, x: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pooled = self.image_conv(F.adaptive_avg_pool2d(x, 1)).expand(-1, -1, *size)
        edges = self.edge_conv(resize_to(edge, size, align_corners=True))
        return torch.cat([pooled, edges] + [branch(x) for branch in self.branches], dim=1)


@register_model(
    "gscnn",
    family="natural",
    spatial_dims=(2,),
    paper_title="Gated-SCNN: Gated Shape CNNs for Semantic Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, kwargs={}, params=None,
        source="ICCV 2019 (arXiv:1907.05740), Section 3 and 4 (Cityscapes 19 classes; regular stream here "
               "ResNet-101 instead of WideResNet-38); the paper states no parameter count",
    ),
    divisor=1,
    test_kwargs={"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "shape_channels": 16,
                 "aspp_channels": 16, "decoder_channels": 16},
)
class GSCNN(SegmentationModel):
    """Gated-SCNN of Takikawa et al. (ICCV 2019): regular stream, gated shape stream, edge-aware ASPP fusion.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)`` (any size); with ``return_edges=True`` the
    pair ``(logits, boundary (B, 1, H, W))``.

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels (paper: 3).
        out_channels: Classes.
        backbone: A ResNet backbone key (here ``"resnet101"``; the paper's WideResNet-38 is not available).
        output_stride: Output stride (paper: 8; the ASPP rates are 6, 12, 18 times ``16 / output_stride``).
        pretrained_backbone: Local torchvision/timm weights file for the backbone.
        backbone_kwargs: Further backbone options.
        shape_channels: Width of the shape stream's first residual block (64; then 32, 16, 8).
        aspp_channels: Width of each ASPP branch and of its reduction (256).
        decoder_channels: Width of the decoder's 3x3 convolutions (256; the low-level projection is 48).
        return_edges: Also return the shape stream's boundary probability.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet101",
        output_stride: int = 8,
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        shape_channels: int = 64,
        aspp_channels: int = 256,
        decoder_channels: int = 256,
        return_edges: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if spatial_dims != 2:
            raise ModelError(f"{self.model_name}: Gated-SCNN is 2D only, got spatial_dims={spatial_dims}")
        if shape_channels < 8 or shape_channels % 8:
            raise ModelError(f"{self.model_name}: shape_channels must be a multiple of 8, got {shape_channels}")
        self.encoder = build_backbone(self.model_name, backbone, 2, in_channels, output_stride, pretrained_backbone,
                                      backbone_kwargs)
        chs = self.encoder.out_channels  # stem, layer1..layer4
        self.return_edges = return_edges
        # Shape stream.
        self.dsn = nn.ModuleList([conv1x1(2, chs[i], 1) for i in (1, 2, 4)])
        widths = [shape_channels, shape_channels // 2, shape_channels // 4, shape_channels // 8]
        self.res = nn.ModuleList([BasicBlock(2, chs[0], widths[0])] + [BasicBlock(2, w, w) for w in widths[1:3]])
        self.reduce = nn.ModuleList([conv1x1(2, widths[i], widths[i + 1]) for i in range(3)])
        self.gates = nn.ModuleList([GatedSpatialConv(w) for w in widths[1:]])
        self.fuse = conv1x1(2, widths[3], 1, bias=False)
        self.edge_weight = conv1x1(2, 2, 1, bias=False)
        # Fusion module.
        rates = [r * 16 // output_stride for r in (6, 12, 18)]
        self.aspp = _EdgeASPP(chs[4], aspp_channels, rates)
        self.aspp_reduce = conv1x1(2, 6 * aspp_channels, aspp_channels, bias=False)
        self.low_level = conv1x1(2, chs[1], 48, bias=False)
        self.decoder = nn.Sequential(
            ConvNormActD(2, aspp_channels + 48, decoder_channels, 3),
            ConvNormActD(2, decoder_channels, decoder_channels, 3),
            conv1x1(2, decoder_channels, out_channels, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Segment ``x`` of shape ``(B, in_channels, H, W)``."""
        self.check_input(x)
        size = x.shape[2:]
        feats = self.encoder(x)
        sides = [resize_to(dsn(feats[i]), size, align_corners=True) for dsn, i in zip(self.dsn, (1, 2, 4),
                                                                                        strict=True)]
        cs = resize_to(feats[0], size, align_corners=True)
        for res, reduce, gate, side in zip(self.res, self.reduce, self.gates, sides, strict=True):
            cs = gate(reduce(res(cs)), side)
        boundary = torch.sigmoid(self.fuse(cs))
        acts = torch.sigmoid(self.edge_weight(torch.cat((boundary, image_gradient_magnitude(x)), dim=1)))
        y = self.aspp_reduce(self.aspp(feats[4], acts))
        low = feats[1]
        y = resize_to(y, low.shape[2:], align_corners=True)
        logits = resize_to(self.decoder(torch.cat((self.low_level(low), y), dim=1)), size)
        return (logits, boundary) if self.return_edges else logits
