"""Coordinate channels: each voxel's normalised position appended to the image as three more input channels.

Coordination-guided segmentation (e.g. of the pulmonary lobes, whose fissures are faint but whose place in the
lung is regular) gives the network where a voxel is, not only what it looks like: a convolution sees a patch, and
structures that look alike — left and right lobes, successive vertebrae — become separable by position. medseg
appends three channels to the preprocessed image (``TrainConfig.coordinates``):

- ``voxel``: the voxel's index along each axis of the preprocessed volume (after the crop to the nonzero region
  and the resampling), ``2 (index + 0.5) / size - 1``: ``-1`` to ``1`` across the volume, in the preprocessed axis
  order;
- ``world``: the voxel centre's RAS+ position in millimetres (from the input's affine, through the crop, the
  resampling and the transpose), relative to the centre of the cropped volume and divided by ``coordinate_scale``
  (100 mm by default), in R, A, S order whatever the voxel order of the file.

Both are affine functions of the preprocessed voxel index, ``c = M · p + t``, computed from the ``properties`` that
:func:`medseg.preprocessing.preprocess_case` returns — so training (patches cut from the cache), the final
validation and ``medseg predict`` (the sliding window over the whole volume) compute the same values for the same
voxel. Outside the image (patch padding, the sliding window's padding of small volumes) they are 0, like the image;
spatial augmentation (rotation, scaling, mirroring) moves them with the image, intensity augmentation leaves them
alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

KINDS = ("none", "voxel", "world")


def coordinate_channel_count(kind: str) -> int:
    """Input channels that ``kind`` adds (3, or 0 for ``none``)."""
    if kind not in KINDS:
        raise ValueError(f"coordinates must be one of {', '.join(KINDS)}, not {kind!r}")
    return 0 if kind == "none" else 3


def coordinate_transform(properties: Mapping[str, Any], kind: str, scale_mm: float = 100.0
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``(M, t)`` with ``coordinates = M @ p + t`` for a preprocessed voxel index ``p`` (see the module docstring).

    Args:
        properties: The case's preprocessing ``properties``.
        kind: ``voxel`` or ``world``.
        scale_mm: Millimetres per unit of ``world`` coordinates.
    """
    shape = np.asarray(properties["shape_after_resampling"], dtype=np.float64)
    if kind == "voxel":
        return np.diag(2.0 / shape), 1.0 / shape - 1.0
    if kind != "world":
        raise ValueError(f"no coordinates of kind {kind!r}")
    if not scale_mm > 0:
        raise ValueError(f"coordinate_scale must be positive, got {scale_mm}")
    crop = np.asarray(properties["shape_after_cropping_and_before_resampling"], dtype=np.float64)
    forward = [int(a) for a in properties["transpose_forward"]]
    affine = np.asarray(properties["affine"], dtype=np.float64)
    permute = np.zeros((3, 3))
    for a, source in enumerate(forward):
        permute[source, a] = 1.0
    matrix = affine[:3, :3] @ permute @ np.diag(crop / shape) / scale_mm
    centre = (shape - 1.0) / 2.0
    return matrix, -matrix @ centre


def coordinate_channels(properties: Mapping[str, Any], kind: str, lower: Sequence[int] | None = None,
                        size: Sequence[int] | None = None, scale_mm: float = 100.0) -> np.ndarray:
    """``(3, *size)`` float32 coordinates of the box ``[lower, lower + size)`` of the preprocessed volume.

    Defaults to the whole volume; voxels of the box outside the volume get 0.
    """
    shape = [int(s) for s in properties["shape_after_resampling"]]
    lower = [0] * len(shape) if lower is None else [int(v) for v in lower]
    size = shape if size is None else [int(v) for v in size]
    matrix, offset = coordinate_transform(properties, kind, scale_mm)
    axes = [np.arange(lo, lo + n, dtype=np.float64) for lo, n in zip(lower, size, strict=True)]
    out = np.empty((3, *size), dtype=np.float32)
    inside = np.ones(size, dtype=bool)
    for a, (ax, n) in enumerate(zip(axes, shape, strict=True)):
        view = [1] * len(size)
        view[a] = len(ax)
        inside &= ((ax >= 0) & (ax < n)).reshape(view)
    for c in range(3):
        value = np.full(size, offset[c])
        for a, ax in enumerate(axes):
            view = [1] * len(size)
            view[a] = len(ax)
            value = value + matrix[c, a] * ax.reshape(view)
        out[c] = np.where(inside, value, 0.0)
    return out


def append_coordinates(data: np.ndarray, properties: Mapping[str, Any], kind: str,
                       scale_mm: float = 100.0) -> np.ndarray:
    """``data`` ``(C, *shape)`` with the coordinate channels of the whole volume appended (unchanged for ``none``)."""
    if coordinate_channel_count(kind) == 0:
        return data
    coords = coordinate_channels(properties, kind, scale_mm=scale_mm)
    if coords.shape[1:] != data.shape[1:]:
        raise ValueError(f"the properties describe a {coords.shape[1:]} volume, the data is {data.shape[1:]}")
    return np.concatenate([np.asarray(data, dtype=np.float32), coords], axis=0)
