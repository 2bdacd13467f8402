"""Resampling to a target spacing with nnU-Net's rules (Isensee et al., Nature Methods 2021).

Implemented with :func:`scipy.ndimage.zoom` (``grid_mode=True``, ``mode="nearest"``): this is exactly what nnU-Net
v2's ``default_resampling`` runs through ``skimage.transform.resize(..., mode="edge", anti_aliasing=False)`` (which
calls ``ndi.zoom`` with these settings), so voxel centres map as ``x_in = (x_out + 0.5) · in / out - 0.5`` and the
border is extended by repetition. Like skimage's ``clip=True``, interpolated values are clipped to the input range
(cubic splines overshoot). scipy is used rather than ``torch.nn.functional.interpolate`` because torch has no
3D cubic mode; preprocessing runs once per case and is cached.

- Images: spline order ``order`` (3). When the case is anisotropic (spacing ratio above the threshold, of the
  source or the target spacing, and exactly one coarsest axis), the in-plane axes are resampled slice by slice with
  ``order`` and the out-of-plane axis separately with ``order_z`` (0: nearest neighbour).
- Labels: the one-hot map of every value present is resampled with ``order`` (1: linear), then the label with the
  largest interpolated weight wins (ties: the smaller value). nnU-Net instead writes each label, in increasing
  order, where its interpolated mask is ≥ 0.5; both agree wherever one label has the majority.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> list[int]:
    """``round(shape · spacing / new_spacing)`` per axis (nnU-Net's ``compute_new_shape``), at least 1."""
    return [max(1, round(float(s) * float(a) / float(b))) for s, a, b in zip(shape, spacing, new_spacing, strict=True)]


def _lowres_axes(spacing: Sequence[float]) -> list[int]:
    spacing = np.asarray(spacing, dtype=np.float64)
    return [int(i) for i in np.flatnonzero(spacing == spacing.max())]


def separate_z_axis(
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    threshold: float = 3.0,
    force: bool | None = None,
) -> int | None:
    """The axis to resample separately (nnU-Net's ``determine_do_sep_z_and_axis``), or ``None``.

    Args:
        spacing: Current spacing.
        new_spacing: Target spacing.
        threshold: Anisotropy (largest / smallest spacing) above which the coarse axis is treated separately.
        force: ``True``/``False`` to force the decision; ``None`` decides by the threshold, looking at the current
            spacing first, then the target.

    Returns:
        The out-of-plane axis, or ``None`` when all axes are resampled together (also when two or three axes share
        the coarsest spacing).
    """
    if force is not None:
        axes = _lowres_axes(spacing) if force else None
    elif max(spacing) / min(spacing) > threshold:
        axes = _lowres_axes(spacing)
    elif max(new_spacing) / min(new_spacing) > threshold:
        axes = _lowres_axes(new_spacing)
    else:
        axes = None
    if axes is None or len(axes) != 1:
        return None
    return axes[0]


def _zoom(array: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """Resize one channel with ``ndi.zoom`` as ``skimage.transform.resize(mode='edge', clip=True)`` does."""
    from scipy.ndimage import zoom

    if tuple(array.shape) == tuple(new_shape):
        return array.astype(np.float32, copy=True)
    factors = [n / s for n, s in zip(new_shape, array.shape, strict=True)]
    work = array.astype(np.float64 if order > 1 else np.float32, copy=False)
    out = zoom(work, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    if out.shape != tuple(new_shape):  # float rounding of shape · factor (never seen, kept for safety)
        raise ValueError(f"resampling produced {out.shape}, wanted {tuple(new_shape)}")
    if order > 1:
        out = np.clip(out, array.min(), array.max())
    return out.astype(np.float32, copy=False)


def resample_channel(
    array: np.ndarray, new_shape: Sequence[int], order: int, order_z: int = 0, axis: int | None = None
) -> np.ndarray:
    """Resample one spatial array to ``new_shape`` (with ``axis``: in-plane with ``order``, then ``order_z``).

    Args:
        array: Spatial array (no channel axis).
        new_shape: Output shape.
        order: Spline order (0 nearest, 1 linear, 3 cubic) for all axes, or the in-plane axes when ``axis`` is set.
        order_z: Spline order along ``axis``.
        axis: The separately resampled (out-of-plane) axis, or ``None``.

    Returns:
        float32 array of shape ``new_shape``.
    """
    new_shape = [int(s) for s in new_shape]
    if axis is None:
        return _zoom(array, new_shape, order)
    inplane = [s for i, s in enumerate(new_shape) if i != axis]
    moved = np.moveaxis(array, axis, 0)
    slices = np.stack([_zoom(s, inplane, order) for s in moved]) if moved.shape[1:] != tuple(inplane) else (
        moved.astype(np.float32, copy=True))
    if slices.shape[0] != new_shape[axis]:
        slices = _zoom(slices, [new_shape[axis], *inplane], order_z) if order_z > 0 else _nearest_axis0(
            slices, new_shape[axis])
    return np.ascontiguousarray(np.moveaxis(slices, 0, axis))


def _nearest_axis0(array: np.ndarray, size: int) -> np.ndarray:
    """Nearest neighbour along axis 0 with pixel-centre alignment (``map_coordinates(order=0, mode='nearest')``)."""
    scale = array.shape[0] / size
    index = np.clip(np.round((np.arange(size) + 0.5) * scale - 0.5), 0, array.shape[0] - 1).astype(np.int64)
    return array[index]


def resample_image(
    data: np.ndarray,
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    settings: Mapping[str, Any] | None = None,
    new_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Resample an image ``(C, *spatial)`` to ``new_spacing`` (or ``new_shape``) with the plans' image orders."""
    settings = settings or {}
    orders = settings.get("images", {"order": 3, "order_z": 0})
    shape = compute_new_shape(data.shape[1:], spacing, new_spacing) if new_shape is None else list(new_shape)
    axis = separate_z_axis(spacing, new_spacing, settings.get("separate_z_anisotropy_threshold", 3.0),
                           settings.get("force_separate_z"))
    return np.stack([resample_channel(c, shape, orders["order"], orders["order_z"], axis) for c in data])


def resample_labels(
    seg: np.ndarray,
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    settings: Mapping[str, Any] | None = None,
    new_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Resample a label map ``(1, *spatial)`` through its one-hot encoding (linear by default), then argmax."""
    settings = settings or {}
    orders = settings.get("labels", {"order": 1, "order_z": 0})
    shape = compute_new_shape(seg.shape[1:], spacing, new_spacing) if new_shape is None else list(new_shape)
    if list(seg.shape[1:]) == shape:
        return seg.copy()
    axis = separate_z_axis(spacing, new_spacing, settings.get("separate_z_anisotropy_threshold", 3.0),
                           settings.get("force_separate_z"))
    values = np.unique(seg)
    if orders["order"] == 0 and (axis is None or orders["order_z"] == 0):
        out = resample_channel(seg[0].astype(np.float32), shape, 0, 0, axis)
        return np.rint(out).astype(seg.dtype)[None]
    best = np.zeros(shape, dtype=np.float32) - 1.0
    result = np.full(shape, values[0], dtype=seg.dtype)
    for value in values:
        weight = resample_channel((seg[0] == value).astype(np.float32), shape, orders["order"], orders["order_z"], axis)
        better = weight > best
        result[better] = value
        best[better] = weight[better]
    return result[None]
