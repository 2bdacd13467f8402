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


# --- Real-image learning tasks shared by the model-family tests ("each family learns") ---------------------------

def coins_task(size: int = 64, channels: int = 1):
    """A real 2D segmentation task: scikit-image's ``coins`` photograph, coin masks by Otsu threshold + filled holes.

    The left and right halves of the photograph, each resized to ``size``², form a batch of two. Returns
    ``(x, y)``: ``x`` float ``(2, channels, size, size)`` z-scored (the grey image repeated over ``channels``), ``y``
    int64 ``(2, size, size)`` with 0 background and 1 coin. Skips when scikit-image is missing.
    """
    import pytest
    import torch

    skimage_data = pytest.importorskip("skimage.data")
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    coins = skimage_data.coins().astype(np.float32)
    mask = ndimage.binary_fill_holes(coins > threshold_otsu(coins)).astype(np.float32)
    half = coins.shape[1] // 2
    images = torch.from_numpy(np.stack([coins[:, :half], coins[:, half:2 * half]]))[:, None]
    masks = torch.from_numpy(np.stack([mask[:, :half], mask[:, half:2 * half]]))[:, None]
    x = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.nn.functional.interpolate(masks, size=(size, size), mode="nearest")[:, 0].long()
    x = (x - x.mean()) / x.std()
    return x.repeat(1, channels, 1, 1), y


def mni_task(size: int = 32, channels: int = 1):
    """A real 3D segmentation task: nilearn's MNI152 T1 template and its white-matter map (> 0.5).

    Two ``size``³ crops (resampled from 96³ mm around the brain centre, one shifted by 16 mm) form a batch of two.
    Returns ``(x, y)``: ``x`` float ``(2, channels, size, size, size)`` z-scored, ``y`` int64 ``(2, size, size,
    size)`` with 0 background and 1 white matter. Skips when nilearn is missing.
    """
    import importlib.resources

    import nibabel as nib
    import pytest
    import torch

    pytest.importorskip("nilearn")
    root = importlib.resources.files("nilearn.datasets") / "data"
    t1 = np.asarray(nib.load(str(root / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")).dataobj, np.float32)
    wm = np.asarray(nib.load(str(root / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")).dataobj, np.float32)
    crops_x, crops_y = [], []
    for shift in (0, 16):
        view = (slice(50 + shift, 146 + shift), slice(60, 156), slice(40, 136))
        crops_x.append(t1[view])
        crops_y.append((wm[view] > 0.5 * wm.max()).astype(np.float32))
    images = torch.from_numpy(np.stack(crops_x))[:, None]
    masks = torch.from_numpy(np.stack(crops_y))[:, None]
    x = torch.nn.functional.interpolate(images, size=(size,) * 3, mode="trilinear", align_corners=False)
    y = torch.nn.functional.interpolate(masks, size=(size,) * 3, mode="nearest")[:, 0].long()
    x = (x - x.mean()) / x.std()
    return x.repeat(1, channels, 1, 1, 1), y


def fit_losses(model, x, y, steps: int = 30, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Train ``model`` on ``(x, y)`` with Adam and cross-entropy for ``steps`` steps; return the loss of each step.

    Training-mode outputs that are lists or tuples (deep supervision, auxiliary heads) are scored on their first,
    full-resolution element; outputs smaller than ``y`` are upsampled (nearest) to it.
    """
    import torch

    torch.manual_seed(seed)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        out = model(x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        if out.shape[2:] != y.shape[1:]:
            out = torch.nn.functional.interpolate(out, size=y.shape[1:], mode="nearest")
        loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def assert_learns(model, x, y, steps: int = 30, lr: float = 1e-3, factor: float = 0.6) -> list[float]:
    """Assert that training ``model`` on a real task lowers its loss: the best of the last 5 steps is below
    ``factor`` × the first step's loss. Returns the losses."""
    losses = fit_losses(model, x, y, steps=steps, lr=lr)
    assert all(np.isfinite(losses)), losses
    assert min(losses[-5:]) < factor * losses[0], f"loss did not fall: {losses[0]:.4f} -> {losses[-5:]}"
    return losses
