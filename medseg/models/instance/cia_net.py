"""CIA-Net: contour-aware information aggregation for nuclei instance segmentation (Zhou et al., IPMI 2019), 2D/3D.

Paper: Y. Zhou, O. F. Onder, Q. Dou, E. Tsougenis, H. Chen, P.-A. Heng, "CIA-Net: Robust Nuclei Instance Segmentation
with Contour-aware Information Aggregation", IPMI 2019 (arXiv:1903.05358), Section 2 and Figure 2:

- **encoder**: a densely connected network (DenseNet-121, :mod:`medseg.models.backbones.densenet`), levels of strides
  4, 8, 16 and 32;
- **two task decoders** — nuclei and contours — climbing the levels: at each, the running feature is upsampled ×2,
  the encoder's feature joins through a 1×1 lateral convolution and a 3×3 convolution refines it, separately per task;
- **information aggregation module** (IAM) at every level: each task's refined feature is concatenated with the
  other task's and a 3×3 convolution (BN, ReLU) produces that task's next feature, so nuclei and contour features
  inform each other at every scale;
- **deep supervision**: every level predicts nuclei (class logits) and contours (one logit), upsampled to the input;
  the finest predictions weigh 1, the coarser ones ``aux_weight`` each;
- **losses**: cross-entropy for the nuclei map, and for the contours the smooth truncated loss (Section 2.2), which
  lowers the pull of confidently wrong voxels (likely label noise): ``-log(p)`` where the probability of the labelled
  value ``p`` exceeds ``σ``, ``-log(σ) + (1 - p²/σ²)/2`` below;
- **instances** (Section 2.3): nuclei voxels off the contours (probability below 0.5) split into connected
  components, which grow back over the nuclei voxels connected to them (each voxel to the nearest component), class
  by majority; components and grown objects under ``min_size`` voxels are dropped.

No parameter figure: the paper gives none and the authors released no code; built from Section 2 (the decoder's
widths, 256 at the deepest level halving per level, are this implementation's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.backbones.base import ConvNormActD
from medseg.models.blocks import make_conv
from medseg.models.instance.base import InstanceMaps, InstanceSegmentationModel, InstanceTarget
from medseg.models.instance.grouping import majority_classes
from medseg.models.instance.targets import contour_map, semantic_map
from medseg.models.natural.classic._modules import resize
from medseg.models.natural.refine._modules import build_backbone
from medseg.models.registry import PaperConfig, register_model

__all__ = ["CIANet", "smooth_truncated_loss"]


def smooth_truncated_loss(logits: torch.Tensor, target: torch.Tensor, sigma: float) -> torch.Tensor:
    """CIA-Net's smooth truncated loss of binary logits against 0/1 targets (mean over voxels)."""
    p = torch.sigmoid(logits.float())
    pt = torch.where(target > 0.5, p, 1 - p).clamp(min=1e-6)
    low = -math.log(sigma) + 0.5 * (1 - pt.square() / sigma ** 2)
    return torch.where(pt > sigma, -torch.log(pt), low).mean()


