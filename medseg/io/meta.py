"""medseg's images: voxels with their geometry keys, the ``MetaTensor`` built from them, DICOM/NIfTI rescaling.

A leaf of :mod:`medseg.io`: every reader (NIfTI, ITK, pictures, DICOM series, DICOM SEG) builds its result here, so
no reader imports another. Readers produce :class:`ImageData` — numpy only, so a command that merely converts or
inspects files never imports torch or MONAI — and :func:`make_image` wraps it into the channel-first ``MetaTensor``
the rest of medseg computes with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.io.geometry import geometry_from_affine

if TYPE_CHECKING:
    from monai.data import MetaTensor

__all__ = ["WIDEN", "ImageData", "apply_rescale", "image_data", "make_image"]

#: dtypes torch cannot compute with, widened losslessly on load (and narrowed back on save).
WIDEN = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64, np.dtype(np.bool_): np.uint8}


@dataclass
class ImageData:
    """A channel-first array ``(C, *spatial)`` in its stored dtype and its meta keys, the affine among them.

    Attributes:
        array: The voxels as stored (no widening).
        meta: ``affine`` (4×4 RAS+ mm), ``original_affine``, ``spacing``, ``origin``, ``direction``,
            ``spatial_shape``, ``original_dtype`` and what the reader adds (source file, format, DICOM identifiers).
    """

    array: np.ndarray
    meta: dict[str, Any]

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, *spatial)``."""
        return tuple(int(s) for s in self.array.shape)

    @property
    def affine(self) -> np.ndarray:
        """The 4×4 voxel-to-world affine (RAS+ mm)."""
        return self.meta["affine"]


def image_data(
    array: np.ndarray, affine: np.ndarray, meta: Mapping[str, Any] | None = None, *, original_dtype: Any = None
) -> ImageData:
    """Pair a channel-first array ``(C, *spatial)`` with its RAS affine and medseg's geometry keys.

    Args:
        array: Voxel values, channel first.
        affine: 4×4 voxel-to-world affine, RAS+ mm.
        meta: Extra metadata (source file, format, DICOM identifiers, …).
        original_dtype: dtype on disk, when it differs from ``array.dtype``.
    """
    array = np.asarray(array)
    original = np.dtype(original_dtype if original_dtype is not None else array.dtype)
    affine = np.asarray(affine, dtype=np.float64)
    geometry = geometry_from_affine(affine, array.shape[1:])
    full_meta: dict[str, Any] = dict(meta or {})
    full_meta.update(
        {
            "affine": affine.copy(),
            "original_affine": affine.copy(),
            "spacing": geometry.spacing,
            "origin": geometry.origin,
            "direction": geometry.direction,
            "spatial_shape": tuple(int(s) for s in array.shape[1:]),
            "original_dtype": original.str,
        }
    )
    return ImageData(array, full_meta)


def make_image(
    array: np.ndarray | ImageData, affine: np.ndarray | None = None, meta: Mapping[str, Any] | None = None, *,
    original_dtype: Any = None,
) -> MetaTensor:
    """Wrap an :class:`ImageData` (or an array and its RAS affine) into a ``MetaTensor`` with medseg's meta keys.

    dtypes torch cannot compute with (``uint16``, ``uint32``, ``bool``) are widened losslessly (:data:`WIDEN`);
    ``meta["original_dtype"]`` keeps the stored one, so :func:`medseg.io.save_image` narrows them back.

    Args:
        array: An :class:`ImageData`, or voxel values, channel first.
        affine: 4×4 voxel-to-world affine, RAS+ mm (for an array).
        meta: Extra metadata (for an array).
        original_dtype: dtype on disk, when it differs from ``array.dtype`` (for an array).
    """
    import torch
    from monai.data import MetaTensor
    from monai.utils import SpaceKeys

    if not isinstance(array, ImageData):
        if affine is None:
            raise ValueError("make_image needs the affine of a plain array")
        array = image_data(array, affine, meta, original_dtype=original_dtype)
    values = array.array
    widened = WIDEN.get(values.dtype)
    if widened is not None:
        values = values.astype(widened)
    elif not values.flags.writeable:
        values = values.copy()
    full_meta = {k: v for k, v in array.meta.items() if k != "affine"}
    full_meta["space"] = SpaceKeys.RAS
    tensor = torch.from_numpy(values)  # keeps the memory order (NIfTI and DICOM stacks are x-fastest)
    return MetaTensor(tensor, affine=torch.as_tensor(array.affine, dtype=torch.float64), meta=full_meta)


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
