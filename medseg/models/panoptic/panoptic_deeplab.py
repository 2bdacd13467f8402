"""Panoptic-DeepLab (Cheng et al., CVPR 2020): bottom-up panoptic segmentation, 2D and 3D.

Paper: B. Cheng, M. D. Collins, Y. Zhu, T. Liu, T. S. Huang, H. Adam, L.-C. Chen, "Panoptic-DeepLab: A Simple, Strong,
and Fast Baseline for Bottom-Up Panoptic Segmentation", CVPR 2020 (arXiv:1911.10194), Section 3 and Figure 2; the
seed's DeepLab2 library (Weber et al., arXiv:2106.09748) carries the same model.

Layout (dual ASPP, dual decoder): a shared backbone; a semantic branch — ASPP (1×1 and three 3×3 atrous
convolutions, image pooling without normalisation, all of 256; projection, dropout 0.5), then one decoder stage per
low-level feature (1×1 projection of the feature, the ASPP/decoder output upsampled and concatenated, a 5×5
depthwise separable convolution) and a head (5×5 depthwise separable convolution, 1×1 to the classes); an instance
branch with its own ASPP and decoder (128 channels, narrower projections) and two heads (5×5 depthwise separable
convolution to 32, 1×1 to the centre heatmap and to the offset vectors). Heads run at stride 4 and are upsampled
(offsets scaled by the factor).

Targets and losses (the authors' ``Base-Panoptic-DeepLab.yaml``): every object is its centre of mass; the centre
heatmap is a gaussian of σ = 8 voxels (mean squared error, weight 200); every object voxel regresses the vector to
its centre (L1 over the object voxels, weight 0.01); the semantic map is trained with cross-entropy on the hardest 20 %
of the voxels, voxels of objects smaller than 4096 voxels weighted 3. Inference groups voxels to the centres
(:func:`~medseg.models.instance.grouping.panoptic_grouping`: threshold 0.1, 7×7 max-pool NMS, top 200).

The dense output stacks the semantic logits (``K``), the centre heatmap (1) and the offsets (``D``, voxels, along
the array axes), so a sliding window stitches it and :meth:`PanopticDeepLab.group` makes the instances.

Paper configuration and parameter figure: the authors' code, bowenc0221/panoptic-deeplab
``configs/panoptic_deeplab_R50_os32_cityscapes.yaml`` (ResNet-50 at output stride 32, low-level features of strides
16, 8, 4 projected to 128/64/32 and 64/32/16, ASPP rates 3, 6, 9, 19 Cityscapes classes), built with that code:
55,308,870 parameters; ours: 55,308,870.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers import Pool
from torch import nn

from medseg.models.backbones.base import ConvNormActD
from medseg.models.blocks import make_conv
from medseg.models.instance.base import InstanceMaps, InstanceSegmentationModel, InstanceTarget
from medseg.models.instance.grouping import panoptic_grouping
from medseg.models.instance.targets import center_targets, semantic_map
from medseg.models.natural.classic._modules import resize
from medseg.models.natural.refine._modules import build_backbone
from medseg.models.registry import PaperConfig, register_model

__all__ = ["PanopticASPP", "PanopticDeepLab", "SingleDecoder", "separable_conv"]


def separable_conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 5) -> nn.Sequential:
    """Depthwise ``k×k`` convolution + BN + ReLU, then pointwise 1×1 + BN + ReLU (no biases)."""
    return nn.Sequential(
        ConvNormActD(spatial_dims, in_channels, in_channels, kernel_size, groups=in_channels),
        ConvNormActD(spatial_dims, in_channels, out_channels, 1),
    )


class PanopticASPP(nn.Module):
    """ASPP as Panoptic-DeepLab's code has it.

    1×1 and three atrous 3×3 convolutions with BN and ReLU, image pooling (1×1 convolution and ReLU, no normalisation),
    concatenation, 1×1 projection with BN and ReLU, dropout.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, channels, *spatial)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int, rates: Sequence[int],
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.branches = nn.ModuleList([ConvNormActD(spatial_dims, in_channels, channels, 1)])
        for r in rates:
            self.branches.append(ConvNormActD(spatial_dims, in_channels, channels, 3, dilation=r))
        self.pooling = nn.Sequential(Pool[Pool.ADAPTIVEAVG, spatial_dims](1),
                                     ConvNormActD(spatial_dims, in_channels, channels, 1, norm=None))
        self.project = ConvNormActD(spatial_dims, channels * (len(rates) + 2), channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the branches of ``x`` and project them."""
        parts = [b(x) for b in self.branches]
        parts.append(self.pooling(x).expand(-1, -1, *x.shape[2:]))
        return self.dropout(self.project(torch.cat(parts, dim=1)))


class SingleDecoder(nn.Module):
    """One branch.

    ASPP on the deepest feature, then per low-level feature a 1×1 projection (BN, ReLU), the upsampled running output
    concatenated, a 5×5 depthwise separable convolution.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Channels of the deepest feature.
        low_channels: Channels of the low-level features, deepest first.
        project: Their projections.
        channels: Decoder width.
        aspp_channels: ASPP width.
        rates: ASPP rates.
        dropout: ASPP dropout.
    """

    def __init__(self, spatial_dims: int, in_channels: int, low_channels: Sequence[int], project: Sequence[int],
                 channels: int, aspp_channels: int, rates: Sequence[int], dropout: float = 0.5) -> None:
        super().__init__()
        self.aspp = PanopticASPP(spatial_dims, in_channels, aspp_channels, rates, dropout)
        self.project = nn.ModuleList(ConvNormActD(spatial_dims, c, p, 1) for c, p in zip(low_channels, project,
                                                                                        strict=True))
        widths = [aspp_channels] + [channels] * (len(project) - 1)
        self.fuse = nn.ModuleList(separable_conv(spatial_dims, w + p, channels) for w, p in zip(widths, project,
                                                                                               strict=True))

    def forward(self, deepest: torch.Tensor, low: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode ``deepest`` with the low-level features ``low`` (deepest first) to the shallowest's resolution."""
        x = self.aspp(deepest)
        for feature, project, fuse in zip(low, self.project, self.fuse, strict=True):
            f = project(feature)
            x = fuse(torch.cat([resize(x, f.shape[2:]), f], dim=1))
        return x


def _head(spatial_dims: int, channels: int, head_channels: int, out: int) -> nn.Sequential:
    return nn.Sequential(separable_conv(spatial_dims, channels, head_channels),
                         make_conv(spatial_dims, head_channels, out, 1))


@register_model(
    "panoptic_deeplab",
    family="panoptic",
    task="panoptic",
    spatial_dims=(2, 3),
    paper_title="Panoptic-DeepLab: A Simple, Strong, and Fast Baseline for Bottom-Up Panoptic Segmentation",
    paper_year=2020,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, kwargs={"backbone": "resnet50"}, params=55_308_870,
        source="authors' code, bowenc0221/panoptic-deeplab configs/panoptic_deeplab_R50_os32_cityscapes.yaml "
               "(ResNet-50, output stride 32, 19 classes), built with that code and counted",
    ),
    divisor=32,
    test_kwargs={"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "decoder_channels": 16,
                 "aspp_channels": 16, "low_level_project": (8, 8, 8), "instance_decoder_channels": 8,
                 "instance_aspp_channels": 8, "instance_low_level_project": (4, 4, 4), "instance_head_channels": 8,
                 "sigma": 3.0},
)
class PanopticDeepLab(InstanceSegmentationModel):
    """Panoptic-DeepLab: semantic logits, a centre heatmap and offsets, grouped into instances (Cheng et al., 2020).

    Shapes: ``(B, in_channels, *spatial)`` (multiples of 32) to ``(B, out_channels + 1 + D, *spatial)``, or a loss
    dict with targets.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes including background.
        backbone: A registered ResNet (``resnet50``).
        pretrained_backbone: Local torchvision/timm weights for the backbone.
        backbone_kwargs: Extra backbone options.
        output_stride: Backbone output stride (32; 16 dilates the last stage).
        atrous_rates: ASPP rates ((3, 6, 9) at stride 32, (6, 12, 18) at 16).
        decoder_channels: Semantic decoder width (256).
        aspp_channels: Semantic ASPP width (256).
        low_level_project: Semantic projections of the strides 16, 8, 4 features (128, 64, 32).
        instance_decoder_channels: Instance decoder width (128).
        instance_aspp_channels: Instance ASPP width (256).
        instance_low_level_project: Instance projections (64, 32, 16).
        instance_head_channels: Centre and offset head width (32).
        sigma: Centre heatmap σ in voxels (8).
        center_weight: Heatmap loss weight (200).
        offset_weight: Offset loss weight (0.01).
        top_k_percent: Fraction of the hardest voxels in the semantic loss (0.2).
        small_instance_area: Objects below this many voxels weigh ``small_instance_weight`` in the semantic loss.
        small_instance_weight: (3).
        center_threshold: Inference heatmap threshold (0.1).
        nms_kernel: Inference centre NMS window (7).
        top_k: Inference centres kept (200).
    """

    output_kind = "dense"
    target_kinds = ("semantic", "center_heatmap", "offsets")
    loss_terms = ("semantic", "center", "offset")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "resnet50",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        output_stride: int = 32,
        atrous_rates: Sequence[int] = (3, 6, 9),
        decoder_channels: int = 256,
        aspp_channels: int = 256,
        low_level_project: Sequence[int] = (128, 64, 32),
        instance_decoder_channels: int = 128,
        instance_aspp_channels: int = 256,
        instance_low_level_project: Sequence[int] = (64, 32, 16),
        instance_head_channels: int = 32,
        sigma: float = 8.0,
        center_weight: float = 200.0,
        offset_weight: float = 0.01,
        top_k_percent: float = 0.2,
        small_instance_area: int = 4096,
        small_instance_weight: float = 3.0,
        center_threshold: float = 0.1,
        nms_kernel: int = 7,
        top_k: int = 200,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride=output_stride,
                                       pretrained=pretrained_backbone, backbone_kwargs=backbone_kwargs)
        levels = len(low_level_project)
        if len(instance_low_level_project) != levels or not 1 <= levels <= 3:
            raise ValueError("low_level_project and instance_low_level_project need 1 to 3 entries each")
        channels = self.backbone.out_channels
        self.low_index = list(range(len(channels) - 2, len(channels) - 2 - levels, -1))  # deepest first
        low = [channels[i] for i in self.low_index]
        self.semantic_decoder = SingleDecoder(spatial_dims, channels[-1], low, low_level_project, decoder_channels,
                                              aspp_channels, atrous_rates)
        self.instance_decoder = SingleDecoder(spatial_dims, channels[-1], low, instance_low_level_project,
                                              instance_decoder_channels, instance_aspp_channels, atrous_rates)
        self.semantic_head = _head(spatial_dims, decoder_channels, decoder_channels, out_channels)
        self.center_head = _head(spatial_dims, instance_decoder_channels, instance_head_channels, 1)
        self.offset_head = _head(spatial_dims, instance_decoder_channels, instance_head_channels, spatial_dims)
        self.input_divisor = (max(self.backbone.strides),) * spatial_dims
        self.head_stride = self.backbone.strides[self.low_index[-1]]
        self.dense_channels = out_channels + 1 + spatial_dims
        self.vector_channels = {out_channels + 1 + a: a for a in range(spatial_dims)}
        self.sigma, self.center_weight, self.offset_weight = sigma, center_weight, offset_weight
        self.top_k_percent = top_k_percent
        self.small_instance_area, self.small_instance_weight = small_instance_area, small_instance_weight
        self.center_threshold, self.nms_kernel, self.top_k = center_threshold, nms_kernel, top_k

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """Semantic logits, centre heatmap and offsets ``(B, K + 1 + D, *spatial)`` at the input's resolution."""
        features = self.backbone(x)
        low = [features[i] for i in self.low_index]
        semantic = self.semantic_head(self.semantic_decoder(features[-1], low))
        instance = self.instance_decoder(features[-1], low)
        center, offset = self.center_head(instance), self.offset_head(instance)
        size = x.shape[2:]
        scale = torch.tensor([s / o for s, o in zip(size, offset.shape[2:], strict=True)], device=x.device,
                             dtype=offset.dtype).view(1, -1, *([1] * self.spatial_dims))
        return torch.cat([resize(semantic, size), resize(center, size), resize(offset, size) * scale], dim=1)

    def forward(self, x: torch.Tensor, targets: Sequence[InstanceTarget] | None = None
                ) -> torch.Tensor | dict[str, torch.Tensor]:
        """The dense output of ``x``, or with ``targets`` the loss terms."""
        self.check_input(x)
        out = self.dense(x)
        if targets is None:
            return out
        self.check_targets(x, targets)
        return self.losses(out, targets)

    def losses(self, out: torch.Tensor, targets: Sequence[InstanceTarget]) -> dict[str, torch.Tensor]:
        """The three loss terms of a dense output (see the module docstring)."""
        k = self.out_channels
        semantic_losses, centre_losses, offset_losses = [], [], []
        offset_weight_total = out.new_zeros(())
        for b, t in enumerate(targets):
            sem = semantic_map(t)
            heat, offsets, _ = center_targets(t, self.sigma)
            instances = t.instances.long()
            weights = torch.ones(sem.shape, dtype=out.dtype, device=out.device)
            if instances.numel():
                areas = torch.bincount(instances.clamp(min=0).flatten())
                small = (areas < self.small_instance_area) & (areas > 0)
                small[0] = False
                weights[small[instances.clamp(min=0)]] = self.small_instance_weight
            pixel = F.cross_entropy(out[b:b + 1, :k].float(), sem[None], reduction="none")[0] * weights
            flat = pixel.flatten()
            n = max(int(flat.numel() * self.top_k_percent), 1)
            semantic_losses.append(flat.topk(n).values.mean() if self.top_k_percent < 1 else flat.mean())
            centre_losses.append(F.mse_loss(out[b, k].float(), heat, reduction="mean"))
            things = (instances > 0).to(out.dtype)
            diff = (out[b, k + 1:].float() - offsets).abs().sum(dim=0) * things
            offset_losses.append(diff.sum())
            offset_weight_total = offset_weight_total + things.sum() * self.spatial_dims
        semantic = torch.stack(semantic_losses).mean()
        centre = torch.stack(centre_losses).mean() * self.center_weight
        offset = torch.stack(offset_losses).sum() / offset_weight_total.clamp(min=1) * self.offset_weight
        return {"semantic": semantic, "center": centre, "offset": offset}

    @torch.no_grad()
    def group(self, dense: torch.Tensor, **options: Any) -> list[InstanceMaps]:
        """Instances of a dense output (``threshold``, ``nms_kernel``, ``top_k``, ``min_size`` may be overridden)."""
        k = self.out_channels
        settings = {"threshold": self.center_threshold, "nms_kernel": self.nms_kernel, "top_k": self.top_k}
        settings.update(options)
        return [panoptic_grouping(d[:k], d[k], d[k + 1:], **settings) for d in dense]
