"""Shared helpers for the planning tests: hand-written fingerprints and tiny real datasets."""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_fill_holes

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SPLEEN = SHARED_DATA / "ivadomed_msd_spleen"
STAT_KEYS = ("mean", "median", "std", "min", "max", "percentile_00_5", "percentile_99_5")


def make_fingerprint(
    spacings: Sequence[Sequence[float]],
    shapes: Sequence[Sequence[int]],
    *,
    channels: Sequence[tuple[str, str]] = (("MR", "MR"),),
    labels: int = 2,
    relative_size: float = 1.0,
    stats: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A hand-written fingerprint with the keys the planner reads."""
    values = stats or {k: 1.0 for k in STAT_KEYS}
    return {
        "fingerprint_version": 1,
        "dataset_name": "handwritten",
        "channels": [{"name": n, "modality": m} for n, m in channels],
        "labels": {"background": 0, **{f"class{i}": i for i in range(1, labels)}},
        "cases": [
            {"id": f"case{i:03d}", "spacing": [float(s) for s in sp], "shape_after_crop": [int(s) for s in sh]}
            for i, (sp, sh) in enumerate(zip(spacings, shapes, strict=True))
        ],
        "median_relative_size_after_cropping": relative_size,
        "foreground_intensity_properties_per_channel": {str(i): dict(values) for i in range(len(channels))},
    }


def uniform_fingerprint(n: int, spacing: Sequence[float], shape: Sequence[int], **kwargs: Any) -> dict[str, Any]:
    """``n`` cases with the same spacing and shape."""
    return make_fingerprint([spacing] * n, [shape] * n, **kwargs)


def _mni(name: str) -> np.ndarray:
    file = f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    path = importlib.resources.files("nilearn.datasets") / "data" / file
    return np.asanyarray(nib.load(str(path)).dataobj)


def reference_crop(image: np.ndarray) -> tuple[slice, ...]:
    """The nonzero bounding box computed directly with numpy/scipy (image is (C, x, y, z))."""
    mask = binary_fill_holes(np.any(image != 0, axis=0))
    idx = np.nonzero(mask)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


@pytest.fixture(scope="session")
def mni_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three small MR cases cut from nilearn's MNI152 T1 (2 mm, zero-padded), labels from the GM/WM maps.

    Returns the manifest path and, per case, the image and label arrays as written (for numpy references).
    """
    root = tmp_path_factory.mktemp("mni")
    t1 = _mni("t1")[::2, ::2, ::2].astype(np.int16)
    gm = _mni("gm")[::2, ::2, ::2]
    wm = _mni("wm")[::2, ::2, ::2]
    label = np.zeros(t1.shape, dtype=np.uint8)
    label[gm > 128] = 1
    label[(wm > 128) & (wm >= gm)] = 2
    views = {
        "mni_a": (slice(None), slice(None), slice(None)),
        "mni_b": (slice(5, 90), slice(10, 110), slice(0, 80)),
        "mni_c": (slice(0, 99), slice(20, 117), slice(15, 95)),
    }
    cases, arrays = [], {}
    for i, (case_id, view) in enumerate(views.items()):
        img = np.pad(t1[view], 3 + i)  # zero border, removed again by cropping
        lbl = np.pad(label[view], 3 + i)
        affine = np.diag([2.0, 2.0, 2.0 + 0.5 * i, 1.0])
        nib.save(nib.Nifti1Image(img, affine), root / f"{case_id}_t1.nii.gz")
        nib.save(nib.Nifti1Image(lbl, affine), root / f"{case_id}_seg.nii.gz")
        cases.append({"id": case_id, "images": [f"{case_id}_t1.nii.gz"], "label": f"{case_id}_seg.nii.gz"})
        arrays[case_id] = (img[None].astype(np.float64), lbl, (2.0, 2.0, 2.0 + 0.5 * i))
    manifest = {
        "format_version": 1,
        "name": "mni_tiny",
        "channels": [{"name": "T1", "modality": "MR"}],
        "labels": {"background": 0, "gm": 1, "wm": 2},
        "cases": cases,
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return {"manifest": path, "arrays": arrays}


@pytest.fixture(scope="session")
def spleen_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-case CT manifest pointing at the shared MSD spleen case (skips when ../shared/data is absent)."""
    if not (SPLEEN / "sub-spleen2_ct.nii.gz").is_file():
        pytest.skip("shared test data (../shared/data) is not available")
    root = tmp_path_factory.mktemp("spleen")
    manifest = {
        "format_version": 1,
        "name": "spleen",
        "channels": [{"name": "CT", "modality": "CT"}],
        "labels": {"background": 0, "spleen": 1},
        "cases": [
            {
                "id": "spleen2",
                "images": [str(SPLEEN / "sub-spleen2_ct.nii.gz")],
                "label": str(SPLEEN / "sub-spleen2_ct_seg-manual.nii.gz"),
            }
        ],
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


@pytest.fixture
def make_fp() -> Any:
    """:func:`make_fingerprint` (test modules cannot import conftest under ``--import-mode=importlib``)."""
    return make_fingerprint


@pytest.fixture
def uniform_fp() -> Any:
    """:func:`uniform_fingerprint`."""
    return uniform_fingerprint


@pytest.fixture
def crop_of() -> Any:
    """:func:`reference_crop`."""
    return reference_crop
