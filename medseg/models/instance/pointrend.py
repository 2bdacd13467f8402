"""PointRend: masks rendered by a point head at adaptively chosen points (Kirillov et al., CVPR 2020), 2D.

Paper: A. Kirillov, Y. Wu, K. He, R. Girshick, "PointRend: Image Segmentation as Rendering", CVPR 2020
(arXiv:1912.08193), Sections 3-4 and Figure 4; Mask R-CNN R50-FPN (:mod:`medseg.models.instance.mask_rcnn`) with
its mask head replaced as in the authors' code (Detectron2 ``projects/PointRend``, ``pointrend_rcnn_R_50_FPN_3x_coco
.yaml``):

- **coarse mask head**: each box's features sampled on a regular 14×14 grid of P2 (one sample per cell), a 2×2
  stride-2 convolution (ReLU), two fully connected layers of 1024 (ReLU) and a linear layer to a 7×7 mask per class;
- **point head** (:class:`PointHead`): a multi-layer perceptron shared by all points — three layers of 256 (ReLU), the
  coarse prediction at the point concatenated to every layer's input — on the point's fine-grained P2 feature and
  its coarse prediction, giving one logit per class;
- **training**: the coarse mask's binary cross-entropy (against the ground truth at 7×7) plus the point loss on 14²
  points per box chosen by uncertainty (3× oversampling, 75 % most uncertain, 25 % random; uncertainty = −|logit|),
  labelled by the ground-truth mask at the point;
- **inference** (adaptive subdivision): the point head evaluated on a regular 28×28 grid, then three times: upsample
  ×2 bilinearly and re-evaluate the 28² most uncertain points, to a 224×224 mask per detection.

:func:`uncertain_points` and :func:`point_sample` work on any coarse map — the point head refines semantic maps the
same way (the paper's Section 4.2).

Paper configuration and parameter figure: the authors' code at that configuration (80 COCO classes + background),
built with Detectron2 and counted: 60,161,792 parameters (backbone BN frozen, as buffers). Ours trains the backbone's
BN (+53,120).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from torch import nn

from medseg.models.instance.mask_rcnn import SMALL, MaskRCNN
from medseg.models.instance.ops import paste_masks, roi_align
from medseg.models.instance.rcnn import MaskBranch, MaskTargets, roi_mask_targets
from medseg.models.registry import PaperConfig, register_model

__all__ = ["PointHead", "PointRend", "PointRendMaskBranch", "point_sample", "uncertain_points"]


def point_sample(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``maps`` ``(N, C, *S)`` at ``points`` ``(N, P, D)``, as ``(N, P, C)``.

    Points are in ``[0, 1]`` per axis (array order), cell centres at ``(i + 0.5) / S``; outside reads zero.
    """
    d = maps.dim() - 2
    grid = (2 * points - 1).flip(-1).view(points.shape[0], points.shape[1], *([1] * (d - 1)), d)
    sampled = F.grid_sample(maps, grid.to(maps.dtype), mode="bilinear", align_corners=False)
    return sampled.reshape(maps.shape[0], maps.shape[1], points.shape[1]).transpose(1, 2)


def regular_points(n: int, side: int, dims: int, device: torch.device) -> torch.Tensor:
    """The cell centres of a regular ``side^D`` grid in ``[0, 1]^D``, for ``n`` regions: ``(n, side^D, D)``."""
    axis = (torch.arange(side, device=device, dtype=torch.float32) + 0.5) / side
    mesh = torch.meshgrid(*[axis] * dims, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)[None].expand(n, -1, -1)


def uncertain_points(coarse: torch.Tensor, uncertainty: Callable[[torch.Tensor], torch.Tensor], count: int,
                     oversample: int = 3, importance: float = 0.75) -> torch.Tensor:
    """Training points of each region (PointRend, Section 3.1), ``(N, count, D)``.

    ``oversample · count`` random points, the ``importance · count`` most uncertain of them, and random ones for the
    rest. ``coarse``: ``(N, C, *S)``; ``uncertainty`` maps the points' sampled logits ``(N, P, C)`` to ``(N, P)``.
    """
    n, d = coarse.shape[0], coarse.dim() - 2
    candidates = torch.rand(n, count * oversample, d, device=coarse.device)
    scores = uncertainty(point_sample(coarse, candidates))
    k = int(importance * count)
    index = scores.topk(k, dim=1).indices
    chosen = torch.gather(candidates, 1, index[..., None].expand(-1, -1, d))
    return torch.cat([chosen, torch.rand(n, count - k, d, device=coarse.device)], dim=1)


