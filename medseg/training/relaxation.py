"""Boundary label relaxation and soft boundary labels (Zhu et al. 2019).

Zhu, Sapra, Reda, Shih, Newsam, Tao and Catanzaro, "Improving Semantic Segmentation via Video Propagation and Label
Relaxation", CVPR 2019.

Labels near a boundary are the least reliable part of an annotation (propagated labels of Zhu et al. are shifted
by the motion estimate; manual outlines by a voxel or two). **Boundary label relaxation** replaces, at every voxel
``i``, the likelihood of its one label by the likelihood of the union of the labels found in a window around it:

``L_i = -log Σ_{c ∈ N(i)} P(c | i)``,

where ``N(i)`` is the set of classes present in the ``window``-wide neighbourhood (Zhu et al. §3.2; their code
builds the multi-hot target with a 3×3 window). Inside a region ``N(i)`` holds one class and ``L_i`` is the
cross-entropy; across a boundary the network is not penalised for choosing either side, so a misplaced outline
cannot pull the prediction off the image's own edge.

The **soft-label variant** keeps a probability target instead of the union: the fraction of each class in the
window, ``q_i(c)``, with the soft cross-entropy ``L_i = -Σ_c q_i(c) log P(c | i)`` (local label smoothing at
boundaries, exact one-hot labels elsewhere).

Both are computed in 2D or 3D from the integer labels with a max (union) or mean (fractions) pooling of their one-hot
map. They are the trainer's losses ``label_relaxation`` and ``soft_label`` (``relaxation_window`` sets the window),
used alone as in the paper: a Dice term against the hard labels would pull the boundary back to the annotation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medseg.training.loss import one_hot


def _pool(x: torch.Tensor, window: int, mode: str) -> torch.Tensor:
    dims = x.ndim - 2
    if mode == "max":
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
        return pool(x, window, stride=1, padding=window // 2)
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
    return pool(x, window, stride=1, padding=window // 2, count_include_pad=False)


def relaxed_targets(target: torch.Tensor, num_classes: int, window: int) -> torch.Tensor:
    """Multi-hot ``(B, K, *spatial)`` map of the classes present in the ``window`` around each voxel."""
    return _pool(one_hot(target, num_classes), window, "max")


def soft_targets(target: torch.Tensor, num_classes: int, window: int) -> torch.Tensor:
    """``(B, K, *spatial)`` fraction of each class in the ``window`` around each voxel (voxels inside the image)."""
    return _pool(one_hot(target, num_classes), window, "mean")


class BoundaryRelaxationLoss(nn.Module):
    """``mean_i -log Σ_{c ∈ N(i)} P(c | i)`` (Zhu et al. 2019); the cross-entropy where ``N(i)`` has one class.

    Args:
        window: Odd window edge in voxels (3: the voxel's direct neighbours).
    """

    def __init__(self, window: int = 3) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"the relaxation window must be a positive odd number, got {window}")
        self.window = window

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(B, C, *spatial)`` logits against ``(B, 1, *spatial)`` labels."""
        log_p = torch.log_softmax(logits.float(), 1)
        allowed = relaxed_targets(target, logits.shape[1], self.window) > 0
        masked = log_p.masked_fill(~allowed, float("-inf"))
        return -torch.logsumexp(masked, 1).mean()


class SoftLabelLoss(nn.Module):
    """Soft cross-entropy against the window's class fractions (the soft-label variant).

    Args:
        window: Odd window edge in voxels.
    """

    def __init__(self, window: int = 3) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"the soft-label window must be a positive odd number, got {window}")
        self.window = window

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(B, C, *spatial)`` logits against ``(B, 1, *spatial)`` labels."""
        log_p = torch.log_softmax(logits.float(), 1)
        q = soft_targets(target, logits.shape[1], self.window)
        return -(q * log_p).sum(1).mean()
