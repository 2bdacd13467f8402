"""BA-Net, the boundary-aware context neural network (Wang et al., 2022), 2D and 3D.

Identification. The seed names "BA-Net (boundary-aware network)" without a paper. The network published under exactly
that name is R. Wang, S. Chen, C. Ji, J. Fan, Y. Li, "Boundary-aware context neural network for medical image
segmentation", Medical Image Analysis 78 (2022) 102395 (arXiv:2005.00966), "we formulate a boundary-aware context
neural network (BA-Net)"; official PyTorch code github.com/mathwrx/BA-Net (``encoding/models/BANet.py``,
``ASPP.py``, ``DRNet_pytorch.py``, ``experiment/main.py``). (Another candidate, "Boundary-Aware Network for Fast and
High-Accuracy Portrait Segmentation", Chen et al., arXiv:1901.03814, calls itself BANet; it has no public code and
its layer configuration is not in reach, so it was not chosen.) This identification is ours, not the seed's.

Layout (paper Section 3, Fig. 2; code at ``main.py``'s defaults): a dilated ResNet-50 encoder with output stride 8
(``layer3`` dilated by 2, ``layer4`` by 4 in every block), DeepLabv3's ASPP on ``layer4`` (rates 6, 12, 18, 256
filters, no dropout), and per encoder stage (``layer1``-``layer4``) a "mini multi-task learning" module:

* pyramid edge extraction: a 1x1 reduction to ``R = 128`` channels, its 3x3 and 5x5 (stages 3, 4) or 5x5 and 7x7
  (stages 1, 2) average poolings with stride 1, concatenated with it and fused (1x1, ReLU, depthwise 3x3, BN, 1x1);
* two task branches (depthwise 3x3, BN, 1x1): mask features ``s`` and boundary features ``e``, bridged by interactive
  attention ``s' = s + (1 - sigmoid(a_s(s))) * e`` and ``e' = e + (1 - sigmoid(a_e(e))) * s``;
* side outputs: 3x3 convolutions of ``s'`` (mask) and ``e'`` (boundary) to the classes.

Cross feature fusion per stage ``k``: ``d_k = s'_k + (1 - sigmoid(a(s'_k))) * sum_j sigmoid(a_j(s'_j)) * s'_j`` over
the other three stages (resized bilinearly, 3x3 attention convolutions). Decoder: ``d_4`` is combined with the ASPP
output (ReLU, depthwise 3x3, BN, 1x1), then ``d_3``, ``d_2``, ``d_1`` each with the previous one (ReLU, depthwise
3x3, BN, 1x1), a 3x3 convolution with BN and ReLU, a 1x1 classifier, and bilinear upsampling to the input.

Training outputs. With ``deep_supervision=True`` the training forward returns the main output and the four mask side
outputs (all at full resolution), weighted 1 each as in the code (``loss_weights``, whose main loss is cross-entropy
plus Dice). The four boundary side outputs need boundary targets (the code's ``|y - avgpool3(y)| > 0``,
:func:`boundary_target`), which a plain segmentation trainer does not have: with ``boundary_heads=True``,
:meth:`BANet.forward_with_boundaries` returns them for a training loop that adds that loss.

Parameter figure: none in the paper. The official model at ``main.py``'s defaults (Kvasir-SEG, 2 classes, RGB) has
44,857,658 parameters, of which 2,049,000 are ResNet-50's ImageNet ``fc`` and 35,584 an ``up_conv4`` block that
``forward`` never calls; the network that runs has 42,773,074, which is what we build and count (with
``deep_supervision=True, boundary_heads=True``; without the side heads it is 42,683,458).

Dims: 2D (the paper) and 3D (every layer has a 3D counterpart).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv, Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv, make_norm
from medseg.models.natural.classic._modules import ASPP, build_backbone, set_block_dilations
from medseg.models.registry import PaperConfig, register_model

__all__ = ["BANet", "CrossFeatureFusion", "MiniMultiTask", "boundary_target"]


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=True)


def boundary_target(labels: torch.Tensor) -> torch.Tensor:
    """The official boundary map of a label map ``(B, *spatial)``: 1 where ``|y - avgpool3(y)| > 0``, else 0."""
    y = labels.float().unsqueeze(1)
    pool = F.avg_pool2d if labels.dim() == 3 else F.avg_pool3d
    return ((y - pool(y, 3, 1, 1)).abs() > 0)[:, 0].long()


class _DwPw(nn.Sequential):
    """Depthwise 3x3 (no bias), BN, pointwise 1x1 (no bias); optional leading ReLU."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, relu_first: bool = False) -> None:
        super().__init__()
        if relu_first:
            self.add_module("act", nn.ReLU())
        self.add_module("dw", Conv[Conv.CONV, spatial_dims](in_channels, in_channels, kernel_size=3, padding=1,
                                                            groups=in_channels, bias=False))
        self.add_module("norm", make_norm("batch", spatial_dims, in_channels))
        self.add_module("pw", make_conv(spatial_dims, in_channels, out_channels, 1, bias=False))


