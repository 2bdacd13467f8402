"""Fixtures for the evaluation tests: folders of synthetic cases written as NIfTI."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # eval_shapes

from eval_shapes import cube, write_nifti


@pytest.fixture()
def case_folders(tmp_path: Path) -> Callable[..., tuple[Path, Path, Path]]:
    """Make ``pred/``, ``ref/`` and ``images/`` folders of 3 synthetic two-class cases (spacing 1×1×2 mm).

    Case ``c1`` is good, ``c2`` is shifted, ``c3`` misses class 2 entirely (an empty prediction for it).
    """

    def make(missing_class_2: bool = True) -> tuple[Path, Path, Path]:
        shape, spacing = (48, 40, 20), (1.0, 1.0, 2.0)
        rng = np.random.default_rng(1)
        for i, shift in enumerate((0, 2, 1), start=1):
            ref = np.zeros(shape, dtype=np.uint8)
            ref[cube(shape, (8, 8, 4), (12, 10, 6))] = 1
            ref[cube(shape, (28, 20, 8), (8, 8, 5))] = 2
            pred = np.zeros(shape, dtype=np.uint8)
            pred[cube(shape, (8 + shift, 8, 4), (12, 10, 6))] = 1
            if not (missing_class_2 and i == 3):
                pred[cube(shape, (28, 20 + shift, 8), (8, 8, 5))] = 2
            image = (rng.normal(0, 20, shape) + 100 * (ref > 0)).astype(np.int16)
            write_nifti(tmp_path / "ref" / f"c{i}.nii.gz", ref, spacing)
            write_nifti(tmp_path / "pred" / f"c{i}.nii.gz", pred, spacing)
            write_nifti(tmp_path / "images" / f"c{i}_0000.nii.gz", image, spacing)
        return tmp_path / "pred", tmp_path / "ref", tmp_path / "images"

    return make
