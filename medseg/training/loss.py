"""Segmentation losses and nnU-Net's deep-supervision weighting (Isensee et al., Nature Methods 2021).

- ``dice_ce`` (default): nnU-Net v2's ``DC_and_CE_loss``: cross-entropy + soft Dice, the Dice computed on the
  softmax without the background class, over the batch when ``batch_dice`` — the global batch under DDP, its sums
  gathered from every process as nnU-Net does — (``MemoryEfficientSoftDiceLoss``:
  ``(2·tp + 1e-5) / max(2·tp + fp + fn + 1e-5, 1e-8)``), entering as ``-dice`` (so the loss is negative, as nnU-Net
  logs it). This equals MONAI's ``DiceCELoss(include_background=False, smooth_nr=smooth_dr=1e-5) - 1``.
- ``dice_focal``: MONAI ``DiceLoss`` + ``FocalLoss`` on the softmax (γ = 2), both without the background (MONAI's
  ``DiceFocalLoss`` applies a sigmoid in its focal term, which does not fit mutually exclusive classes).
- ``generalised_dice``: MONAI ``GeneralizedDiceLoss`` (no background).
- ``dice_bce`` (region-based training, nnU-Net's ``DC_and_BCE_loss``): the integer labels become one binary mask per
  region (a region is a set of labels, BraTS' whole tumour / tumour core / enhancing tumour), the network has one
  sigmoid output per region, and the loss is ``BCEWithLogits`` + soft Dice on the sigmoids of every region channel
  (``do_bg=True``: there is no background channel), ``-dice`` as in ``dice_ce``. Chosen automatically when the
  training config names ``regions``.
- ``focal_tversky``: Abraham and Khan 2019: ``mean_c (1 - TI_c)^(3/4)`` with Tversky index
  ``TI = (tp + s) / (tp + 0.7·fn + 0.3·fp + s)`` over the foreground classes.
- ``label_relaxation`` / ``soft_label``: Zhu et al.'s boundary label relaxation (CVPR 2019) or its soft-label
  variant (:mod:`medseg.training.relaxation`), alone as in the paper.

A model may declare the objective it trains with instead (:func:`model_objective`): a method
``training_loss(output, target)``. The trainer then passes the label into the forward pass
(``model(data, target=target)``) and minimises that method's value; the ``loss`` setting and deep supervision do
not apply. The probabilistic U-Nets (``medseg/models/probabilistic``) train so: their posterior networks need the
label, and their objectives (the ELBO, GECO) include KL terms no loss of the table above has.

Deep supervision (nnU-Net's ``_build_loss``): outputs highest resolution first get weights ``1/2^i``; the lowest
resolution gets 0; the weights are normalised to sum to 1. A model whose paper weights its extra outputs otherwise
declares them (``loss_weights``: PSPNet, PSANet, CCNet, CPNet and OCRNet weight their auxiliary head 0.4, DANet
sums its three heads) and those weights are used as given. Targets are downsampled to each output's shape with
nearest neighbour (nnU-Net's ``DownsampleSegForDSTransform``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("dice_ce", "dice_focal", "generalised_dice", "focal_tversky", "dice_bce", "label_relaxation",
          "soft_label")


def regions_to_masks(target: torch.Tensor, regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """``(B, 1, *spatial)`` integer labels to ``(B, R, *spatial)`` float masks, one per region (a set of labels).

    nnU-Net's ``ConvertSegmentationToRegionsTransform``: channel ``r`` is 1 where the label is one of ``regions[r]``.
    """
    masks = [torch.isin(target[:, 0], torch.as_tensor(list(r), device=target.device, dtype=target.dtype))
             for r in regions]
    return torch.stack(masks, 1).float()


class RegionDiceBCELoss(nn.Module):
    """nnU-Net's ``DC_and_BCE_loss`` for region-based training: ``BCEWithLogits`` + soft Dice of the sigmoids.

    Args:
        regions: The label sets of the network's output channels, in order.
        batch_dice: One Dice per region over the batch (the global batch under DDP) instead of per sample.
        smooth: Added to numerator and denominator.
    """

    def __init__(self, regions: Sequence[Sequence[int]], batch_dice: bool = False, smooth: float = 1e-5) -> None:
        super().__init__()
        self.regions = [tuple(int(v) for v in r) for r in regions]
        self.batch_dice, self.smooth = batch_dice, smooth
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(B, R, *spatial)`` logits against ``(B, 1, *spatial)`` integer labels."""
        y = regions_to_masks(target.long(), self.regions)
        logits = logits.float()
        probs = torch.sigmoid(logits)
        axes = tuple(range(2, logits.ndim))
        intersect = (probs * y).sum(axes)
        sum_pred, sum_gt = probs.sum(axes), y.sum(axes)
        if self.batch_dice:
            intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
            intersect, sum_pred, sum_gt = _sum_over_processes(torch.stack([intersect, sum_pred, sum_gt]))
        dice = (2 * intersect + self.smooth) / torch.clamp(sum_gt + sum_pred + self.smooth, min=1e-8)
        return self.bce(logits, y) - dice.mean()


