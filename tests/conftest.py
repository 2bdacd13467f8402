"""Shared fixtures: real images shipped by pip packages (nilearn's MNI152) and ../shared/data when present."""

from __future__ import annotations

import importlib.resources
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # test helpers such as dicom_series.py

SHARED_DATA = TESTS.parent.parent / "shared" / "data"


def nilearn_file(name: str) -> Path:
    return Path(str(importlib.resources.files("nilearn.datasets") / "data" / name))


@pytest.fixture(scope="session")
def mni_t1_path() -> Path:
    """nilearn's packaged MNI152 2009 T1 template (197×233×189, 1 mm, uint8)."""
    path = nilearn_file("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    assert path.exists(), path
    return path


@pytest.fixture(scope="session")
def mni_crop(mni_t1_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 40×48×12 crop through the brain of the MNI152 T1 as int16, with its RAS affine."""
    import nibabel as nib

    img = nib.load(str(mni_t1_path))
    start = np.array([78, 100, 80])
    data = np.asarray(img.dataobj)[78:118, 100:148, 80:92].astype(np.int16)
    affine = img.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return data, affine


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real CT/MR scans beside the project (skips when absent, as in a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not present at {SHARED_DATA}")
    return SHARED_DATA
