"""CPNet, the Context Prior network (Yu et al., CVPR 2020), 2D, with the affinity loss's helpers.

Paper: C. Yu, J. Wang, C. Gao, G. Yu, C. Shen, N. Sang, "Context Prior for Scene Segmentation", CVPR 2020
(arXiv:2004.01547), Sections 3.1-3.4 and Figs. 2-4.

Layout (Fig. 2; the authors' ``CPHead``): a dilated ResNet-101 (output stride 8). The *aggregation module* (Fig. 4):
a 3x3 convolution-BN-ReLU to 512 channels, then two parallel spatially separable depthwise paths, ``k x 1`` then
``1 x k`` and ``1 x k`` then ``k x 1`` (``k = 11``), summed, BN, ReLU. The *Context Prior layer*: a 1x1
convolution-BN to ``N = H·W`` channels and a sigmoid give at each position ``i`` its affinities ``P_ij`` to all
``N`` positions (the prior map, ``(B, N, N)``), supervised by the affinity loss against the ideal affinity map
``A = L Lᵀ`` of the one-hot labels at the feature resolution (Section 3.2, Eq. 1-5). Intra-context
``P X / N`` and inter-context ``(1 - P) X / N`` each pass a 1x1 convolution-BN-ReLU; the input features,
intra- and inter-context are concatenated, fused by a 3x3 convolution-BN-ReLU (512), classified (dropout 0.1, 1x1
convolution) and upsampled to the input. The paper also trains an auxiliary FCN head on ``layer3`` (3x3 conv 1024
-> 256, BN, ReLU, dropout, 1x1; loss weight 0.4).

Outputs: the logits ``(B, out_channels, H, W)``; with ``deep_supervision=True`` in training mode
``[main, auxiliary]``; with ``return_prior=True`` in training mode the pair ``(logits or that list, prior map)``
with the prior map ``(B, N, N)``, ``N = prior_size²``. Build the target with :func:`ideal_affinity_map` and the
paper's loss with :func:`affinity_loss`.

``prior_size`` fixes the parameters (``N`` output channels of the prior convolution): 64 for the paper's 512x512
ADE20K crops at output stride 8. For a feature map of another size the aggregated features are resized (bilinear) to
``prior_size`` for the prior and the contexts resized back (identical to the reference when the sizes agree; the
reference asserts they do).

Differences from the reference: our ResNet-101 (torchvision layout) instead of ResNetV1c (deep stem). Parameter
figure: the paper states none, so none is recorded; at the paper configuration (ADE20K 150 classes, prior 64x64,
with the auxiliary head) we count 71,227,756.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import ConvNormActD
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_act, make_norm
from medseg.models.natural.attention._modules import SegHead, build_backbone, resize_to
from medseg.models.registry import PaperConfig, register_model

__all__ = ["AggregationModule", "CPNet", "ContextPriorHead", "affinity_loss", "ideal_affinity_map"]


def ideal_affinity_map(labels: torch.Tensor, num_classes: int, size: tuple[int, int],
                       ignore_index: int | None = 255) -> torch.Tensor:
    """The ideal affinity map ``A = L Lᵀ`` of the labels (Yu et al., 2020, Section 3.2, Fig. 3).

    Args:
        labels: Integer labels ``(B, H, W)`` or ``(B, 1, H, W)``.
        num_classes: Number of classes K; ``ignore_index`` pixels form an extra class (as the reference does).
        size: Feature-map size ``(h, w)`` the labels are resized to (nearest), ``h·w = N``.
        ignore_index: Label of ignored pixels, or ``None``.

    Returns:
        ``(B, N, N)`` float: 1 where two positions share a label, 0 otherwise.
    """
    if labels.dim() == 3:
        labels = labels[:, None]
    scaled = F.interpolate(labels.float(), size=list(size), mode="nearest").long().flatten(1)  # (B, N)
    if ignore_index is not None:
        scaled = scaled.masked_fill(scaled == ignore_index, num_classes)
    if scaled.min() < 0 or scaled.max() > num_classes:
        raise ModelError(f"ideal_affinity_map: labels must lie in [0, {num_classes}) or be the ignore index")
    one_hot = F.one_hot(scaled, num_classes + 1).float()
    return torch.bmm(one_hot, one_hot.transpose(1, 2))


def affinity_loss(prior: torch.Tensor, ideal: torch.Tensor) -> torch.Tensor:
    """The affinity loss ``L_u + L_g`` (Eq. 2-5): binary cross-entropy plus the global precision/recall/specificity.

    Args:
        prior: Prior map ``(B, N, N)`` in ``(0, 1)`` (the model's sigmoid output).
        ideal: Ideal affinity map ``(B, N, N)`` from :func:`ideal_affinity_map`.
    """
    unary = F.binary_cross_entropy(prior, ideal)
    eye = torch.eye(ideal.shape[-1], device=ideal.device, dtype=ideal.dtype)
    target = (1 - eye) * ideal  # the reference drops the diagonal from the positive set
    eps_one = torch.ones_like(ideal[..., 0])
    recall = (prior * target).sum(-1) / target.sum(-1).where(target.sum(-1) > 0, eps_one)
    spec = ((1 - prior) * (1 - ideal)).sum(-1) / (1 - ideal).sum(-1).where((1 - ideal).sum(-1) > 0, eps_one)
    precision = (prior * target).sum(-1) / prior.sum(-1).where(prior.sum(-1) > 0, eps_one)
    ones = torch.ones_like(recall)
    global_term = sum(F.binary_cross_entropy(p.clamp(0, 1), ones) for p in (recall, spec, precision))
    return unary + global_term


class AggregationModule(nn.Module):
    """Aggregation module (Fig. 4): 3x3 conv-BN-ReLU, two spatially separable depthwise paths, sum, BN, ReLU.

    Shapes: ``(B, C_in, H, W)`` to ``(B, C_out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 11) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, 2]
        p = kernel_size // 2
        self.reduce = ConvNormActD(2, in_channels, out_channels, 3)
        c = out_channels
        self.path1 = nn.Sequential(conv(c, c, (kernel_size, 1), padding=(p, 0), groups=c),
                                   conv(c, c, (1, kernel_size), padding=(0, p), groups=c))
        self.path2 = nn.Sequential(conv(c, c, (1, kernel_size), padding=(0, p), groups=c),
                                   conv(c, c, (kernel_size, 1), padding=(p, 0), groups=c))
        self.norm = make_norm("batch", 2, c)
        self.act = make_act(("relu", {"inplace": True}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Aggregate the spatial context of ``x``."""
        x = self.reduce(x)
        return self.act(self.norm(self.path1(x) + self.path2(x)))


class ContextPriorHead(nn.Module):
    """Context Prior head: aggregation, prior map, intra/inter contexts, fusion and classifier.

    Shapes: ``(B, C_in, h, w)`` to logits ``(B, out_channels, h, w)`` and the prior map ``(B, N, N)``.
    """

    def __init__(self, in_channels: int, out_channels: int, prior_channels: int, prior_size: int,
                 kernel_size: int, head_channels: int) -> None:
        super().__init__()
        self.prior_size = prior_size
        self.aggregation = AggregationModule(in_channels, prior_channels, kernel_size)
        self.prior_conv = ConvNormActD(2, prior_channels, prior_size * prior_size, 1, act=None)
        self.intra_conv = ConvNormActD(2, prior_channels, prior_channels, 1)
        self.inter_conv = ConvNormActD(2, prior_channels, prior_channels, 1)
        self.bottleneck = ConvNormActD(2, in_channels + 2 * prior_channels, head_channels, 3)
        self.classifier = SegHead(2, head_channels, 0, out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the logits at the feature resolution and the prior map."""
        size = tuple(x.shape[2:])
        s = self.prior_size
        value = resize_to(self.aggregation(x), (s, s))
        b, c = value.shape[:2]
        prior = torch.sigmoid(self.prior_conv(value).flatten(2).transpose(1, 2))  # (B, N_i, N_j)
        v = value.flatten(2).transpose(1, 2)  # (B, N, C)
        n = s * s
        intra = torch.bmm(prior, v).div(n).transpose(1, 2).reshape(b, c, s, s)
        inter = torch.bmm(1 - prior, v).div(n).transpose(1, 2).reshape(b, c, s, s)
        intra = resize_to(self.intra_conv(intra), size)
        inter = resize_to(self.inter_conv(inter), size)
        out = self.classifier(self.bottleneck(torch.cat((x, intra, inter), dim=1)))
        return out, prior


@register_model(
    "cpnet",
    family="natural",
    spatial_dims=(2,),
    paper_title="Context Prior for Scene Segmentation",
    paper_year=2020,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=150, kwargs={"deep_supervision": True, "prior_size": 64},
        params=None,
        source="CVPR 2020 (arXiv:2004.01547), Sections 3.3-4.1 (dilated ResNet-101, k = 11, ADE20K 150 classes, "
               "512x512 crops -> prior 64x64); the paper states no parameter count",
    ),
    divisor=1,
    deep_supervision=True,
    test_kwargs={"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "prior_size": 8,
                 "prior_channels": 16, "head_channels": 16},
)
class CPNet(SegmentationModel):
    """CPNet of Yu et al. (CVPR 2020): dilated ResNet + aggregation module + Context Prior layer.

    Shapes: ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)`` (any size; see the module docstring for the
    training outputs with ``deep_supervision`` and ``return_prior``).

    Args:
        spatial_dims: Must be 2.
        in_channels: Input channels (paper: 3).
        out_channels: Classes.
        backbone: Backbone key (paper: ``"resnet101"``).
        output_stride: Output stride (paper: 8).
        pretrained_backbone: Local torchvision/timm weights file for the backbone.
        backbone_kwargs: Further backbone options.
        prior_size: Side of the prior map (feature size: input size / output stride; 64 for 512x512 crops).
        prior_channels: Width of the aggregation module and contexts (512).
        kernel_size: k of the aggregation module (11).
        head_channels: Width of the fusion convolution (512; the auxiliary head uses half).
        deep_supervision: Build the auxiliary FCN head on ``layer3`` and return its logits in training mode.
        return_prior: In training mode also return the prior map (for :func:`affinity_loss`).
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
        prior_size: int = 64,
        prior_channels: int = 512,
        kernel_size: int = 11,
        head_channels: int = 512,
        deep_supervision: bool = False,
        return_prior: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if spatial_dims != 2:
            raise ModelError(f"{self.model_name}: CPNet is 2D only, got spatial_dims={spatial_dims}")
        if prior_size < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ModelError(f"{self.model_name}: prior_size must be >= 1 and kernel_size odd, got {prior_size}, "
                             f"{kernel_size}")
        self.encoder = build_backbone(self.model_name, backbone, 2, in_channels, output_stride, pretrained_backbone,
                                      backbone_kwargs)
        chs = self.encoder.out_channels
        self.head = ContextPriorHead(chs[-1], out_channels, prior_channels, prior_size, kernel_size, head_channels)
        self.deep_supervision = deep_supervision
        self.return_prior = return_prior
        self.aux = SegHead(2, chs[-2], head_channels // 2, out_channels) if deep_supervision else None
        if deep_supervision:
            self.deep_supervision_scales = [(1, 1)] * 2
            self.loss_weights = (1.0, 0.4)  # the auxiliary FCN head's weight in the paper

    def forward(self, x: torch.Tensor) -> Any:
        """Segment ``x`` of shape ``(B, in_channels, H, W)``."""
        self.check_input(x)
        feats = self.encoder(x)
        logits, prior = self.head(feats[-1])
        out: torch.Tensor | list[torch.Tensor] = resize_to(logits, x.shape[2:])
        if not self.training:
            return out
        if self.aux is not None:
            out = [out, resize_to(self.aux(feats[-2]), x.shape[2:])]
        return (out, prior) if self.return_prior else out