def one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, 1, *spatial)`` integer labels to ``(B, num_classes, *spatial)`` float one-hot."""
    shape = (target.shape[0], num_classes, *target.shape[2:])
    out = torch.zeros(shape, device=target.device, dtype=torch.float32)
    return out.scatter_(1, target.long().clamp(0, num_classes - 1), 1.0)


def _sum_over_processes(values: torch.Tensor) -> torch.Tensor:
    """Sum over the DDP processes, differentiably (nnU-Net's ``AllGatherGrad`` for batch Dice); as is without DDP.

    The backward pass sums every process's gradient, and DDP then averages over the processes, so each process's
    predictions get exactly the gradient of the Dice of the whole global batch.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return values
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(values)


class SoftDiceLoss(nn.Module):
    """nnU-Net's ``MemoryEfficientSoftDiceLoss`` on softmax probabilities (returns ``-dice``).

    Args:
        batch_dice: Sum over the batch before dividing (one Dice per class) instead of one per sample and class.
        do_bg: Include the background class.
        smooth: Added to numerator and denominator.
    """

    def __init__(self, batch_dice: bool = False, do_bg: bool = False, smooth: float = 1e-5) -> None:
        super().__init__()
        self.batch_dice, self.do_bg, self.smooth = batch_dice, do_bg, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(B, C, *spatial)`` logits against ``(B, 1, *spatial)`` labels."""
        probs = torch.softmax(logits.float(), 1)
        y = one_hot(target, logits.shape[1])
        if not self.do_bg:
            probs, y = probs[:, 1:], y[:, 1:]
        axes = tuple(range(2, logits.ndim))
        intersect = (probs * y).sum(axes)
        sum_pred, sum_gt = probs.sum(axes), y.sum(axes)
        if self.batch_dice:
            intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
            intersect, sum_pred, sum_gt = _sum_over_processes(torch.stack([intersect, sum_pred, sum_gt]))
        dice = (2 * intersect + self.smooth) / torch.clamp(sum_gt + sum_pred + self.smooth, min=1e-8)
        return -dice.mean()


class DiceCELoss(nn.Module):
    """Cross-entropy + :class:`SoftDiceLoss` with weights 1 and 1 (nnU-Net's ``DC_and_CE_loss``)."""

    def __init__(self, batch_dice: bool = False) -> None:
        super().__init__()
        self.dice = SoftDiceLoss(batch_dice=batch_dice)
        self.ce = nn.CrossEntropyLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(B, C, *spatial)`` logits against ``(B, 1, *spatial)`` labels."""
        return self.ce(logits.float(), target[:, 0].long()) + self.dice(logits, target)


class FocalTverskyLoss(nn.Module):
    """Focal Tversky loss over the foreground classes (Abraham and Khan, ISBI 2019).

    Args:
        alpha: Weight of false negatives (0.7).
        beta: Weight of false positives (0.3).
        gamma: Focal parameter; the loss is ``(1 - TI)^(1/gamma)`` (4/3).
        batch: Sum over the batch before the index.
        smooth: Added to numerator and denominator.
    """

    def __init__(self, alpha: float = 0.7, beta: float = 0.3, gamma: float = 4 / 3, batch: bool = False,
                 smooth: float = 1e-5) -> None:
        super().__init__()
        self.alpha, self.beta, self.gamma, self.batch, self.smooth = alpha, beta, gamma, batch, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(B, C, *spatial)`` logits against ``(B, 1, *spatial)`` labels."""
        probs = torch.softmax(logits.float(), 1)[:, 1:]
        y = one_hot(target, logits.shape[1])[:, 1:]
        axes = tuple(range(2, logits.ndim))
        tp = (probs * y).sum(axes)
        fn = ((1 - probs) * y).sum(axes)
        fp = (probs * (1 - y)).sum(axes)
        if self.batch:
            tp, fn, fp = tp.sum(0), fn.sum(0), fp.sum(0)
        index = (tp + self.smooth) / (tp + self.alpha * fn + self.beta * fp + self.smooth)
        return torch.clamp(1 - index, min=0).pow(1 / self.gamma).mean()


class _MonaiLabelLoss(nn.Module):
    """A MONAI loss fed logits and ``(B, 1, *spatial)`` labels."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(B, C, *spatial)`` logits against ``(B, 1, *spatial)`` labels."""
        return self.loss(logits.float(), target.long())


class _SumLoss(nn.Module):
    """The sum of several losses."""

    def __init__(self, losses: Sequence[nn.Module]) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum of the losses of ``logits`` against ``target``."""
        return sum((loss(logits, target) for loss in self.losses), logits.new_zeros((), dtype=torch.float32))


def build_loss(name: str, batch_dice: bool, regions: Sequence[Sequence[int]] | None = None,
               relaxation_window: int = 3) -> nn.Module:
    """The loss ``name`` (one of :data:`LOSSES`) for logits and integer labels (``dice_bce``: with ``regions``).

    ``relaxation_window`` is the neighbourhood of ``label_relaxation`` and ``soft_label`` (voxels per axis, odd).
    """
    from monai.losses import DiceLoss, FocalLoss, GeneralizedDiceLoss

    if regions:
        if name not in ("dice_ce", "dice_bce"):
            raise ValueError(f"region-based training uses the dice_bce loss, not {name!r}")
        return RegionDiceBCELoss(regions, batch_dice=batch_dice)
    if name == "dice_bce":
        raise ValueError("the dice_bce loss needs regions (set regions and regions_class_order)")
    if name in ("label_relaxation", "soft_label"):
        from medseg.training.relaxation import BoundaryRelaxationLoss, SoftLabelLoss

        return (BoundaryRelaxationLoss if name == "label_relaxation" else SoftLabelLoss)(relaxation_window)
    if name == "dice_ce":
        return DiceCELoss(batch_dice=batch_dice)
    if name == "dice_focal":
        return _SumLoss([
            _MonaiLabelLoss(DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=batch_dice)),
            _MonaiLabelLoss(FocalLoss(include_background=False, to_onehot_y=True, use_softmax=True, gamma=2.0)),
        ])
    if name == "generalised_dice":
        return _MonaiLabelLoss(GeneralizedDiceLoss(include_background=False, to_onehot_y=True, softmax=True,
                                                   batch=batch_dice))
    if name == "focal_tversky":
        return FocalTverskyLoss(batch=batch_dice)
    raise ValueError(f"unknown loss {name!r} (choose from {', '.join(LOSSES)})")


def model_objective(model: nn.Module) -> Callable[[Any, torch.Tensor], torch.Tensor] | None:
    """The objective ``model`` declares (its ``training_loss(output, target)`` method), or ``None``.

    A model with one is called as ``model(data, target=target)`` in training, and ``training_loss`` turns that output
    and the ``(B, 1, *spatial)`` labels into the scalar to minimise.
    """
    objective = getattr(model, "training_loss", None)
    return objective if callable(objective) else None


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """nnU-Net's weights: ``1/2^i``, the lowest resolution 0, normalised (a single output gets 1)."""
    if n_outputs == 1:
        return [1.0]
    weights = [1 / 2**i for i in range(n_outputs)]
    weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


def downsample_target(target: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Labels ``(B, 1, *spatial)`` resized to ``shape`` with nearest neighbour (identity when equal)."""
    if tuple(target.shape[2:]) == tuple(shape):
        return target
    return F.interpolate(target.float(), size=list(shape), mode="nearest-exact").long()


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over the outputs (highest resolution first); a tensor input is one output.

    Args:
        loss: The loss of one output.
        weights: The weight of each output as a model declares them (``SegmentationModel.loss_weights``, e.g.
            PSPNet's auxiliary head ``(1.0, 0.4)``), used as given; ``None`` or empty: nnU-Net's
            :func:`deep_supervision_weights`.
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.weights = [float(w) for w in weights] if weights else None

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Weighted loss; zero-weight outputs stay in the graph (multiplied by 0) so DDP sees every parameter."""
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        weights = self.weights if self.weights is not None else deep_supervision_weights(len(outputs))
        if len(weights) != len(outputs):
            raise ValueError(f"{len(outputs)} outputs but {len(weights)} loss weights")
        total = outputs[0].new_zeros((), dtype=torch.float32)
        for weight, output in zip(weights, outputs, strict=True):
            total = total + weight * self.loss(output, downsample_target(target, output.shape[2:]))
        return total
