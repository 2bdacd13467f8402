"""The parts of the two-stage detectors (Mask R-CNN and the networks built on it), in 2D and 3D.

He, Gkioxari, Dollár, Girshick, "Mask R-CNN", ICCV 2017 (arXiv:1703.06870), with the feature pyramid of Lin et al.,
"Feature Pyramid Networks for Object Detection", CVPR 2017 (arXiv:1612.03144). Settings follow the authors' code
(Detectron, and Detectron2's ``Base-RCNN-FPN.yaml`` and ``config/defaults.py``):

- anchors: one size per pyramid level P2..P6 (32, 64, 128, 256, 512), aspect ratios 0.5, 1, 2, centred on the
  cells' corners (offset 0); in 3D the aspect ratio is the first axis over the others at the same volume;
- RPN: a shared 3×3 convolution + ReLU, 1×1 objectness and box-delta convolutions; anchors with IoU ≥ 0.7 are
  positive (and each ground-truth box's best anchors), < 0.3 negative; 256 anchors per image, half positive at most;
  binary cross-entropy and L1 box loss, both over the sampled anchors; proposals: the top 2000 (1000 at test) per
  level, NMS at 0.7, the top 1000 per image;
- RoI heads: proposals plus the ground-truth boxes, IoU ≥ 0.5 foreground, 512 RoIs per image, a quarter foreground
  at most; RoIAlign (aligned, 2 samples per bin) on level ``floor(4 + log2(size / 224))`` (clamped to P2..P5; size
  is the square (cube) root of the box area (volume)); box head: two fully connected layers of 1024 on 7×7 RoIs,
  softmax classification and class-specific box deltas (weights 10, 5); mask head: four 3×3 convolutions of 256 on
  14×14 RoIs, a 2×2 transposed convolution, a 1×1 convolution to one 28×28 mask per class, binary cross-entropy on
  the ground-truth class (the ground-truth mask RoIAligned to 28×28, > 0.5);
- inference: class scores > 0.05, NMS at 0.5 per class, 100 detections per image, their masks pasted into the
  image at > 0.5.

In 3D the RoIs are 4×4×4 for boxes and 7×7×7 for masks by default (a 7³×256 input to a 1024-wide layer would
take 90M parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from torch import nn

from medseg.models.blocks import make_conv
from medseg.models.instance.base import Detections
from medseg.models.instance.ops import BoxCoder, batched_nms, box_iou, box_volume, clip_boxes, paste_masks, roi_align
from medseg.models.instance.targets import ObjectTargets

__all__ = [
    "RPN",
    "AnchorGenerator",
    "BoxBranch",
    "MaskBranch",
    "Matcher",
    "MultiScaleRoIAlign",
    "RoIHeads",
    "sample_labels",
]


class AnchorGenerator(nn.Module):
    """Anchors of every pyramid level: for each cell (row-major) its ``A`` anchors, as ``(cells · A, 2D)`` boxes.

    Args:
        spatial_dims: 2 or 3.
        sizes: Anchor size per level (square root of the area in 2D, cube root of the volume in 3D).
        aspect_ratios: First axis over the others (2D: height over width).
        strides: Stride of each level.
    """

    def __init__(self, spatial_dims: int, sizes: Sequence[float], aspect_ratios: Sequence[float],
                 strides: Sequence[int]) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.sizes = [float(s) for s in sizes]
        self.ratios = [float(r) for r in aspect_ratios]
        self.strides = [int(s) for s in strides]

    @property
    def num_anchors(self) -> int:
        """Anchors per cell."""
        return len(self.ratios)

    def cell_anchors(self, size: float) -> torch.Tensor:
        """The ``A`` anchors of one cell centred at 0."""
        d = self.spatial_dims
        rows = []
        for r in self.ratios:
            first = size * r ** ((d - 1) / d)
            other = size * r ** (-1 / d)
            half = torch.tensor([first] + [other] * (d - 1)) / 2
            rows.append(torch.cat([-half, half]))
        return torch.stack(rows)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Anchors for the feature maps ``features`` (one ``(B, C, *spatial)`` per level)."""
        out = []
        for f, size, stride in zip(features, self.sizes, self.strides, strict=True):
            shape = f.shape[2:]
            axes = [torch.arange(s, device=f.device, dtype=torch.float32) * stride for s in shape]
            mesh = torch.meshgrid(*axes, indexing="ij")
            centres = torch.stack([m.reshape(-1) for m in mesh], dim=1)
            shifts = torch.cat([centres, centres], dim=1)
            cell = self.cell_anchors(size).to(f.device)
            out.append((shifts[:, None, :] + cell[None]).reshape(-1, 2 * self.spatial_dims))
        return out