class _Stage(nn.Module):
    """One decoder level of both tasks and their information aggregation module."""

    def __init__(self, spatial_dims: int, deep: int, lateral: int, channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(make_conv(spatial_dims, lateral, channels, 1) for _ in range(2))
        self.reduce = nn.ModuleList(make_conv(spatial_dims, deep, channels, 1) for _ in range(2))
        self.refine = nn.ModuleList(ConvNormActD(spatial_dims, channels, channels, 3) for _ in range(2))
        self.aggregate = nn.ModuleList(ConvNormActD(spatial_dims, 2 * channels, channels, 3) for _ in range(2))

    def forward(self, nuclei: torch.Tensor, contour: torch.Tensor, skip: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next level's nuclei and contour features."""
        refined = []
        for k, x in enumerate((nuclei, contour)):
            y = resize(self.reduce[k](x), skip.shape[2:]) + self.lateral[k](skip)
            refined.append(self.refine[k](y))
        both = torch.cat(refined, dim=1)
        return self.aggregate[0](both) + refined[0], self.aggregate[1](both) + refined[1]


@register_model(
    "cia_net",
    family="instance",
    task="instance",
    spatial_dims=(2, 3),
    paper_title="CIA-Net: Robust Nuclei Instance Segmentation with Contour-aware Information Aggregation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=2, kwargs={"backbone": "densenet121"}, params=None,
        source="no parameter figure in the paper and no released code; built from IPMI 2019 (arXiv:1903.05358), "
               "Section 2 (dense encoder, two task decoders with information aggregation, deep supervision, smooth "
               "truncated loss)",
    ),
    divisor=32,
    test_kwargs={"backbone": "densenet121", "backbone_kwargs": {"growth_rate": 4, "init_features": 8,
                                                                 "block_config": (2, 2, 2, 2)},
                 "channels": 16},
)
class CIANet(InstanceSegmentationModel):
    """CIA-Net: nuclei and contour maps from aggregated task decoders, split into instances (Zhou et al., 2019).

    Shapes: ``(B, in_channels, *spatial)`` (multiples of 32) to ``(B, out_channels + 1, *spatial)`` (class logits and
    the contour logit), or a loss dict with targets.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes including background.
        backbone: A registered backbone (``densenet121``).
        pretrained_backbone: Local weights for the backbone.
        backbone_kwargs: Extra backbone options.
        channels: Decoder width at the deepest level, halved per level up (256).
        contour_width: Width of the contour targets in voxels (2).
        sigma: Truncation threshold of the smooth truncated loss (0.3).
        aux_weight: Weight of each coarser level's losses (0.5).
        contour_threshold: Inference: voxels with a contour probability above this are no seed (0.5).
        min_size: Inference: components smaller than this are no seed, and grown objects smaller than this
            are dropped (4 voxels).
    """

    output_kind = "dense"
    target_kinds = ("semantic", "contours")
    loss_terms = ("nuclei", "contour")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "densenet121",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        channels: int = 256,
        contour_width: int = 2,
        sigma: float = 0.3,
        aux_weight: float = 0.5,
        contour_threshold: float = 0.5,
        min_size: int = 4,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride=32,
                                       pretrained=pretrained_backbone, backbone_kwargs=backbone_kwargs)
        levels = self.backbone.out_channels[1:]
        widths = [max(channels >> i, 8) for i in range(len(levels))]  # deepest first
        self.top = nn.ModuleList(ConvNormActD(spatial_dims, levels[-1], widths[0], 1) for _ in range(2))
        self.stages = nn.ModuleList(_Stage(spatial_dims, widths[i], levels[-2 - i], widths[i + 1])
                                    for i in range(len(levels) - 1))
        self.nuclei_heads = nn.ModuleList(make_conv(spatial_dims, w, out_channels, 1) for w in widths[1:])
        self.contour_heads = nn.ModuleList(make_conv(spatial_dims, w, 1, 1) for w in widths[1:])
        self.input_divisor = (32,) * spatial_dims
        self.dense_channels = out_channels + 1
        self.contour_width, self.sigma, self.aux_weight = contour_width, sigma, aux_weight
        self.contour_threshold, self.min_size = contour_threshold, min_size

    def outputs(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(nuclei logits, contour logit) of every decoder level at the input's resolution, finest first."""
        features = self.backbone(x)[1:]
        nuclei, contour = self.top[0](features[-1]), self.top[1](features[-1])
        out = []
        for i, stage in enumerate(self.stages):
            nuclei, contour = stage(nuclei, contour, features[-2 - i])
            out.append((resize(self.nuclei_heads[i](nuclei), x.shape[2:]),
                        resize(self.contour_heads[i](contour), x.shape[2:])))
        return out[::-1]

    def forward(self, x: torch.Tensor, targets: Sequence[InstanceTarget] | None = None
                ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Class and contour logits ``(B, K + 1, *spatial)``, or with ``targets`` the deep-supervised losses."""
        self.check_input(x)
        levels = self.outputs(x)
        if targets is None:
            return torch.cat(levels[0], dim=1)
        self.check_targets(x, targets)
        sem = torch.stack([semantic_map(t) for t in targets])
        contours = torch.stack([contour_map(t.instances, self.contour_width) for t in targets]).float()
        nuclei_loss = contour_loss = x.new_zeros(())
        for i, (n, c) in enumerate(levels):
            weight = 1.0 if i == 0 else self.aux_weight
            nuclei_loss = nuclei_loss + weight * F.cross_entropy(n.float(), sem)
            contour_loss = contour_loss + weight * smooth_truncated_loss(c[:, 0], contours, self.sigma)
        return {"nuclei": nuclei_loss, "contour": contour_loss}

    @torch.no_grad()
    def group(self, dense: torch.Tensor, **options: Any) -> list[InstanceMaps]:
        """Instances: seeds = nuclei voxels off the contours, split into components and grown back."""
        from scipy import ndimage

        k = self.out_channels
        threshold = float(options.get("contour_threshold", self.contour_threshold))
        min_size = int(options.get("min_size", self.min_size))
        out = []
        for d in dense:
            semantic = d[:k].argmax(dim=0)
            foreground = (semantic > 0).cpu().numpy()
            seeds = foreground & (torch.sigmoid(d[k]).cpu().numpy() < threshold)
            labels, count = ndimage.label(seeds)
            if count:
                sizes = np.bincount(labels.ravel())
                small = sizes < min_size
                small[0] = False
                labels[small[labels]] = 0
                labels, count = ndimage.label(labels > 0)
            if count:
                _, nearest = ndimage.distance_transform_edt(labels == 0, return_indices=True)
                grown = labels[tuple(nearest)]
                regions, _ = ndimage.label(foreground)  # seeds grow only within their own part of the nuclei map
                seeded = np.unique(regions[labels > 0])
                labels = np.where(foreground & np.isin(regions, seeded[seeded > 0]), grown, 0)
                kept = np.bincount(labels.ravel(), minlength=count + 1) >= min_size  # smaller objects are dropped
                kept[0] = False
                lookup = np.zeros(count + 1, dtype=labels.dtype)
                lookup[kept] = np.arange(1, int(kept.sum()) + 1)
                labels, count = lookup[labels], int(kept.sum())
            ids = torch.from_numpy(labels.astype(np.int64)).to(d.device)
            classes = majority_classes(ids, semantic, int(count), k)
            scores = torch.ones(int(count), device=d.device)
            out.append(InstanceMaps(ids, classes, scores))
        return out
