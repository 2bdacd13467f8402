"""Running a 2D network slice by slice where the pipeline works on 3D arrays.

nnU-Net's ``2d`` configuration trains a 2D network on single slices of the (transposed) preprocessed volume and
predicts a volume slice by slice (Isensee et al., Nature Methods 2021). :class:`SliceWise` expresses that with one
mechanism: a window of shape ``(B, C, 1, H, W)`` — one slice along the first (out-of-plane) axis — goes through the
2D network as ``(B, C, H, W)``, and the logits come back as ``(B, K, 1, H, W)``. A 3D sliding window with patch
``(1, H, W)`` over a ``(C, D, H, W)`` volume is then exactly slice-by-slice 2D prediction (each slice's windows
batched together), and everything built for 3D windows — gaussian weighting, mirroring, stitching, ensembling —
applies unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class SliceWise(nn.Module):
    """Wrap a 2D network so that it takes one-slice 3D inputs ``(B, C, 1, H, W)``.

    Args:
        model: A network on ``(B, C, H, W)`` returning ``(B, K, H, W)`` (or a list of them: deep supervision).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        """``(B, C, 1, H, W)`` → ``(B, K, 1, H, W)`` (each output of a list likewise)."""
        if x.ndim != 5 or x.shape[2] != 1:
            raise ValueError(f"SliceWise takes (B, C, 1, H, W) windows, got {tuple(x.shape)}")
        out = self.model(x[:, :, 0])
        if isinstance(out, (list, tuple)):
            return type(out)(o.unsqueeze(2) for o in out)
        return out.unsqueeze(2)


def volume_windows(model: nn.Module, patch: Sequence[int], axes: Sequence[int]
                   ) -> tuple[nn.Module, list[int], list[int]]:
    """A network, its patch and its (mirror) axes as 3D sliding windows see them.

    A 2D patch ``(H, W)`` becomes the one-slice window ``(1, H, W)`` of :class:`SliceWise`, and spatial axes ``a`` of
    the 2D network become ``a + 1``; a 3D network comes back unchanged.
    """
    if len(patch) != 2:
        return model, list(patch), list(axes)
    return SliceWise(model), [1, *patch], [a + 1 for a in axes]