def points_in_boxes(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Box-relative points ``(R, P, D)`` in ``[0, 1]`` as image coordinates (``boxes`` ``(R, 2D)``)."""
    d = points.shape[-1]
    return boxes[:, None, :d] + points * (boxes[:, None, d:] - boxes[:, None, :d])


def sample_at_image_points(maps: torch.Tensor, image_points: torch.Tensor, image_shape: Sequence[int]
                           ) -> torch.Tensor:
    """Values of ``maps`` ``(1, C, *s)`` covering an image of ``image_shape`` at image coordinates ``(R, P, D)``."""
    extent = torch.tensor([float(s) for s in image_shape], device=image_points.device)
    normalised = image_points / extent
    r = normalised.shape[0]
    flat = normalised.reshape(1, -1, normalised.shape[-1])
    return point_sample(maps, flat).reshape(r, -1, maps.shape[1])


class PointHead(nn.Module):
    """PointRend's point head: a per-point MLP on fine-grained features and coarse predictions (Figure 4).

    Shapes: fine ``(R, P, C_fine)`` and coarse ``(R, P, K)`` to logits ``(R, P, K)``.

    Args:
        fine_channels: Channels of the fine-grained features (256 of P2).
        classes: Coarse prediction channels (the foreground classes).
        width: Width of the layers (256).
        layers: Number of layers (3).
    """

    def __init__(self, fine_channels: int, classes: int, width: int = 256, layers: int = 3) -> None:
        super().__init__()
        self.fcs = nn.ModuleList()
        width_in = fine_channels + classes
        for _ in range(layers):
            self.fcs.append(nn.Linear(width_in, width))
            width_in = width + classes
        self.predictor = nn.Linear(width_in, classes)
        for fc in self.fcs:
            nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Point logits of the concatenated features (the coarse prediction joins every layer)."""
        x = torch.cat([fine, coarse], dim=-1)
        for fc in self.fcs:
            x = torch.cat([F.relu(fc(x)), coarse], dim=-1)
        return self.predictor(x)


class PointRendMaskBranch(MaskBranch):
    """The coarse mask head and the point head, with point-sampled training and subdivision inference."""

    def __init__(self, spatial_dims: int, channels: int, num_classes: int, pool: int = 14, coarse: int = 7,
                 representation: int = 1024, point_width: int = 256, point_layers: int = 3,
                 train_points: int = 196, subdivision_steps: int = 5, subdivision_points: int = 784) -> None:
        nn.Module.__init__(self)
        self.spatial_dims, self.classes, self.pool, self.coarse_side = spatial_dims, num_classes - 1, pool, coarse
        self.reduce = Conv[Conv.CONV, spatial_dims](channels, channels, kernel_size=2, stride=2)
        self.fc1 = nn.Linear(channels * (pool // 2) ** spatial_dims, representation)
        self.fc2 = nn.Linear(representation, representation)
        self.prediction = nn.Linear(representation, self.classes * coarse ** spatial_dims)
        nn.init.normal_(self.prediction.weight, std=0.001)
        nn.init.zeros_(self.prediction.bias)
        self.point_head = PointHead(channels, self.classes, point_width, point_layers)
        self.train_points = train_points
        self.subdivision_points = subdivision_points
        side, steps = coarse, subdivision_steps
        while 4 * side ** spatial_dims <= subdivision_points:
            side, steps = side * 2, steps - 1
        self.initial_side, self.steps = side, max(steps, 0)

    def coarse_logits(self, p2: torch.Tensor, boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Coarse masks ``(R, K - 1, *coarse)`` of the boxes of every image (P2 sampled on a regular grid)."""
        rois = torch.cat([torch.cat([torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device), b], dim=1)
                          for i, b in enumerate(boxes)])
        x = F.relu(self.reduce(roi_align(p2, rois, self.pool, 0.25, 1, True)))
        x = F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))
        return self.prediction(x).view(-1, self.classes, *[self.coarse_side] * self.spatial_dims)

    def _point_logits(self, p2: torch.Tensor, image_shape: Sequence[int], boxes: Sequence[torch.Tensor],
                      coarse: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        fine, start = [], 0
        for i, b in enumerate(boxes):
            n = b.shape[0]
            if n:
                fine.append(sample_at_image_points(p2[i:i + 1], points_in_boxes(points[start:start + n], b),
                                                   image_shape))
            start += n
        return self.point_head(torch.cat(fine), point_sample(coarse, points))

    def loss(self, features: Sequence[torch.Tensor], targets: MaskTargets) -> torch.Tensor:
        """Coarse mask loss plus the point loss."""
        p2 = features[0]
        boxes = targets.boxes
        total = sum(b.shape[0] for b in boxes)
        if total == 0:
            return sum(p.sum() for p in self.parameters()) * 0 + p2.sum() * 0
        coarse = self.coarse_logits(p2, boxes)
        index = torch.arange(total, device=coarse.device)
        cls = targets.labels - 1
        goal = roi_mask_targets(targets.masks, torch.cat(boxes), self.coarse_side)
        coarse_loss = F.binary_cross_entropy_with_logits(coarse[index, cls], goal)
        with torch.no_grad():
            points = uncertain_points(coarse, lambda v: -v[index, :, cls].abs(), self.train_points)
            image_points = points_in_boxes(points, torch.cat(boxes))
            shape = targets.masks.shape[1:]
            labels = torch.stack([
                sample_at_image_points(m[None, None].float(), image_points[k:k + 1], shape)[0, :, 0]
                for k, m in enumerate(targets.masks)])
        image_shape = [s * 4 for s in p2.shape[2:]]
        logits = self._point_logits(p2, image_shape, boxes, coarse, points)
        point_loss = F.binary_cross_entropy_with_logits(logits[index, :, cls], labels)
        return coarse_loss + point_loss

    def predict(self, features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor],
                labels: Sequence[torch.Tensor], image_shape: Sequence[int]) -> list[torch.Tensor]:
        """Masks of the detections by adaptive subdivision, pasted into the image."""
        p2 = features[0]
        total = sum(b.shape[0] for b in boxes)
        if total == 0:
            return [torch.zeros((0, *[int(s) for s in image_shape]), dtype=torch.bool, device=p2.device)
                    for _ in boxes]
        coarse = self.coarse_logits(p2, boxes)
        cls = torch.cat(list(labels)) - 1
        index = torch.arange(total, device=p2.device)
        d = self.spatial_dims
        padded = [s * 4 for s in p2.shape[2:]]
        side = self.initial_side
        points = regular_points(total, side, d, p2.device)
        masks = self._point_logits(p2, padded, boxes, coarse, points).transpose(1, 2).reshape(
            total, self.classes, *[side] * d)
        for _ in range(self.steps):
            masks = F.interpolate(masks, scale_factor=2, mode="bilinear" if d == 2 else "trilinear",
                                  align_corners=False)
            side *= 2
            uncertainty = -masks[index, cls].abs().flatten(1)
            k = min(self.subdivision_points, uncertainty.shape[1])
            chosen = uncertainty.topk(k, dim=1).indices
            coords = torch.stack([(chosen // side ** (d - 1 - a)) % side for a in range(d)], dim=-1)
            points = (coords.float() + 0.5) / side
            logits = self._point_logits(p2, padded, boxes, coarse, points)  # (R, k, K - 1)
            flat = masks.flatten(2)
            flat.scatter_(2, chosen[:, None, :].expand(-1, self.classes, -1), logits.transpose(1, 2))
            masks = flat.view_as(masks)
        probs = torch.sigmoid(masks[index, cls])
        out, start = [], 0
        for b in boxes:
            n = b.shape[0]
            out.append(paste_masks(probs[start:start + n].float(), b, image_shape))
            start += n
        return out


@register_model(
    "pointrend",
    family="instance",
    task="instance",
    spatial_dims=(2,),
    paper_title="PointRend: Image Segmentation as Rendering",
    paper_year=2020,
    paper=PaperConfig(
        spatial_dims=2, in_channels=3, out_channels=81, kwargs={"backbone": "resnet50"}, params=60_161_792,
        source="authors' code, facebookresearch/detectron2 projects/PointRend configs/InstanceSegmentation/"
               "pointrend_rcnn_R_50_FPN_3x_coco.yaml (80 classes + background), built and counted (frozen "
               "backbone BN); ours trains that BN: +53,120",
    ),
    divisor=32,
    test_kwargs={**SMALL, "point_width": 16, "train_points": 16, "subdivision_points": 64, "subdivision_steps": 2},
)
class PointRend(MaskRCNN):
    """PointRend: Mask R-CNN whose masks a point head renders at adaptively chosen points (Kirillov et al., 2020).

    Shapes: as :class:`~medseg.models.instance.mask_rcnn.MaskRCNN` (2D).

    Args:
        spatial_dims: 2.
        in_channels: Input channels.
        out_channels: Classes including background.
        backbone: A registered ResNet (``resnet50``).
        pretrained_backbone: Local torchvision/timm weights for the backbone.
        backbone_kwargs: Extra backbone options.
        fpn_channels: Pyramid width (256).
        anchor_sizes: Anchor size per level P2..P6.
        aspect_ratios: Anchor aspect ratios.
        representation: Width of the box head's and the coarse mask head's fully connected layers (1024).
        rpn_batch: Anchors sampled per image for the RPN loss.
        roi_batch: RoIs sampled per image for the head losses.
        pre_nms_topk: RPN proposals per level before NMS, (training, inference).
        post_nms_topk: RPN proposals per image after NMS, (training, inference).
        score_threshold: Inference score threshold.
        detections_per_image: Inference detections kept per image.
        point_width: Width of the point head (256).
        train_points: Points per box in training (196).
        subdivision_steps: Subdivision steps from the 7×7 coarse mask (5; the first ones are merged into a regular
            grid of at most ``subdivision_points``).
        subdivision_points: Points re-evaluated per step (784).
        mask_channels: Unused (the heads are fully connected); accepted for Mask R-CNN's small variants.
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
        fpn_channels: int = 256,
        anchor_sizes: Sequence[float] | None = None,
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        representation: int = 1024,
        rpn_batch: int = 256,
        roi_batch: int = 512,
        pre_nms_topk: Sequence[int] = (2000, 1000),
        post_nms_topk: Sequence[int] = (1000, 1000),
        score_threshold: float = 0.05,
        detections_per_image: int = 100,
        point_width: int = 256,
        train_points: int = 196,
        subdivision_steps: int = 5,
        subdivision_points: int = 784,
        mask_channels: int = 256,
    ) -> None:
        self._point_options = {"point_width": point_width, "train_points": train_points,
                               "subdivision_steps": subdivision_steps, "subdivision_points": subdivision_points}
        super().__init__(spatial_dims, in_channels, out_channels, backbone=backbone,
                         pretrained_backbone=pretrained_backbone, backbone_kwargs=backbone_kwargs,
                         fpn_channels=fpn_channels, anchor_sizes=anchor_sizes, aspect_ratios=aspect_ratios,
                         representation=representation, mask_channels=mask_channels, rpn_batch=rpn_batch,
                         roi_batch=roi_batch, pre_nms_topk=pre_nms_topk, post_nms_topk=post_nms_topk,
                         score_threshold=score_threshold, detections_per_image=detections_per_image)

    def build_mask_branch(self, mask_channels: int) -> MaskBranch:
        """The coarse mask head and the point head."""
        return PointRendMaskBranch(self.spatial_dims, self.fpn_channels, self.out_channels, pool=14, coarse=7,
                                   representation=self.representation, **self._point_options)