class _ZeroPadAvgPool(nn.Module):
    """``k``-average pooling with stride 1 over the zero-padded map, padding counted.

    The same as ``AvgPool(k, 1, (k - 1) // 2)`` of the code, but it also accepts maps smaller than ``k``.
    """

    def __init__(self, spatial_dims: int, kernel_size: int) -> None:
        super().__init__()
        self.pad = (kernel_size - 1) // 2
        self.pool = Pool[Pool.AVG, spatial_dims](kernel_size=kernel_size, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Average over each pixel's ``k``-neighbourhood, zeros outside."""
        return self.pool(F.pad(x, [self.pad] * (2 * (x.dim() - 2))))


class MiniMultiTask(nn.Module):
    """Pyramid edge extraction and the mini multi-task module with interactive attention (one encoder stage).

    Shapes: ``(B, C_in, *spatial)`` to mask features ``(B, R, *spatial)``, and with ``side_heads``/``boundary_heads``
    the side outputs ``(B, n_classes, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in (the stage's channels).
        channels: R (128).
        pools: Kernel sizes of the two average poolings of the pyramid edge extraction.
        n_classes: Classes of the side outputs.
        side_heads: Build the mask side output.
        boundary_heads: Build the boundary attention and side output.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, pools: Sequence[int], n_classes: int,
                 side_heads: bool, boundary_heads: bool) -> None:
        super().__init__()
        self.reduce = make_conv(spatial_dims, in_channels, channels, 1, bias=False)
        self.pools = nn.ModuleList(_ZeroPadAvgPool(spatial_dims, k) for k in pools)
        self.fuse = nn.Sequential(make_conv(spatial_dims, channels * (1 + len(pools)), channels, 1, bias=False),
                                  nn.ReLU(), _DwPw(spatial_dims, channels, channels))
        self.edge_conv = _DwPw(spatial_dims, channels, channels)
        self.seg_conv = _DwPw(spatial_dims, channels, channels)
        self.att_seg = _DwPw(spatial_dims, channels, channels)
        self.att_edge = _DwPw(spatial_dims, channels, channels) if boundary_heads else None
        self.edge_head = make_conv(spatial_dims, channels, n_classes, 3) if boundary_heads else None
        self.seg_head = make_conv(spatial_dims, channels, n_classes, 3) if side_heads else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the mask features ``s'`` and the branch features ``s`` and ``e`` before the attention."""
        x = self.reduce(x)
        x = self.fuse(torch.cat([x, *(p(x) for p in self.pools)], dim=1))
        edge, seg = self.edge_conv(x), self.seg_conv(x)
        return seg + (1 - torch.sigmoid(self.att_seg(seg))) * edge, seg, edge

    def boundary_features(self, seg_pre: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        """``e' = e + (1 - sigmoid(a_e(e))) * s`` (``seg_pre`` is ``s`` before its own attention)."""
        if self.att_edge is None:
            raise ModelError("BA-Net: the boundary heads are not built (boundary_heads=False)")
        return edge + (1 - torch.sigmoid(self.att_edge(edge))) * seg_pre


class CrossFeatureFusion(nn.Module):
    """Cross feature fusion: ``x + (1 - sigmoid(a(x))) * sum_j sigmoid(a_j(x_j)) * x_j`` (the others resized to x).

    Shapes: ``x`` ``(B, R, *spatial)`` and three ``(B, R, *any)`` to ``(B, R, *spatial)``.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.att = nn.ModuleList(make_conv(spatial_dims, channels, channels, 3, bias=False) for _ in range(4))

    def forward(self, x: torch.Tensor, others: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuse ``x`` with the three other stages."""
        others = [_resize(o, x.shape[2:]) for o in others]
        gated = sum(torch.sigmoid(a(o)) * o for a, o in zip(self.att[1:], others, strict=True))
        return x + (1 - torch.sigmoid(self.att[0](x))) * gated


@register_model(
    "banet",
    family="natural",
    spatial_dims=(2, 3),
    paper_title="Boundary-aware context neural network for medical image segmentation",
    paper_year=2022,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=2, kwargs={"deep_supervision": True, "boundary_heads": True},
        params=42_773_074,
        source="no figure in the paper; official code github.com/mathwrx/BA-Net (encoding/models/BANet.py, "
               "experiment/main.py defaults: ResNet-50, output stride 8, ASPP 6/12/18, reduce_dim 128, Kvasir 2 "
               "classes) counted with torch: 44,857,658 minus the unused ResNet fc (2,049,000) and up_conv4 (35,584)",
    ),
    divisor=8,
    deep_supervision=True,
    test_kwargs={"backbone_kwargs": {"width": 0.125}, "channels": 8, "aspp_channels": 8},
)
class BANet(SegmentationModel):
    """BA-Net (Wang et al., MedIA 2022): dilated ResNet-50, per-stage mini multi-task modules, cross feature fusion.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``, each spatial size a multiple of 8; in
    training with ``deep_supervision=True`` a list of 5 such maps (main first, then the mask side outputs of stages
    1-4).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels (paper: 3).
        out_channels: Classes (official configuration: 2).
        backbone: A ResNet backbone key (paper: ``"resnet50"``), used at output stride 8.
        pretrained_backbone: Local torchvision/timm weights of the backbone.
        backbone_kwargs: Further backbone options (e.g. ``{"width": 0.125}``).
        channels: R, the width of the decoder modules (128).
        aspp_channels: ASPP filters (256).
        aspp_rates: ASPP rates (6, 12, 18).
        layer4_rates: Dilation of each ``layer4`` block (official multi-grid: 4, 4, 4).
        deep_supervision: Build the mask side outputs and return them in training.
        boundary_heads: Build the boundary attention and side outputs (for :meth:`forward_with_boundaries`).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet50",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        channels: int = 128,
        aspp_channels: int = 256,
        aspp_rates: Sequence[int] = (6, 12, 18),
        layer4_rates: Sequence[int] | None = (4, 4, 4),
        deep_supervision: bool = False,
        boundary_heads: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.encoder = build_backbone(backbone, spatial_dims, in_channels, 8, pretrained_backbone, backbone_kwargs,
                                      self.model_name)
        if not hasattr(self.encoder, "layer4"):
            raise ModelError(f"{self.model_name}: the encoder must be a ResNet backbone, got {backbone!r}")
        if layer4_rates is not None:
            set_block_dilations(self.encoder, "layer4", layer4_rates)
        stage_channels = self.encoder.out_channels[1:5]
        self.deep_supervision = deep_supervision
        self.aspp = ASPP(spatial_dims, stage_channels[3], aspp_channels, aspp_rates, dropout=0.0)
        pools = ((5, 7), (5, 7), (3, 5), (3, 5))
        self.mtl = nn.ModuleList(
            MiniMultiTask(spatial_dims, c, channels, p, out_channels, deep_supervision, boundary_heads)
            for c, p in zip(stage_channels, pools, strict=True)
        )
        self.cff = nn.ModuleList(CrossFeatureFusion(spatial_dims, channels) for _ in range(4))
        self.aspp_combine = _DwPw(spatial_dims, channels + aspp_channels, channels, relu_first=True)
        self.up_convs = nn.ModuleList(_DwPw(spatial_dims, 2 * channels, channels, relu_first=True) for _ in range(3))
        self.head = nn.Sequential(ConvNormActD(spatial_dims, channels, channels, 3, bias=True),
                                  make_conv(spatial_dims, channels, out_channels, 1))
        self.input_divisor = (8,) * spatial_dims
        if deep_supervision:
            self.deep_supervision_scales = [(1,) * spatial_dims] * 5
            self.loss_weights = (1.0, 1.0, 1.0, 1.0, 1.0)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        feats = self.encoder(x)[1:5]
        aspp = self.aspp(feats[3])
        branches = [mtl(f) for mtl, f in zip(self.mtl, feats, strict=True)]
        s = [b[0] for b in branches]
        d4 = self.aspp_combine(torch.cat([self.cff[3](s[3], [s[0], s[1], s[2]]), aspp], dim=1))
        d3 = self.up_convs[2](torch.cat([self.cff[2](s[2], [s[0], s[1], s[3]]), d4], dim=1))
        d2 = self.up_convs[1](torch.cat([self.cff[1](s[1], [s[0], s[2], s[3]]), d3], dim=1))
        d1 = self.cff[0](s[0], [s[1], s[2], s[3]])
        d1 = self.up_convs[0](torch.cat([d1, _resize(d2, d1.shape[2:])], dim=1))
        return _resize(self.head(d1), x.shape[2:]), branches

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x``; in training with ``deep_supervision=True`` also return the four mask side outputs."""
        self.check_input(x)
        out, branches = self._features(x)
        if not (self.training and self.deep_supervision):
            return out
        return [out, *self._side_outputs(branches, x.shape[2:])]

    def _side_outputs(self, branches: list[tuple[torch.Tensor, ...]], size: Sequence[int]) -> list[torch.Tensor]:
        return [_resize(m.seg_head(b[0]), size) for m, b in zip(self.mtl, branches, strict=True)]

    def forward_with_boundaries(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The paper's multi-task outputs: ``[main, mask sides 1-4]`` and the four boundary side outputs.

        Every output is ``(B, out_channels, *spatial)``; the boundary outputs are trained against
        :func:`boundary_target` of the labels (cross-entropy, weight 1 each in the official code).

        Raises:
            ModelError: The model was built without ``deep_supervision`` or ``boundary_heads``.
        """
        self.check_input(x)
        if not self.deep_supervision or any(m.edge_head is None for m in self.mtl):
            raise ModelError(f"{self.model_name}: forward_with_boundaries needs deep_supervision=True and "
                             f"boundary_heads=True")
        out, branches = self._features(x)
        size = x.shape[2:]
        edges = [_resize(m.edge_head(m.boundary_features(b[1], b[2])), size)  # type: ignore[misc]
                 for m, b in zip(self.mtl, branches, strict=True)]
        return [out, *self._side_outputs(branches, size)], edges
