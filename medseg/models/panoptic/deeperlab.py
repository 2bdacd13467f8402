"""DeeperLab: a single-shot image parser (Yang et al., 2019), 2D and 3D.

Paper: T.-J. Yang, M. D. Collins, Y. Zhu, J.-J. Hwang, T. Liu, X. Zhang, V. Sze, G. Papandreou, L.-C. Chen,
"DeeperLab: Single-Shot Image Parser", arXiv:1902.05093, 2019, Section 3 and Figures 2-4. A bottom-up panoptic network
whose instance branch follows PersonLab (Papandreou et al., ECCV 2018) with object keypoints:

- **encoder**: an Xception backbone at output stride 16 and ASPP (256 channels; 1×1, three 3×3 atrous branches with
  rates 6, 12, 18, image pooling);
- **decoder** (Figure 3): the stride-4 feature reduced to 32 channels by a 1×1 convolution and rearranged to stride 16
  by space-to-depth (×4 per axis, 32·4^D channels), concatenated with the ASPP output, two large-kernel (7×7)
  depthwise separable convolutions to ``256·4^D`` channels, depth-to-space back to stride 4 (256 channels);
- **heads** (Figure 4): each a 7×7 depthwise separable convolution (256) and a 1×1 convolution — semantic logits;
  keypoint heatmaps of ``K`` object keypoints (the ``2^D`` box corners and the centre of mass; probability that a
  voxel lies within ``radius`` of a keypoint); long-range offsets (every object voxel to each of its keypoints,
  ``K·D``); short-range offsets (voxels near a keypoint to it, ``K·D``); middle-range offsets (from each corner to the
  centre and back, ``2·(K - 1)·D``). All are predicted at stride 4 and upsampled (offsets scaled).

Losses (the paper's, Section 3.3): cross-entropy on the hardest 15 % of the voxels for the semantic map; binary
cross-entropy for the heatmaps; L1 for the offsets inside the keypoint disks (short- and middle-range) or the objects
(long-range), normalised by the disk radius. Inference: the centre heatmap refined by Hough voting of the short-range
offsets, local maxima above ``threshold`` as object centres, and every foreground voxel joins the centre nearest to
where its long-range centre offset points; the class is its voxels' majority (the corners and the middle-range
offsets serve the grouping of PersonLab's multi-keypoint objects; they are trained here and checked by the loss, the
grouping uses the centre).

No parameter figure: the paper gives none and the authors released no model code (only the evaluation metric);
built from Section 3. The paper's encoder is Xception-71; the zoo's Xception-65 is the default here (``backbone``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.backbones.base import ConvNormActD
from medseg.models.blocks import make_conv
from medseg.models.instance.base import InstanceMaps, InstanceSegmentationModel, InstanceTarget
from medseg.models.instance.grouping import panoptic_grouping
from medseg.models.instance.targets import object_targets, semantic_map
from medseg.models.natural.classic._modules import ASPP, resize
from medseg.models.natural.refine._modules import build_backbone
from medseg.models.registry import PaperConfig, register_model

__all__ = ["DeeperLab", "depth_to_space", "space_to_depth"]


def space_to_depth(x: torch.Tensor, block: int) -> torch.Tensor:
    """``(B, C, *S)`` → ``(B, C·block^D, *S/block)``: each ``block^D`` cell becomes channels (D = 2 or 3).

    Channel order as TensorFlow's ``space_to_depth``: the position in the cell outermost, the input channel innermost.
    """
    b, c, *size = x.shape
    d = len(size)
    shape = [b, c]
    for s in size:
        shape += [s // block, block]
    y = x.reshape(shape)
    order = [0, *[3 + 2 * i for i in range(d)], 1, *[2 + 2 * i for i in range(d)]]
    y = y.permute(order)
    return y.reshape(b, c * block ** d, *[s // block for s in size])


def depth_to_space(x: torch.Tensor, block: int) -> torch.Tensor:
    """The inverse of :func:`space_to_depth`."""
    b, c, *size = x.shape
    d = len(size)
    out_c = c // block ** d
    y = x.reshape(b, *[block] * d, out_c, *size)
    order = [0, d + 1]
    for i in range(d):
        order += [d + 2 + i, 1 + i]
    y = y.permute(order)
    return y.reshape(b, out_c, *[s * block for s in size])


def _separable(spatial_dims: int, in_channels: int, out_channels: int, kernel: int = 7) -> nn.Sequential:
    return nn.Sequential(ConvNormActD(spatial_dims, in_channels, in_channels, kernel, groups=in_channels),
                         ConvNormActD(spatial_dims, in_channels, out_channels, 1))


@register_model(
    "deeperlab",
    family="panoptic",
    task="panoptic",
    spatial_dims=(2, 3),
    paper_title="DeeperLab: Single-Shot Image Parser",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=19, kwargs={"backbone": "xception65"}, params=None,
        source="no parameter figure in the paper and no released model code; built from arXiv:1902.05093, "
               "Section 3 (Xception encoder, ASPP, S2D/D2S decoder, semantic and keypoint/offset heads)",
    ),
    divisor=16,
    test_kwargs={"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}, "aspp_channels": 16,
                 "low_channels": 4, "decoder_channels": 8, "head_channels": 8, "radius": 3.0},
)
class DeeperLab(InstanceSegmentationModel):
    """DeeperLab: semantic map, object keypoints and offsets from one fully convolutional network (Yang et al., 2019).

    Shapes: ``(B, in_channels, *spatial)`` (multiples of 16) to ``(B, K + 1 + D, *spatial)`` (semantic logits, the
    refined centre heatmap, the long-range centre offsets), or a loss dict with targets.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        out_channels: Classes including background.
        backbone: A registered backbone (``xception65``; the paper's is Xception-71).
        pretrained_backbone: Local weights for the backbone.
        backbone_kwargs: Extra backbone options.
        aspp_channels: ASPP width (256).
        low_channels: Reduction of the stride-4 feature before space-to-depth (32).
        decoder_channels: Channels after depth-to-space (256).
        head_channels: Width of each head's separable convolution (256).
        radius: Keypoint disk radius in voxels (the heatmaps' and the short/middle-range offsets' support).
        hard_fraction: Hardest fraction of voxels in the semantic loss (0.15).
        threshold: Inference centre threshold.
        nms_kernel: Inference centre NMS window.
    """

    output_kind = "dense"
    target_kinds = ("semantic", "keypoint_heatmaps", "long_range_offsets", "short_range_offsets",
                    "middle_range_offsets")
    loss_terms = ("semantic", "heatmap", "long_range", "short_range", "middle_range")

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        backbone: str = "xception65",
        pretrained_backbone: str | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        aspp_channels: int = 256,
        low_channels: int = 32,
        decoder_channels: int = 256,
        head_channels: int = 256,
        radius: float = 8.0,
        hard_fraction: float = 0.15,
        threshold: float = 0.2,
        nms_kernel: int = 7,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.backbone = build_backbone(backbone, spatial_dims, in_channels, output_stride=16,
                                       pretrained=pretrained_backbone, backbone_kwargs=backbone_kwargs)
        channels = self.backbone.out_channels
        self.low_index = next(i for i, s in enumerate(self.backbone.strides) if s == 4)
        self.aspp = ASPP(spatial_dims, channels[-1], aspp_channels, rates=(6, 12, 18), dropout=0.0)
        self.reduce = ConvNormActD(spatial_dims, channels[self.low_index], low_channels, 1)
        block = 4 ** spatial_dims
        wide = decoder_channels * block
        self.decoder = nn.Sequential(_separable(spatial_dims, aspp_channels + low_channels * block, wide),
                                     _separable(spatial_dims, wide, wide))
        self.keypoints = 2 ** spatial_dims + 1  # box corners, then the centre of mass
        d, k = spatial_dims, self.keypoints
        outputs = {"semantic": out_channels, "heatmap": k, "long_range": k * d, "short_range": k * d,
                   "middle_range": 2 * (k - 1) * d}
        self.heads = nn.ModuleDict({name: nn.Sequential(_separable(spatial_dims, decoder_channels, head_channels),
                                                        make_conv(spatial_dims, head_channels, n, 1))
                                    for name, n in outputs.items()})
        self.input_divisor = (16,) * spatial_dims  # output stride 16; the stride-4 map rearranged by 4
        self.radius, self.hard_fraction = radius, hard_fraction
        self.threshold, self.nms_kernel = threshold, nms_kernel
        self.dense_channels = out_channels + 1 + spatial_dims
        self.vector_channels = {out_channels + 1 + a: a for a in range(spatial_dims)}

    def raw(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head's output at the input's resolution (offsets in voxels)."""
        features = self.backbone(x)
        low = space_to_depth(self.reduce(features[self.low_index]), 4)
        deep = resize(self.aspp(features[-1]), low.shape[2:])
        decoded = depth_to_space(self.decoder(torch.cat([deep, low], dim=1)), 4)
        size = x.shape[2:]
        scale = size[0] / decoded.shape[2]
        out = {}
        for name, head in self.heads.items():
            y = resize(head(decoded), size)
            out[name] = y * scale if name.endswith("range") else y
        return out

    def _centre_heatmap(self, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        """The centre heatmap refined by Hough voting (PersonLab, Section 3.1).

        Each voxel's probability is cast where its short-range offset points; the votes are smoothed and averaged with
        the heatmap itself.
        """
        d = self.spatial_dims
        centre = self.keypoints - 1
        heat = torch.sigmoid(raw["heatmap"][:, centre])
        offsets = raw["short_range"][:, centre * d:(centre + 1) * d]
        votes = torch.zeros_like(heat)
        size = heat.shape[1:]
        grids = torch.meshgrid(*[torch.arange(s, device=heat.device) for s in size], indexing="ij")
        for b in range(heat.shape[0]):
            target = [(g + offsets[b, a]).round().long().clamp(0, s - 1) for a, (g, s) in
                      enumerate(zip(grids, size, strict=True))]
            flat = target[0]
            for a in range(1, d):
                flat = flat * size[a] + target[a]
            votes[b].view(-1).index_add_(0, flat.reshape(-1), heat[b].reshape(-1))
        pool = {2: F.avg_pool2d, 3: F.avg_pool3d}[d]
        smooth = pool(votes[:, None], 3, stride=1, padding=1)[:, 0]
        return 0.5 * (heat + smooth.clamp(max=1.0))

    def forward(self, x: torch.Tensor, targets: Sequence[InstanceTarget] | None = None
                ) -> torch.Tensor | dict[str, torch.Tensor]:
        """The dense output (semantic logits, refined centre heatmap, long-range centre offsets) or the losses."""
        self.check_input(x)
        raw = self.raw(x)
        if targets is not None:
            self.check_targets(x, targets)
            return self.losses(raw, targets)
        d = self.spatial_dims
        centre = self.keypoints - 1
        heat = self._centre_heatmap(raw)
        return torch.cat([raw["semantic"], heat[:, None], raw["long_range"][:, centre * d:(centre + 1) * d]], dim=1)

    def _keypoints(self, mask: torch.Tensor) -> torch.Tensor:
        """The ``2^D`` box corners and the centre of mass of a mask, ``(K, D)``."""
        coords = torch.nonzero(mask).float()
        lo, hi = coords.min(dim=0).values, coords.max(dim=0).values
        corners = [torch.stack([hi[a] if bit else lo[a] for a, bit in enumerate(bits)])
                   for bits in itertools.product((0, 1), repeat=mask.dim())]
        return torch.stack([*corners, coords.mean(dim=0)])

    def losses(self, raw: dict[str, torch.Tensor], targets: Sequence[InstanceTarget]) -> dict[str, torch.Tensor]:
        """The five loss terms (see the module docstring)."""
        d, k = self.spatial_dims, self.keypoints
        sums = {name: raw["semantic"].new_zeros(()) for name in self.loss_terms}
        for b, t in enumerate(targets):
            sem = semantic_map(t)
            pixel = F.cross_entropy(raw["semantic"][b:b + 1].float(), sem[None], reduction="none").flatten()
            n = max(int(pixel.numel() * self.hard_fraction), 1)
            sums["semantic"] = sums["semantic"] + pixel.topk(n).values.mean()
            shape = sem.shape
            grids = torch.stack(torch.meshgrid(*[torch.arange(s, device=sem.device, dtype=torch.float32)
                                                 for s in shape], indexing="ij"))
            heat = torch.zeros((k, *shape), device=sem.device)
            long_goal = torch.zeros((k * d, *shape), device=sem.device)
            long_mask = torch.zeros(shape, device=sem.device)
            short_goal = torch.zeros((k * d, *shape), device=sem.device)
            short_mask = torch.zeros((k, *shape), device=sem.device)
            middle_goal = torch.zeros((2 * (k - 1) * d, *shape), device=sem.device)
            middle_mask = torch.zeros((k - 1, *shape), device=sem.device)
            for mask in object_targets(t).masks:
                points = self._keypoints(mask)
                for j, p in enumerate(points):
                    delta = p.view(d, *([1] * d)) - grids
                    disk = (delta.square().sum(dim=0) <= self.radius ** 2)
                    heat[j] = torch.maximum(heat[j], disk.float())
                    short_goal[j * d:(j + 1) * d] = torch.where(disk, delta, short_goal[j * d:(j + 1) * d])
                    short_mask[j] = torch.maximum(short_mask[j], disk.float())
                    long_goal[j * d:(j + 1) * d] = torch.where(mask, delta, long_goal[j * d:(j + 1) * d])
                    if j < k - 1:  # corner → centre and centre → corner, on the corner's disk
                        to_centre = (points[-1] - p).view(d, *([1] * d)).expand(d, *shape)
                        middle_goal[2 * j * d:(2 * j + 1) * d] = torch.where(disk, to_centre,
                                                                             middle_goal[2 * j * d:(2 * j + 1) * d])
                        middle_goal[(2 * j + 1) * d:(2 * j + 2) * d] = torch.where(
                            disk, -to_centre, middle_goal[(2 * j + 1) * d:(2 * j + 2) * d])
                        middle_mask[j] = torch.maximum(middle_mask[j], disk.float())
                long_mask = torch.maximum(long_mask, mask.float())
            sums["heatmap"] = sums["heatmap"] + F.binary_cross_entropy_with_logits(raw["heatmap"][b].float(), heat)

            def offset_loss(pred: torch.Tensor, goal: torch.Tensor, weight: torch.Tensor, per: int) -> torch.Tensor:
                w = weight.repeat_interleave(per, dim=0) if weight.shape[0] * per == goal.shape[0] else \
                    weight.expand_as(goal)
                return ((pred.float() - goal).abs() * w).sum() / (w.sum().clamp(min=1) * self.radius)

            sums["long_range"] = sums["long_range"] + offset_loss(raw["long_range"][b], long_goal, long_mask[None], 1)
            sums["short_range"] = sums["short_range"] + offset_loss(raw["short_range"][b], short_goal, short_mask, d)
            sums["middle_range"] = sums["middle_range"] + offset_loss(raw["middle_range"][b], middle_goal,
                                                                      middle_mask, 2 * d)
        return {name: value / len(targets) for name, value in sums.items()}

    @torch.no_grad()
    def group(self, dense: torch.Tensor, **options: Any) -> list[InstanceMaps]:
        """Instances of a dense output: centres, long-range offsets, majority classes."""
        k = self.out_channels
        settings = {"threshold": self.threshold, "nms_kernel": self.nms_kernel, "top_k": 200}
        settings.update(options)
        return [panoptic_grouping(o[:k], o[k], o[k + 1:], **settings) for o in dense]
