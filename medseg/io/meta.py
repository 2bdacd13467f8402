"""Wrapping arrays into medseg's images: the ``MetaTensor`` with its geometry keys, and DICOM/NIfTI rescaling.

A leaf of :mod:`medseg.io`: every reader (NIfTI, ITK, pictures, DICOM series, DICOM SEG) builds its result here, so
no reader imports another.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import SpaceKeys

from medseg.io.geometry import geometry_from_affine

__all__ = ["WIDEN", "apply_rescale", "make_image"]

#: dtypes torch cannot compute with, widened losslessly on load (and narrowed back on save).
WIDEN = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64, np.dtype(np.bool_): np.uint8}


def make_image(
    array: np.ndarray, affine: np.ndarray, meta: Mapping[str, Any] | None = None, *, original_dtype: Any = None
) -> MetaTensor:
    """Wrap a channel-first array ``(C, *spatial)`` and its RAS affine into a ``MetaTensor`` with medseg's meta keys.

    Args:
        array: Voxel values, channel first.
        affine: 4×4 voxel-to-world affine, RAS+ mm.
        meta: Extra metadata (source file, format, DICOM identifiers, …).
        original_dtype: dtype on disk, when it differs from ``array.dtype``.
    """
    array = np.asarray(array)
    original = np.dtype(original_dtype if original_dtype is not None else array.dtype)
    widened = WIDEN.get(array.dtype)
    if widened is not None:
        array = array.astype(widened)
    affine = np.asarray(affine, dtype=np.float64)
    geometry = geometry_from_affine(affine, array.shape[1:])
    full_meta: dict[str, Any] = dict(meta or {})
    full_meta.update(
        {
            "original_affine": affine.copy(),
            "spacing": geometry.spacing,
            "origin": geometry.origin,
            "direction": geometry.direction,
            "spatial_shape": tuple(int(s) for s in array.shape[1:]),
            "original_dtype": original.str,
            "space": SpaceKeys.RAS,
        }
    )
    if not array.flags.writeable:
        array = array.copy()
    tensor = torch.from_numpy(array)  # keeps the memory order (NIfTI and DICOM stacks are x-fastest)
    return MetaTensor(tensor, affine=torch.as_tensor(affine, dtype=torch.float64), meta=full_meta)


def apply_rescale(raw: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Apply ``raw * slope + intercept``, staying integer (smallest fitting signed type) when that is exact."""
    if slope == 1 and intercept == 0:
        return raw
    if np.issubdtype(raw.dtype, np.integer) and float(slope).is_integer() and float(intercept).is_integer():
        slope_i, intercept_i = int(slope), int(intercept)
        lo, hi = (int(raw.min()), int(raw.max())) if raw.size else (0, 0)
        scaled = sorted((lo * slope_i, hi * slope_i))
        bounds = (min(scaled[0], scaled[0] + intercept_i), max(scaled[1], scaled[1] + intercept_i))
        for candidate in (np.int16, np.int32, np.int64):
            info = np.iinfo(candidate)
            if info.min <= bounds[0] and bounds[1] <= info.max:
                out = raw.astype(candidate)
                if slope_i != 1:
                    out *= slope_i
                out += intercept_i
                return out
    out = raw.astype(np.float32)
    if slope != 1:
        out *= np.float32(slope)
    out += np.float32(intercept)
    return out
