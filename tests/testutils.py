"""Helpers shared by test modules (imported by name: tests/ is on sys.path via tests/conftest.py)."""

from __future__ import annotations

import numpy as np


def oblique_affine(spacing: tuple[float, float, float], angles_deg: tuple[float, float, float],
                   origin: tuple[float, float, float]) -> np.ndarray:
    """A RAS affine rotated by Euler angles (degrees), with the given spacing and origin."""
    from scipy.spatial.transform import Rotation

    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix() @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine
