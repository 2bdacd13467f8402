"""Putting one image on another's voxel grid without resampling: equal grids, and grids that differ only in axis order.

Converters store the same scan differently: dcm2niix, for one, may write a label with its axes permuted or flipped
relative to the image it was drawn on (same voxels in the same places in the world, another storage order).
:func:`match_grid` recognises this exactly — the voxel-to-voxel map between the two grids must be a signed permutation
with integer offsets that covers the target grid — and transposes/flips the array losslessly, so such a label is
used as it is instead of being refused. Any other difference is reported, target (image) first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseg.errors import MedsegError
from medseg.io.geometry import as_geometry, grid_differences
from medseg.io.meta import make_image

__all__ = ["REORIENTED_NOTE", "GridMatch", "grid_reorientation", "label_on_grid", "match_grid"]

#: The note reported when a label was reoriented onto its image's grid.
REORIENTED_NOTE = ("stored with its axes in another order or direction than the image (same world grid, as dcm2niix "
                   "may write it); reoriented losslessly onto the image grid")

_MATRIX_ATOL = 1e-4
_OFFSET_ATOL = 1e-3


def grid_reorientation(moving_affine: np.ndarray, moving_shape: tuple[int, ...], target_affine: np.ndarray,
                       target_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[bool, ...]] | None:
    """How to turn an array on the moving grid into one on the target grid, when the grids are the same world grid.

    Returns:
        ``(axes, flips)``: target axis ``i`` is moving axis ``axes[i]``, reversed where ``flips[i]`` — i.e.
        ``np.flip(np.transpose(array, axes), [i for i, f in enumerate(flips) if f])`` is on the target grid — or
        ``None`` when the voxel-to-voxel map is not a signed permutation onto the target grid.
    """
    n = len(target_shape)
    if len(moving_shape) != n:
        return None
    try:
        transform = np.linalg.inv(np.asarray(target_affine, np.float64)) @ np.asarray(moving_affine, np.float64)
    except np.linalg.LinAlgError:
        return None
    matrix, offset = transform[:n, :n], transform[:n, 3]
    signs = np.rint(matrix)
    if not np.allclose(matrix, signs, atol=_MATRIX_ATOL) or not np.all(np.abs(signs).sum(0) == 1) \
            or not np.all(np.abs(signs).sum(1) == 1):
        return None
    if not np.allclose(offset, np.rint(offset), atol=_OFFSET_ATOL):
        return None
    axes, flips = [], []
    for i in range(n):
        j = int(np.flatnonzero(signs[i])[0])
        flipped = bool(signs[i, j] < 0)
        start = int(np.rint(offset[i]))
        if moving_shape[j] != target_shape[i] or start != (target_shape[i] - 1 if flipped else 0):
            return None
        axes.append(j)
        flips.append(flipped)
    return tuple(axes), tuple(flips)


@dataclass
class GridMatch:
    """The outcome of :func:`match_grid`.

    Attributes:
        image: The moving image on the target grid (the input itself when the grids agree), or ``None``.
        reoriented: Whether its axes were permuted or flipped to get there.
        differences: Why it could not be put on the target grid, target first (``shape (…) vs (…)``).
    """

    image: Any | None
    reoriented: bool = False
    differences: list[str] = field(default_factory=list)


def match_grid(moving: Any, target: Any) -> GridMatch:
    """Put ``moving`` (a ``(C, *spatial)`` ``MetaTensor``) on the grid of ``target`` (``MetaTensor`` or Geometry).

    Equal grids (:func:`~medseg.io.geometry.grid_differences`) keep the image as it is; a grid that is the target's
    with axes permuted or flipped gives a transposed/flipped copy carrying the target's affine; anything else gives
    ``image=None`` with the differences listed target first.
    """
    target_geometry = as_geometry(target)
    moving_geometry = as_geometry(moving)
    differences = grid_differences(target_geometry, moving_geometry)
    if not differences:
        return GridMatch(moving)
    found = grid_reorientation(moving_geometry.affine, moving_geometry.shape, target_geometry.affine,
                               target_geometry.shape)
    if found is None:
        return GridMatch(None, differences=differences)
    axes, flips = found
    array = np.asarray(moving.detach().cpu().numpy() if hasattr(moving, "detach") else moving)
    array = np.transpose(array, (0, *(a + 1 for a in axes)))
    array = np.flip(array, [i + 1 for i, f in enumerate(flips) if f])
    meta = {k: v for k, v in (getattr(moving, "meta", {}) or {}).items()
            if k in ("filename_or_obj", "format", "original_dtype")}
    image = make_image(np.ascontiguousarray(array), target_geometry.affine, meta,
                       original_dtype=meta.get("original_dtype"))
    return GridMatch(image, reoriented=True)


def label_on_grid(label: Any, image: Any, label_path: Any, error: type[MedsegError]) -> tuple[Any, bool]:
    """``label`` on ``image``'s grid (reoriented when stored in another axis order), and whether it was reoriented.

    Raises:
        error: The grids differ otherwise; the message lists the image's grid before the label's.
    """
    match = match_grid(label, image)
    if match.image is None:
        raise error(f"label grid differs from the image; image vs label: {'; '.join(match.differences)}", label_path)
    return match.image, match.reoriented
