"""Torch resampling of stitched logits/probabilities back to the native grid, chunked over classes.

nnU-Net v2 (``nnunetv2/inference/export_prediction.py``,
``convert_predicted_logits_to_segmentation_with_correct_shape``) resamples the logits from the preprocessed grid
to the cropped native grid with the plans' probability resampling
(``resample_data_or_seg_to_shape``: order 1, and, when the case is anisotropic, the in-plane axes per slice with
order 1 and the out-of-plane axis separately with order 0), takes the argmax, pastes it into the uncropped volume
and transposes it back. It does so with scipy on the CPU, which dominates its inference time for many classes.

Here the same resampling runs with :func:`torch.nn.functional.interpolate` (on the GPU when available):

- order ≥ 1 → linear (``align_corners=False``, i.e. ``x_in = (x_out + 0.5) · in / out - 0.5`` with edge
  clamping, which is what ``scipy.ndimage.zoom(grid_mode=True, mode="nearest", order=1)`` and skimage's
  ``resize(order=1, mode="edge", anti_aliasing=False)`` compute); torch has no 3D cubic mode, and the plans'
  probability order is 1;
- order 0 → nearest with the same centre mapping and round-half-to-even, index for index as
  :func:`medseg.preprocessing.resampling.resample_channel` (nnU-Net's ``map_coordinates(order=0)``);
- the separate out-of-plane axis from :func:`medseg.preprocessing.resampling.separate_z_axis` (nnU-Net's rule).

:func:`export_segmentation` never materialises all classes on the native grid: classes are resampled a chunk at a
time (chunk size from the free memory) and folded into a running maximum and argmax, so a 100-class export of a
512×512×1000 CT needs one chunk plus the native-size maximum and label map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseg.preprocessing.resampling import separate_z_axis

#: Bytes one class chunk (input, resampled, scratch) may take in host memory when resampling on the CPU.
CPU_CHUNK_BYTES = 1 << 30
#: Fraction of the free CUDA memory one class chunk may take.
CUDA_CHUNK_FRACTION = 0.25


def nearest_indices(size_in: int, size_out: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Source index of every output voxel for nearest-neighbour resampling with pixel-centre alignment."""
    scale = size_in / size_out
    coords = (torch.arange(size_out, dtype=torch.float64, device=device) + 0.5) * scale - 0.5
    return torch.round(coords).clamp_(0, size_in - 1).long()


