"""Helpers of the method tests (tests/methods): real images as (image, mask, spacing) cases, Dice, ASSD, and a
deliberately poor prediction."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass
class Case:
    """A real image (z-scored, ``(C, *spatial)``), its reference mask and its voxel size in mm."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, ...]


def zscore(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return (x - x.mean()) / x.std()


def mni(name: str) -> np.ndarray:
    file = f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    path = importlib.resources.files("nilearn.datasets") / "data" / file
    return np.asarray(nib.load(str(path)).dataobj)


def coins_case(full: bool = False) -> Case:
    """The coins photograph (its left half, 303×192, or all of it) with the classical mask (Otsu, holes filled,
    specks removed)."""
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.filters import threshold_otsu

    coins = skimage_data.coins() if full else skimage_data.coins()[:, :192]
    mask = ndimage.binary_fill_holes(coins > threshold_otsu(coins))
    labels, n = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    mask = np.isin(labels, 1 + np.flatnonzero(sizes >= 64))
    return Case("coins", zscore(coins)[None], mask, (1.0, 1.0))


def mni_wm_case() -> Case:
    """A 32³ block of the MNI152 T1 at 2 mm through the centrum semiovale, white matter (p > 0.5) as reference."""
    view = (slice(60, 124, 2), slice(80, 144, 2), slice(70, 134, 2))
    return Case("mni", zscore(mni("t1")[view])[None], mni("wm")[view] > 127, (2.0, 2.0, 2.0))


def spleen_case() -> Case:
    """A 48×48×18 block of the Decathlon spleen CT (0.8×0.8×5 mm) around the spleen, CT-normalised as nnU-Net."""
    folder = SHARED / "ivadomed_msd_spleen"
    if not folder.is_dir():
        pytest.skip(f"real test data not present at {folder}")
    ct = np.asarray(nib.load(folder / "sub-spleen2_ct.nii.gz").dataobj).astype(np.float32)
    seg = np.asarray(nib.load(folder / "sub-spleen2_ct_seg-manual.nii.gz").dataobj) > 0
    fg = ct[seg]
    lo, hi = np.percentile(fg, [0.5, 99.5])
    image = (np.clip(ct, lo, hi) - fg.mean()) / fg.std()
    view = (slice(48, 96), slice(48, 96), slice(4, 22))
    return Case("spleen", image[view][None].astype(np.float32), seg[view], (0.794922, 0.794922, 5.0))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def assd(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Average symmetric surface distance in mm (surfaces: voxels with a neighbour outside)."""
    edge_a = a & ~ndimage.binary_erosion(a)
    edge_b = b & ~ndimage.binary_erosion(b)
    to_b = ndimage.distance_transform_edt(~b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~a, sampling=spacing)
    return float((to_b[edge_a].sum() + to_a[edge_b].sum()) / max(edge_a.sum() + edge_b.sum(), 1))


def blurred_prediction(mask: np.ndarray, grow: int, sigma: float) -> np.ndarray:
    """A deliberately poor prediction: the reference grown (or shrunk, ``grow`` < 0) then blurred, as probabilities."""
    if grow > 0:
        wrong = ndimage.binary_dilation(mask, iterations=grow)
    else:
        wrong = ndimage.binary_erosion(mask, iterations=-grow)
    p = ndimage.gaussian_filter(wrong.astype(np.float32), sigma)
    return np.stack([1 - p, p]).clip(0.02, 0.98).astype(np.float32)
