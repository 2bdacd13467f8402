"""Helpers for the evaluation tests: synthetic masks (cubes, balls) and NIfTI writing."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def affine_for(spacing: tuple[float, ...], origin: tuple[float, ...] = (0.0, 0.0, 0.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def write_nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine_for(tuple(spacing), tuple(origin))), str(path))
    return path


def cube(shape: tuple[int, ...], start: tuple[int, ...], size: tuple[int, ...] | int) -> np.ndarray:
    size = (size,) * len(shape) if isinstance(size, int) else size
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))] = True
    return mask


def ball(shape: tuple[int, ...], centre_mm, radius_mm: float, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm, strict=True)) <= radius_mm**2

