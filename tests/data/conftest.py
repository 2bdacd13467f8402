"""Fixtures for the dataset-manifest tests: tiny NIfTI writers and dataset layouts in tmp_path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

SHAPE = (16, 16, 8)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), AFFINE if affine is None else affine), str(path))
    return path


def _image(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 100, size=shape).astype(np.float32)


def _label(values: tuple[int, ...] = (0, 1, 2), shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.uint8)
    for i, v in enumerate(values):
        lab[i * 2 : i * 2 + 2, 4:8, 2:4] = v
    return lab


@pytest.fixture
def write_nifti() -> Callable[..., Path]:
    return _write_nifti


@pytest.fixture
def image_data() -> Callable[..., np.ndarray]:
    return _image


@pytest.fixture
def label_data() -> Callable[..., np.ndarray]:
    return _label


@pytest.fixture
def write_json() -> Callable[[Path, Any], Path]:
    def write(path: Path, data: Any) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))
        return path

    return write


@pytest.fixture
def msd_task(tmp_path: Path) -> Path:
    """An MSD-style single-channel task: 3 labelled cases, 1 test case, dataset.json exactly as MSD writes it."""
    task = tmp_path / "Task03_Liver"
    for i in range(3):
        _write_nifti(task / "imagesTr" / f"liver_{i}.nii.gz", _image(i))
        _write_nifti(task / "labelsTr" / f"liver_{i}.nii.gz", _label())
    _write_nifti(task / "imagesTs" / "liver_9.nii.gz", _image(9))
    dataset = {
        "name": "LiTS",
        "description": "Liver and Liver Tumor Segmentation",
        "reference": "Cancer Imaging Archive",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0 04/05/2018",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "numTraining": 3,
        "numTest": 1,
        "training": [
            {"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"} for i in range(3)
        ],
        "test": ["./imagesTs/liver_9.nii.gz"],
    }
    (task / "dataset.json").write_text(json.dumps(dataset, indent=4))
    return task


@pytest.fixture
def nnunet_raw(tmp_path: Path) -> Path:
    """An nnU-Net v2 raw dataset with two channels, 3 training cases and 1 test case."""
    root = tmp_path / "Dataset005_Prostate"
    for i in range(3):
        for c in range(2):
            _write_nifti(root / "imagesTr" / f"prostate_{i:02d}_{c:04d}.nii.gz", _image(10 * i + c))
        _write_nifti(root / "labelsTr" / f"prostate_{i:02d}.nii.gz", _label())
    for c in range(2):
        _write_nifti(root / "imagesTs" / f"prostate_50_{c:04d}.nii.gz", _image(50 + c))
    dataset = {
        "channel_names": {"0": "T2", "1": "ADC"},
        "labels": {"background": 0, "PZ": 1, "TZ": 2},
        "numTraining": 3,
        "file_ending": ".nii.gz",
        "name": "Prostate",
        "description": "Prostate transitional zone and peripheral zone segmentation",
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=4))
    return root
