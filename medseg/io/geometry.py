"""Voxel-to-world geometry: affines, spacing, origin, direction, and grid comparison.

medseg's one world convention is **RAS+** in millimetres, the same as NIfTI and MONAI: +x points to the patient's
Right, +y Anterior, +z Superior. DICOM, NRRD and MetaImage store LPS; readers convert with
:data:`LPS_TO_RAS` and writers convert back.

An image's geometry is the 4×4 affine ``A`` mapping a voxel index ``(i, j, k, 1)`` to world ``(x, y, z, 1)``. It
factors as ``A[:3, :3] = direction @ diag(spacing)`` and ``A[:3, 3] = origin`` (the world position of the centre of
voxel ``(0, 0, 0)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Flip between LPS (DICOM/ITK) and RAS (NIfTI/MONAI) world coordinates; it is its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Tolerances used when deciding whether two images share a voxel grid.
SPACING_ATOL_MM = 1e-3
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4


@dataclass(frozen=True)
class Geometry:
    """The grid of a 3D image: spatial shape, spacing (mm), origin (mm), direction cosines (columns), in RAS."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[tuple[float, ...], ...]

    @property
    def affine(self) -> np.ndarray:
        """The 4×4 voxel-to-world affine (RAS, mm)."""
        return affine_from_geometry(self.spacing, self.origin, np.asarray(self.direction))


def affine_from_geometry(spacing: Sequence[float], origin: Sequence[float], direction: np.ndarray) -> np.ndarray:
    """Build a 4×4 affine from spacing, origin and a direction matrix whose columns are the axis directions.

    Inputs with fewer than three spatial axes (2D images) are embedded in 3D with a unit third axis.
    """
    n = len(spacing)
    affine = np.eye(4)
    direction = np.asarray(direction, dtype=np.float64).reshape(n, n)
    affine[:n, :n] = direction @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:n, 3] = np.asarray(origin, dtype=np.float64)
    return affine


def geometry_from_affine(affine: np.ndarray, shape: Sequence[int]) -> Geometry:
    """Split an affine into spacing (column norms), origin and direction (unit columns) for a grid of ``shape``."""
    affine = np.asarray(affine, dtype=np.float64)
    n = len(shape)
    linear = affine[:n, :n]
    spacing = np.linalg.norm(linear, axis=0)
    spacing = np.where(spacing > 0, spacing, 1.0)
    direction = linear / spacing
    return Geometry(
        shape=tuple(int(s) for s in shape),
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in affine[:n, 3]),
        direction=tuple(tuple(float(v) for v in row) for row in direction),
    )


#: Smallest |det| of the direction matrix (unit columns) an affine may have: below it the voxel axes are (nearly)
#: parallel and the grid has no volume.
MIN_DIRECTION_DET = 1e-6


def affine_problem(affine: np.ndarray, spatial_dims: int = 3) -> str | None:
    """What makes an image's voxel-to-world affine unusable, or ``None`` when it is fine.

    Refused: non-finite entries; zero, negative-zero or non-finite voxel spacing (the column norms); axes that are
    parallel (a singular matrix: the grid has no volume). A sheared but invertible affine is accepted (NIfTI can
    store it).
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        return "the voxel-to-world affine holds NaN or infinite values"
    linear = affine[:spatial_dims, :spatial_dims]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        axes = ", ".join(str(i) for i in np.flatnonzero(spacing <= 0))
        return f"voxel spacing is zero along axis {axes} (header spacing {_fmt(spacing)})"
    det = abs(float(np.linalg.det(linear / spacing)))
    if det < MIN_DIRECTION_DET:
        return "the voxel-to-world affine is singular: its axes are parallel, so the grid has no volume"
    return None


def is_orthonormal(direction: np.ndarray, atol: float = 1e-4) -> bool:
    """Whether a direction matrix is a rotation/reflection (no shear), as ITK-based formats require."""
    direction = np.asarray(direction, dtype=np.float64)
    return bool(np.allclose(direction.T @ direction, np.eye(direction.shape[0]), atol=atol))


def _fmt(values: Sequence[float], digits: int = 4) -> str:
    return "(" + ", ".join(f"{v:.{digits}g}" for v in values) + ")"


def grid_differences(a: object, b: object) -> list[str]:
    """Compare the voxel grids of two images (``MetaTensor`` or :class:`Geometry`).

    Returns:
        An empty list when shape, spacing, origin and direction agree within :data:`SPACING_ATOL_MM`,
        :data:`ORIGIN_ATOL_MM` and :data:`DIRECTION_ATOL`; otherwise one readable phrase per difference,
        e.g. ``"shape (10, 10, 5) vs (10, 10, 6)"``.
    """
    ga, gb = as_geometry(a), as_geometry(b)
    problems: list[str] = []
    if ga.shape != gb.shape:
        problems.append(f"shape {ga.shape} vs {gb.shape}")
    if len(ga.spacing) != len(gb.spacing):
        return problems or [f"{len(ga.shape)}D vs {len(gb.shape)}D"]
    if not np.allclose(ga.spacing, gb.spacing, rtol=0, atol=SPACING_ATOL_MM):
        problems.append(f"spacing {_fmt(ga.spacing)} vs {_fmt(gb.spacing)} mm")
    if not np.allclose(ga.origin, gb.origin, rtol=0, atol=ORIGIN_ATOL_MM):
        problems.append(f"origin {_fmt(ga.origin, 6)} vs {_fmt(gb.origin, 6)} mm")
    if not np.allclose(ga.direction, gb.direction, rtol=0, atol=DIRECTION_ATOL):
        da = ", ".join(_fmt(c, 3) for c in np.asarray(ga.direction).T)
        db = ", ".join(_fmt(c, 3) for c in np.asarray(gb.direction).T)
        problems.append(f"direction [{da}] vs [{db}]")
    return problems


def as_geometry(image: object) -> Geometry:
    """The :class:`Geometry` of a ``MetaTensor`` of shape ``(C, *spatial)``, or a Geometry unchanged."""
    if isinstance(image, Geometry):
        return image
    meta = getattr(image, "meta", None)
    if meta is None or "affine" not in meta:
        raise TypeError(f"expected a MetaTensor with an affine or a Geometry, got {type(image).__name__}")
    spatial = tuple(int(s) for s in image.shape[1:])  # type: ignore[attr-defined]
    return geometry_from_affine(np.asarray(meta["affine"], dtype=np.float64), spatial)


def orientation_code(affine: np.ndarray) -> str:
    """Three-letter axis code of an affine in RAS world (e.g. ``"RAS"``, ``"LPS"``), like nibabel's ``aff2axcodes``."""
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(np.asarray(affine, dtype=np.float64)))