class Matcher:
    """Assign each prediction the ground truth it overlaps most.

    1 (foreground) at IoU ≥ ``high``, 0 below ``low``, -1 (ignored) between; with ``allow_low_quality`` each ground
    truth's best predictions are foreground too.
    """

    def __init__(self, low: float, high: float, allow_low_quality: bool) -> None:
        self.low, self.high, self.allow_low_quality = low, high, allow_low_quality

    def __call__(self, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``iou`` ``(G, P)`` → matched ground-truth index and label per prediction."""
        if iou.shape[0] == 0:
            n = iou.shape[1]
            return (torch.zeros(n, dtype=torch.long, device=iou.device),
                    torch.zeros(n, dtype=torch.long, device=iou.device))
        best, index = iou.max(dim=0)
        labels = torch.full_like(index, -1)
        labels[best < self.low] = 0
        labels[best >= self.high] = 1
        if self.allow_low_quality:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            hit = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=0)
            labels[hit] = 1
        return index, labels


def sample_labels(labels: torch.Tensor, total: int, positive_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Random foreground (``labels > 0``) and background (``== 0``) indices.

    At most ``total · fraction`` foreground, the rest background (Detectron's ``subsample_labels``).
    """
    positive = torch.nonzero(labels > 0).flatten()
    negative = torch.nonzero(labels == 0).flatten()
    n_pos = min(positive.numel(), int(total * positive_fraction))
    n_neg = min(negative.numel(), total - n_pos)
    pos = positive[torch.randperm(positive.numel(), device=labels.device)[:n_pos]]
    neg = negative[torch.randperm(negative.numel(), device=labels.device)[:n_neg]]
    return pos, neg


class RPNHead(nn.Module):
    """A shared 3×3 convolution + ReLU, then 1×1 objectness (``A``) and box-delta (``A · 2D``) convolutions."""

    def __init__(self, spatial_dims: int, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = make_conv(spatial_dims, channels, channels, 3)
        self.objectness = make_conv(spatial_dims, channels, num_anchors, 1)
        self.deltas = make_conv(spatial_dims, channels, num_anchors * 2 * spatial_dims, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: objectness ``(B, cells · A)`` and deltas ``(B, cells · A, 2D)`` (cells row-major)."""
        logits, deltas = [], []
        for f in features:
            t = F.relu(self.conv(f))
            o = self.objectness(t)  # (B, A, *s)
            b, a = o.shape[:2]
            logits.append(o.movedim(1, -1).reshape(b, -1))
            d = self.deltas(t).reshape(b, a, -1, *t.shape[2:])  # (B, A, 2D, *s)
            deltas.append(d.movedim(1, -1).movedim(1, -1).reshape(b, -1, d.shape[2]))
        return logits, deltas


class RPN(nn.Module):
    """The region proposal network (Ren et al., NeurIPS 2015) on a feature pyramid (see the module docstring).

    Args:
        spatial_dims: 2 or 3.
        channels: Pyramid width.
        anchors: The anchor generator.
        pre_nms_topk: Proposals per level before NMS, (training, inference).
        post_nms_topk: Proposals per image after NMS, (training, inference).
        nms_threshold: NMS IoU.
        batch_per_image: Anchors sampled per image for the loss.
        positive_fraction: Largest fraction of foreground among them.
    """

    def __init__(self, spatial_dims: int, channels: int, anchors: AnchorGenerator,
                 pre_nms_topk: tuple[int, int] = (2000, 1000), post_nms_topk: tuple[int, int] = (1000, 1000),
                 nms_threshold: float = 0.7, batch_per_image: int = 256, positive_fraction: float = 0.5) -> None:
        super().__init__()
        self.anchors = anchors
        self.head = RPNHead(spatial_dims, channels, anchors.num_anchors)
        self.coder = BoxCoder((1.0, 1.0))
        self.matcher = Matcher(0.3, 0.7, allow_low_quality=True)
        self.pre_nms_topk, self.post_nms_topk = pre_nms_topk, post_nms_topk
        self.nms_threshold = nms_threshold
        self.batch_per_image, self.positive_fraction = batch_per_image, positive_fraction

    def forward(self, features: Sequence[torch.Tensor], image_shape: Sequence[int],
                gt_boxes: Sequence[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Proposals per image (``(P, 2D)``, detached) and, with ``gt_boxes``, the losses."""
        anchors = self.anchors(features)
        logits, deltas = self.head(features)
        training = gt_boxes is not None
        proposals = self._proposals(anchors, logits, deltas, image_shape, training)
        if not training:
            return proposals, {}
        assert gt_boxes is not None
        return proposals, self._losses(torch.cat(anchors), torch.cat(logits, 1), torch.cat(deltas, 1), gt_boxes)

    @torch.no_grad()
    def _proposals(self, anchors: list[torch.Tensor], logits: list[torch.Tensor], deltas: list[torch.Tensor],
                   image_shape: Sequence[int], training: bool) -> list[torch.Tensor]:
        pre, post = (self.pre_nms_topk[0], self.post_nms_topk[0]) if training else (self.pre_nms_topk[1],
                                                                                      self.post_nms_topk[1])
        out = []
        for b in range(logits[0].shape[0]):
            boxes_all, scores_all, levels = [], [], []
            for level, (a, lg, dl) in enumerate(zip(anchors, logits, deltas, strict=True)):
                k = min(pre, lg.shape[1])
                scores, index = lg[b].detach().float().topk(k)
                boxes = clip_boxes(self.coder.decode(dl[b, index].detach().float(), a[index]), image_shape)
                boxes_all.append(boxes)
                scores_all.append(scores)
                levels.append(torch.full((k,), level, dtype=torch.long, device=boxes.device))
            boxes, scores, level = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(levels)
            d = boxes.shape[1] // 2
            valid = ((boxes[:, d:] - boxes[:, :d]) > 0).all(dim=1) & torch.isfinite(scores)
            boxes, scores, level = boxes[valid], scores[valid], level[valid]
            keep = batched_nms(boxes, scores, level, self.nms_threshold)[:post]
            out.append(boxes[keep])
        return out

    def _losses(self, anchors: torch.Tensor, logits: torch.Tensor, deltas: torch.Tensor,
                gt_boxes: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        objectness, regression = [], []
        sampled_total = 0
        for b, gt in enumerate(gt_boxes):
            index, labels = self.matcher(box_iou(gt, anchors))
            pos, neg = sample_labels(labels, self.batch_per_image, self.positive_fraction)
            chosen = torch.cat([pos, neg])
            target = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).to(logits.dtype)
            objectness.append(F.binary_cross_entropy_with_logits(logits[b, chosen], target, reduction="sum"))
            if pos.numel():
                goal = self.coder.encode(gt[index[pos]], anchors[pos])
                regression.append(F.l1_loss(deltas[b, pos].float(), goal, reduction="sum"))
            sampled_total += chosen.numel()
        norm = max(sampled_total, 1)
        zero = logits.sum() * 0
        return {"rpn_objectness": sum(objectness, zero) / norm, "rpn_boxes": sum(regression, zero) / norm}


def assign_levels(boxes: torch.Tensor, num_levels: int, canonical_size: float = 224.0,
                  canonical_level: int = 4, min_level: int = 2) -> torch.Tensor:
    """FPN's level of each RoI (Lin et al., CVPR 2017, Eq. 1), as an index ``0 … num_levels - 1`` from P2."""
    d = boxes.shape[1] // 2
    size = box_volume(boxes).clamp(min=1e-6) ** (1.0 / d)
    level = torch.floor(canonical_level + torch.log2(size / canonical_size + 1e-8))
    return (level.clamp(min_level, min_level + num_levels - 1) - min_level).long()


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign of each box on its FPN level (:func:`assign_levels`).

    Args:
        output_size: Bins per axis.
        strides: Stride of each level (P2 first).
        sampling_ratio: Samples per bin and axis (Detectron's Mask R-CNN: 2).
    """

    def __init__(self, output_size: int, strides: Sequence[int], sampling_ratio: int = 2) -> None:
        super().__init__()
        self.output_size = int(output_size)
        self.strides = [int(s) for s in strides]
        self.sampling_ratio = sampling_ratio

    def forward(self, features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(R, C, *output)`` for the boxes of all images, concatenated in image order."""
        rois = _rois(boxes)
        dims = features[0].dim() - 2
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], *[self.output_size] * dims))
        if rois.shape[0] == 0:
            return out
        levels = assign_levels(rois[:, 1:], len(features))
        for level, (f, stride) in enumerate(zip(features, self.strides, strict=True)):
            index = torch.nonzero(levels == level).flatten()
            if index.numel():
                out[index] = roi_align(f, rois[index], self.output_size, 1.0 / stride, self.sampling_ratio)
        return out


def _rois(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(R, 1 + 2D)`` RoIs (image index first) of per-image boxes."""
    parts = [torch.cat([torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device), b], dim=1)
             for i, b in enumerate(boxes)]
    return torch.cat(parts)


class BoxBranch(nn.Module):
    """Box head.

    ``num_fc`` fully connected layers with ReLU on the flattened RoIs, then class scores (``K``) and class-specific box
    deltas (``(K - 1) · 2D``); Detectron2's ``FastRCNNConvFCHead`` + ``FastRCNNOutputLayers``.

    Args:
        spatial_dims: 2 or 3.
        channels: RoI feature channels.
        pool: RoI bins per axis.
        num_classes: Classes including background.
        representation: Width of the fully connected layers (1024).
        num_fc: Fully connected layers (2).
    """

    def __init__(self, spatial_dims: int, channels: int, pool: int, num_classes: int, representation: int = 1024,
                 num_fc: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = channels * pool ** spatial_dims
        for _ in range(num_fc):
            layers += [nn.Linear(width, representation), nn.ReLU(inplace=True)]
            width = representation
        self.fcs = nn.Sequential(*layers)
        self.cls_score = nn.Linear(width, num_classes)
        self.bbox_pred = nn.Linear(width, (num_classes - 1) * 2 * spatial_dims)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``(R, K)`` and deltas ``(R, (K - 1) · 2D)`` of pooled RoIs ``(R, C, *pool)``."""
        x = self.fcs(rois.flatten(1))
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """Mask head.

    ``num_conv`` 3×3 convolutions + ReLU, a 2× transposed convolution + ReLU, a 1×1 convolution to one mask per
    foreground class (Mask R-CNN, Figure 4 right).
    """

    def __init__(self, spatial_dims: int, channels: int, num_classes: int, conv_channels: int = 256,
                 num_conv: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = channels
        for _ in range(num_conv):
            layers += [make_conv(spatial_dims, width, conv_channels, 3), nn.ReLU(inplace=True)]
            width = conv_channels
        self.convs = nn.Sequential(*layers)
        self.deconv = Conv[Conv.CONVTRANS, spatial_dims](width, conv_channels, kernel_size=2, stride=2)
        self.predictor = make_conv(spatial_dims, conv_channels, num_classes - 1, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)

    def forward(self, rois: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(R, K - 1, *2·pool)`` of pooled RoIs ``(R, C, *pool)``."""
        return self.predictor(F.relu(self.deconv(self.convs(rois))))


class MaskTargets(NamedTuple):
    """Per foreground RoI of a batch: its box, class and ground-truth mask (on the image grid)."""

    boxes: list[torch.Tensor]
    labels: torch.Tensor
    masks: torch.Tensor


def roi_mask_targets(masks: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Ground-truth masks ``(R, *spatial)`` RoIAligned into their boxes at ``size`` per axis, thresholded at 0.5."""
    dims = masks.dim() - 1
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *[size] * dims), dtype=torch.float32)
    rois = torch.cat([torch.arange(masks.shape[0], device=masks.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
    return (roi_align(masks[:, None].float(), rois, size, 1.0, 2, True)[:, 0] >= 0.5).float()


class MaskBranch(nn.Module):
    """Mask R-CNN's mask branch: RoIAlign on the pyramid, :class:`MaskHead`, class-specific binary cross-entropy.

    Subclasses (PANet's fused head, PointRend's point head) replace :meth:`loss` and :meth:`predict`.
    """

    def __init__(self, spatial_dims: int, channels: int, num_classes: int, strides: Sequence[int], pool: int,
                 conv_channels: int = 256, num_conv: int = 4) -> None:
        super().__init__()
        self.pooler = MultiScaleRoIAlign(pool, strides)
        self.head = MaskHead(spatial_dims, channels, num_classes, conv_channels, num_conv)
        self.pool = pool

    def logits(self, features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mask logits ``(R, K - 1, *M)`` of the boxes of every image."""
        return self.head(self.pooler(features, boxes))

    def loss(self, features: Sequence[torch.Tensor], targets: MaskTargets) -> torch.Tensor:
        """Mean binary cross-entropy of the ground-truth class's mask over the RoIs' mask cells."""
        logits = self.logits(features, targets.boxes)
        if logits.shape[0] == 0:
            return logits.sum() * 0
        picked = logits[torch.arange(logits.shape[0], device=logits.device), targets.labels - 1]
        goal = roi_mask_targets(targets.masks, torch.cat(targets.boxes), picked.shape[-1])
        return F.binary_cross_entropy_with_logits(picked, goal)

    def predict(self, features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor],
                labels: Sequence[torch.Tensor], image_shape: Sequence[int]) -> list[torch.Tensor]:
        """Boolean masks ``(N, *image_shape)`` of the detections of every image."""
        logits = self.logits(features, boxes)
        out, start = [], 0
        for b, lab in zip(boxes, labels, strict=True):
            n = b.shape[0]
            part = logits[start:start + n]
            start += n
            probs = torch.sigmoid(part[torch.arange(n, device=part.device), lab - 1]) if n else part[:, 0]
            out.append(paste_masks(probs.float(), b, image_shape))
        return out


class RoIHeads(nn.Module):
    """Sampling, box classification and regression, the mask branch and the inference post-processing.

    Args:
        spatial_dims: 2 or 3.
        num_classes: Classes including background.
        box_pooler: RoI pooling for the box head.
        box_branch: The box head (class logits and deltas of pooled RoIs).
        mask_branch: The mask branch.
        batch_per_image: RoIs sampled per image (512).
        positive_fraction: Largest foreground fraction (0.25).
        score_threshold: Inference score threshold (0.05).
        nms_threshold: Inference NMS IoU per class (0.5).
        detections_per_image: Inference detections kept (100).
    """

    def __init__(self, spatial_dims: int, num_classes: int, box_pooler: nn.Module, box_branch: nn.Module,
                 mask_branch: MaskBranch, batch_per_image: int = 512, positive_fraction: float = 0.25,
                 score_threshold: float = 0.05, nms_threshold: float = 0.5, detections_per_image: int = 100) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.box_pooler = box_pooler
        self.box_branch = box_branch
        self.mask_branch = mask_branch
        self.coder = BoxCoder((10.0, 5.0))
        self.matcher = Matcher(0.5, 0.5, allow_low_quality=False)
        self.batch_per_image, self.positive_fraction = batch_per_image, positive_fraction
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.detections_per_image = detections_per_image

    def box_outputs(self, features: Sequence[torch.Tensor], boxes: Sequence[torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and deltas of the boxes of every image."""
        return self.box_branch(self.box_pooler(features, boxes))

    def losses(self, features: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
               objects: Sequence[ObjectTargets]) -> dict[str, torch.Tensor]:
        """Classification, box-regression and mask losses on sampled RoIs."""
        sampled, classes, goals, matched = [], [], [], []
        mask_boxes, mask_labels, mask_gt = [], [], []
        for props, obj in zip(proposals, objects, strict=True):
            props = torch.cat([props, obj.boxes.to(props.dtype)])
            index, labels = self.matcher(box_iou(obj.boxes.to(props.dtype), props))
            if obj.labels.numel():
                labels = torch.where(labels > 0, obj.labels[index], labels)
            pos, neg = sample_labels(labels, self.batch_per_image, self.positive_fraction)
            chosen = torch.cat([pos, neg])
            sampled.append(props[chosen])
            classes.append(torch.cat([labels[pos], torch.zeros_like(neg)]))
            matched.append(index[chosen])
            goals.append(self.coder.encode(obj.boxes[index[pos]].to(props.dtype), props[pos]) if pos.numel()
                         else props.new_zeros((0, 2 * self.spatial_dims)))
            mask_boxes.append(props[pos])
            mask_labels.append(labels[pos])
            mask_gt.append(obj.masks[index[pos]])
        logits, deltas = self.box_outputs(features, sampled)
        target_classes = torch.cat(classes)
        classification = F.cross_entropy(logits.float(), target_classes) if logits.shape[0] else logits.sum() * 0
        fg = torch.nonzero(target_classes > 0).flatten()
        d2 = 2 * self.spatial_dims
        if fg.numel():
            per_class = deltas.view(deltas.shape[0], -1, d2)[fg, target_classes[fg] - 1]
            regression = F.l1_loss(per_class.float(), torch.cat(goals), reduction="sum") / max(logits.shape[0], 1)
        else:
            regression = deltas.sum() * 0
        mask = self.mask_branch.loss(features, MaskTargets(mask_boxes, torch.cat(mask_labels), torch.cat(mask_gt)))
        return {"classification": classification, "box_regression": regression, "mask": mask}

    @torch.no_grad()
    def detect_boxes(self, features: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
                     image_shape: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per image: boxes, scores and classes after score threshold, per-class NMS and the top-k."""
        logits, deltas = self.box_outputs(features, proposals)
        probs = torch.softmax(logits.float(), dim=1)
        d2 = 2 * self.spatial_dims
        out, start = [], 0
        for props in proposals:
            n = props.shape[0]
            p, dl = probs[start:start + n], deltas[start:start + n].float()
            start += n
            k = self.num_classes - 1
            boxes = self.coder.decode(dl.reshape(-1, d2), props.repeat_interleave(k, dim=0))
            boxes = clip_boxes(boxes, image_shape).view(n, k, d2)
            scores = p[:, 1:]
            keep = scores > self.score_threshold
            rows, cls = torch.nonzero(keep, as_tuple=True)
            b, s, c = boxes[rows, cls], scores[rows, cls], cls + 1
            valid = ((b[:, self.spatial_dims:] - b[:, :self.spatial_dims]) > 0).all(dim=1)
            b, s, c = b[valid], s[valid], c[valid]
            order = batched_nms(b, s, c, self.nms_threshold)[: self.detections_per_image]
            out.append((b[order], s[order], c[order]))
        return out

    @torch.no_grad()
    def detect(self, features: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
               image_shape: Sequence[int]) -> list[Detections]:
        """Detections (with pasted masks) of every image."""
        found = self.detect_boxes(features, proposals, image_shape)
        masks = self.mask_branch.predict(features, [f[0] for f in found], [f[2] for f in found], image_shape)
        return [Detections(b, s, c, m) for (b, s, c), m in zip(found, masks, strict=True)]


def last_level_max_pool(p5: torch.Tensor) -> torch.Tensor:
    """P6 of the RPN: P5 subsampled by 2 (a max pooling of kernel 1 and stride 2, Detectron's ``LastLevelMaxPool``)."""
    pool = {2: F.max_pool2d, 3: F.max_pool3d}[p5.dim() - 2]
    return pool(p5, kernel_size=1, stride=2)


def default_anchor_sizes(levels: int = 5) -> list[float]:
    """32, 64, … one per level from P2 (Detectron's FPN sizes)."""
    return [32.0 * 2**i for i in range(levels)]
