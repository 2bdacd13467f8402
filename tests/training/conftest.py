"""Training fixtures: a small real MRI dataset (a 48³ crop of nilearn's MNI152 T1 at 2 mm, white matter as label)."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest


def _mni(name: str) -> np.ndarray:
    file = f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    path = importlib.resources.files("nilearn.datasets") / "data" / file
    return np.asarray(nib.load(str(path)).dataobj)


def write_mni_dataset(root: Path) -> dict[str, Any]:
    """Two cases pointing at the same 48³ crop (one trains, the other validates: training-case Dice)."""
    from medseg.data import load_manifest
    from medseg.planning import compute_fingerprint, plan_experiment, save_fingerprint, save_plans

    root.mkdir(parents=True, exist_ok=True)
    t1 = _mni("t1")[::2, ::2, ::2]
    wm = _mni("wm")[::2, ::2, ::2]
    view = (slice(25, 73), slice(30, 78), slice(25, 73))
    image = t1[view].astype(np.int16)
    label = (wm[view] > 0.5 * 255).astype(np.uint8)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), root / "mni_t1.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), root / "mni_wm.nii.gz")
    manifest = {
        "format_version": 1,
        "name": "mni_wm",
        "channels": [{"name": "T1", "modality": "MR"}],
        "labels": {"background": 0, "wm": 1},
        "cases": [
            {"id": "mni", "images": ["mni_t1.nii.gz"], "label": "mni_wm.nii.gz"},
            {"id": "mni_copy", "images": ["mni_t1.nii.gz"], "label": "mni_wm.nii.gz"},
        ],
        "splits": [{"train": ["mni"], "val": ["mni_copy"]}],
    }
    manifest_path = root / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    loaded = load_manifest(manifest_path)
    fingerprint = compute_fingerprint(loaded, workers=1)
    save_fingerprint(fingerprint, root / "fingerprint.json")
    plans = plan_experiment(fingerprint, configs=("3d_fullres",), dataset_name="mni_wm")
    save_plans(plans, root / "plans.json")
    return {"root": root, "manifest": manifest_path, "plans": root / "plans.json", "image": image, "label": label}


@pytest.fixture(scope="session")
def mni_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The dataset, its fingerprint and 3d_fullres plans (patch 48³, 4 stages)."""
    return write_mni_dataset(tmp_path_factory.mktemp("mni_train"))


#: Settings of a tiny, fast run on the MNI crop (a 4-stage nnU-Net with 4…32 features, 16³ patches).
TINY = [
    "patch_size=[16, 16, 16]",
    "model_kwargs={features_per_stage: [4, 8, 16, 32]}",
    "num_workers=0",
    "device=cpu",
    "val_iterations=1",
    "final_validation=false",
    "augmentation.enabled=false",
    "progress=plain",
]


@pytest.fixture
def tiny_settings() -> list[str]:
    """``--set`` overrides for a tiny CPU run."""
    return list(TINY)