def _linear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Linear resize of ``(N, C, *spatial)`` over all its spatial axes."""
    if list(x.shape[2:]) == list(size):
        return x
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.ndim - 2]
    return F.interpolate(x, size=[int(s) for s in size], mode=mode, align_corners=False)


def _nearest(x: torch.Tensor, size: Sequence[int], first_axis: int) -> torch.Tensor:
    """Nearest resize along the axes ``first_axis…`` of ``x`` (one index_select per axis)."""
    for offset, s in enumerate(size):
        axis = first_axis + offset
        if x.shape[axis] != s:
            x = torch.index_select(x, axis, nearest_indices(x.shape[axis], int(s), x.device))
    return x


def resample_to_shape(
    data: torch.Tensor,
    new_shape: Sequence[int],
    order: int = 1,
    order_z: int = 0,
    axis: int | None = None,
) -> torch.Tensor:
    """Resample ``(K, *spatial)`` float data to ``new_shape`` (nnU-Net's ``resample_data_or_seg_to_shape``).

    Args:
        data: Channel-first float tensor (on any device; computed there).
        new_shape: Spatial output shape.
        order: 0 (nearest) or ≥ 1 (linear) for all axes, or the in-plane axes when ``axis`` is given.
        order_z: The same along ``axis``.
        axis: Spatial axis resampled separately (out of plane), or ``None``.

    Returns:
        float32 ``(K, *new_shape)`` on ``data``'s device.
    """
    new_shape = [int(s) for s in new_shape]
    x = data.float()
    if list(x.shape[1:]) == new_shape:
        return x
    if axis is None:
        return _linear(x[None], new_shape)[0] if order >= 1 else _nearest(x, new_shape, 1)
    # (K, ..., z, ...) → (z, K, in-plane...): slices as the batch, classes as channels.
    moved = torch.movedim(x, axis + 1, 0)
    inplane = [s for i, s in enumerate(new_shape) if i != axis]
    if list(moved.shape[2:]) != inplane:
        moved = _linear(moved, inplane) if order >= 1 else _nearest(moved, inplane, 2)
    if moved.shape[0] != new_shape[axis]:
        if order_z >= 1:
            # linear along z only: (K, z, plane) with the plane flattened into one axis of unchanged size
            k_first = moved.permute(1, 0, *range(2, moved.ndim))
            flat = k_first.reshape(k_first.shape[0], 1, k_first.shape[1], -1)
            flat = F.interpolate(flat, size=[new_shape[axis], flat.shape[-1]], mode="bilinear", align_corners=False)
            moved = flat.reshape(k_first.shape[0], new_shape[axis], *inplane).permute(1, 0, *range(2, moved.ndim))
        else:
            moved = torch.index_select(moved, 0, nearest_indices(moved.shape[0], new_shape[axis], moved.device))
    return torch.movedim(moved, 0, axis + 1).contiguous()


@dataclass
class ExportResult:
    """A prediction on the native grid.

    Attributes:
        labels: ``(*native_shape)`` integer label map (image axis order).
        probabilities: ``(K, *native_shape)`` float16 probabilities when asked for, else ``None``.
        class_chunk: Classes resampled per chunk.
        device: Where the resampling ran.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    class_chunk: int
    device: str


def _class_chunk(num_classes: int, voxels_in: int, voxels_out: int, device: torch.device) -> int:
    per_class = 4 * (voxels_in + 2 * voxels_out)
    if device.type == "cuda":
        budget = CUDA_CHUNK_FRACTION * float(torch.cuda.mem_get_info(device)[0])
    else:
        budget = float(CPU_CHUNK_BYTES)
    return int(max(1, min(num_classes, budget // max(per_class, 1))))


def export_segmentation(
    values: torch.Tensor,
    properties: Mapping[str, Any],
    resampling: Mapping[str, Any] | None = None,
    *,
    kind: str = "logits",
    device: torch.device | str | None = None,
    probabilities: bool = False,
    class_chunk: int | None = None,
    regions_class_order: Sequence[int] | None = None,
) -> ExportResult:
    """Map a stitched prediction from the preprocessed grid back to the native grid, then argmax.

    Follows the recipe of :mod:`medseg.preprocessing.preprocess`: resample from ``shape_after_resampling`` to
    ``shape_after_cropping_and_before_resampling`` (spacing ``target_spacing`` → ``spacing_after_transpose``,
    the plans' ``resampling.probabilities`` orders and nnU-Net's separate-z rule), paste at
    ``bbox_used_for_cropping`` into the transposed ``shape_before_cropping`` (background elsewhere), transpose with
    ``transpose_backward``.

    Args:
        values: ``(K, *preprocessed_shape)`` logits or probabilities (any device/dtype).
        properties: The ``properties`` of :func:`medseg.preprocessing.preprocess_case`.
        resampling: The plans configuration's ``resampling`` entry.
        kind: ``logits`` or ``probabilities`` (argmax is the same; probabilities are softmaxed only for logits).
        device: Where to resample (default: ``values``' device).
        probabilities: Also return the probabilities on the native grid (float16, ``K ×`` native size in host
            memory).
        class_chunk: Classes per chunk (default from the free memory).
        regions_class_order: Region-based prediction (nnU-Net's ``LabelManager`` with regions): ``values`` holds
            one sigmoid logit (or probability) per region; region ``i`` writes class ``regions_class_order[i]``
            where its probability exceeds 0.5, regions in order (later ones overwrite), instead of an argmax.
            Probabilities are then the per-region sigmoids (0 outside the crop).

    Returns:
        The label map (and probabilities) in image axis order.
    """
    resampling = resampling or {}
    orders = resampling.get("probabilities", {"order": 1, "order_z": 0})
    device = values.device if device is None else torch.device(device)
    num_classes = int(values.shape[0])
    crop_shape = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
    axis = separate_z_axis(properties["target_spacing"], properties["spacing_after_transpose"],
                           resampling.get("separate_z_anisotropy_threshold", 3.0), resampling.get("force_separate_z"))
    voxels_in = int(np.prod(values.shape[1:]))
    voxels_out = int(np.prod(crop_shape))
    chunk = class_chunk or _class_chunk(num_classes, voxels_in, voxels_out, device)
    best = torch.full(crop_shape, -torch.inf, dtype=torch.float32, device=device)
    top = max(regions_class_order) + 1 if regions_class_order is not None else num_classes
    label_dtype = torch.uint8 if top <= 256 else torch.int16
    labels = torch.zeros(crop_shape, dtype=label_dtype, device=device)
    probs_native = np.zeros((num_classes, *crop_shape), dtype=np.float16) if probabilities else None
    threshold = 0.0 if kind == "logits" else 0.5  # sigmoid(logit) > 0.5 exactly when logit > 0
    for first in range(0, num_classes, chunk):
        part = values[first:first + chunk].to(device=device, dtype=torch.float32)
        out = resample_to_shape(part, crop_shape, int(orders["order"]), int(orders["order_z"]), axis)
        del part
        for k in range(out.shape[0]):
            if regions_class_order is not None:
                labels[out[k] > threshold] = int(regions_class_order[first + k])
                continue
            better = out[k] > best
            best = torch.where(better, out[k], best)
            labels[better] = first + k
        if probs_native is not None:
            chunk_values = torch.sigmoid(out) if regions_class_order is not None and kind == "logits" else out
            probs_native[first:first + out.shape[0]] = chunk_values.cpu().numpy().astype(np.float16)
        del out
    if probs_native is not None and kind == "logits" and regions_class_order is None:
        _softmax_in_place(probs_native, best.cpu().numpy())
    label_array = labels.cpu().numpy()

    bbox = properties["bbox_used_for_cropping"]
    full_t = [int(properties["shape_before_cropping"][a]) for a in properties["transpose_forward"]]
    slicer = tuple(slice(int(a), int(b)) for a, b in bbox)
    full = np.zeros(full_t, dtype=label_array.dtype)
    full[slicer] = label_array
    backward = [int(a) for a in properties["transpose_backward"]]
    full = np.ascontiguousarray(full.transpose(backward))
    native_probs = None
    if probs_native is not None:
        p_full = np.zeros((num_classes, *full_t), dtype=np.float16)
        if regions_class_order is None:
            p_full[0] = 1.0
        p_full[(slice(None), *slicer)] = probs_native
        native_probs = np.ascontiguousarray(p_full.transpose([0, *(a + 1 for a in backward)]))
    return ExportResult(labels=full, probabilities=native_probs, class_chunk=chunk, device=str(device))


def _softmax_in_place(logits: np.ndarray, maximum: np.ndarray) -> None:
    """Softmax over axis 0 of a float16 ``(K, *spatial)`` array, one slab of the first spatial axis at a time."""
    for i in range(logits.shape[1]):
        slab = logits[:, i].astype(np.float32) - maximum[i][None]
        np.exp(slab, out=slab)
        slab /= slab.sum(0, keepdims=True)
        logits[:, i] = slab
