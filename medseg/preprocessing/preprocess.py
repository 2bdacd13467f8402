"""Preprocessing of one case exactly as planned: transpose, crop to nonzero, normalise, resample.

This is nnU-Net v2's ``DefaultPreprocessor.run_case_npy`` (Isensee et al., Nature Methods 2021), shared by training
and inference (it never imports the trainer). The steps, in order:

1. **Orientation.** The voxel order is kept as stored (the order :func:`medseg.io.load_image` returns, with the
   RAS affine in ``meta["affine"]``), as nnU-Net does; images are not reoriented to a canonical orientation. The
   planned ``transpose_forward`` then puts the coarsest axis first. ``properties`` keep the affine, so a prediction
   mapped back with their information lands on the original grid.
2. **Crop to nonzero**: the bounding box of the voxels nonzero in any channel (holes filled). Label voxels that are
   background *and* outside that mask become ``-1`` (nnU-Net's ``nonzero_label``); training treats ``-1`` as
   background, and z-score normalisation with ``use_mask_for_norm`` uses ``seg >= 0`` as the mask. Without a label
   the mask itself is used.
3. **Normalise** each channel as planned: ``ct`` (clip to the foreground percentiles, then the foreground mean and
   std of the dataset), ``zscore`` (this image's mean and std, inside the nonzero mask when ``use_mask_for_norm``,
   outside it 0), ``rescale_to_0_1``, ``rgb_to_0_1`` or ``none``.
4. **Resample** to the configuration's spacing (``2d``: the case's own spacing along the first transposed axis):
   images with order 3, labels one-hot with order 1, the out-of-plane axis separately with order 0 when anisotropic
   (see :mod:`medseg.preprocessing.resampling`).

``properties`` (JSON-serialisable) hold what maps a prediction back to the native grid:

================================================  ====================================================================
key                                               meaning
================================================  ====================================================================
``spacing``                                       spacing of the input image, image axis order
``affine``                                        4×4 RAS affine of the input image
``shape_before_cropping``                         spatial shape of the input, image axis order
``transpose_forward`` / ``transpose_backward``    the axis permutation applied / its inverse
``spacing_after_transpose``                       ``spacing`` permuted by ``transpose_forward``
``bbox_used_for_cropping``                        ``[start, stop)`` per axis, **transposed** order
``shape_after_cropping_and_before_resampling``    transposed order
``target_spacing``                                spacing after resampling (transposed order)
``shape_after_resampling``                        spatial shape of the returned arrays
================================================  ====================================================================

To go back: resample the prediction from ``shape_after_resampling`` to
``shape_after_cropping_and_before_resampling``, paste it into an array of the transposed ``shape_before_cropping``
at ``bbox_used_for_cropping`` (background elsewhere), then transpose with ``transpose_backward``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medseg.errors import PlanningError
from medseg.preprocessing.plans_view import Configuration, configuration_of
from medseg.preprocessing.resampling import compute_new_shape, resample_image, resample_labels

#: Label given to background voxels outside the nonzero mask (nnU-Net's ``nonzero_label``).
OUTSIDE_LABEL = -1


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Voxels nonzero in any channel of ``data`` (``(C, *spatial)``), holes filled (nnU-Net's rule)."""
    from scipy.ndimage import binary_fill_holes

    mask = np.any(data != 0, axis=0)
    return np.asarray(binary_fill_holes(mask), dtype=bool)


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """Half-open ``[start, stop)`` per axis of the True voxels; the whole array when none is True."""
    if not mask.any():
        return [[0, int(s)] for s in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def normalize_channel(image: np.ndarray, scheme: Mapping[str, Any], mask: np.ndarray | None) -> np.ndarray:
    """Normalise one channel as the plans' ``normalization`` entry says (nnU-Net's normalisation schemes).

    Args:
        image: Spatial float array.
        scheme: The plans entry: ``scheme`` and, for ``ct``, ``clip_lower``/``clip_upper``/``mean``/``std``; for
            ``zscore``, ``use_mask_for_norm``.
        mask: The nonzero mask (``seg >= 0``), used by ``zscore`` with ``use_mask_for_norm``.

    Returns:
        float32 array.
    """
    name = scheme["scheme"]
    image = image.astype(np.float32, copy=True)
    if name == "ct":
        np.clip(image, scheme["clip_lower"], scheme["clip_upper"], out=image)
        image -= scheme["mean"]
        image /= max(float(scheme["std"]), 1e-8)
    elif name == "zscore":
        if scheme.get("use_mask_for_norm") and mask is not None and mask.any():
            values = image[mask].astype(np.float64)
            mean, std = values.mean(), values.std()
            image = np.where(mask, (image - mean) / max(std, 1e-8), 0.0).astype(np.float32)
        else:
            mean, std = float(image.mean(dtype=np.float64)), float(image.std(dtype=np.float64))
            image = ((image - mean) / max(std, 1e-8)).astype(np.float32)
    elif name == "rescale_to_0_1":
        lo, hi = float(image.min()), float(image.max())
        image = ((image - lo) / max(hi - lo, 1e-8)).astype(np.float32)
    elif name == "rgb_to_0_1":
        image /= 255.0
    elif name != "none":
        raise PlanningError(f"unknown normalisation scheme {name!r} in the plans")
    return image


def target_spacing(cfg: Configuration, spacing_transposed: Sequence[float]) -> list[float]:
    """Spacing after resampling, transposed order (``2d``: the case's own spacing along the first axis)."""
    spacing = list(cfg.spacing)
    if len(spacing) == 2:
        spacing = [float(spacing_transposed[0]), *spacing]
    return spacing


def preprocess_case(
    images: Any,
    plans: Mapping[str, Any],
    configuration: str,
    label: Any = None,
    spacing: Sequence[float] | None = None,
    affine: Any = None,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Preprocess one case as planned (see the module docstring for the steps and ``properties``).

    Args:
        images: ``(C, *spatial)`` image (a MetaTensor from :func:`medseg.io.load_image`, a tensor or an array).
        plans: Loaded ``plans.json``.
        configuration: Configuration name (``3d_fullres``, …).
        label: Optional ``(1, *spatial)`` or ``(*spatial)`` label map on the same grid.
        spacing: Voxel spacing in image axis order; default ``images.meta["spacing"]``.
        affine: 4×4 affine; default ``images.meta["affine"]`` (identity when absent).

    Returns:
        ``(data, seg, properties)``: float32 ``(C, *planned_spatial)``, int16 ``(1, *planned_spatial)`` (``None``
        without a label; ``-1`` marks background outside the nonzero mask) and the properties.

    Raises:
        PlanningError: Unknown configuration or normalisation scheme, or a channel count the plans do not expect.
    """
    cfg = configuration_of(plans, configuration)
    meta = getattr(images, "meta", {}) or {}
    if spacing is None:
        if "spacing" not in meta:
            raise PlanningError("preprocess_case needs the image spacing (pass spacing= or a MetaTensor)")
        spacing = meta["spacing"]
    spacing = [float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1)]
    if affine is None:
        affine = meta.get("affine", np.eye(4))
    affine = np.asarray(getattr(affine, "numpy", lambda: affine)(), dtype=np.float64)
    data = np.asarray(images.numpy() if hasattr(images, "numpy") else images, dtype=np.float32)
    if data.ndim != 4:
        raise PlanningError(f"expected a (C, x, y, z) image, got shape {tuple(data.shape)}")
    expected = cfg.num_channels
    if data.shape[0] != expected:
        raise PlanningError(f"the image has {data.shape[0]} channels, the plans expect {expected}")
    seg = None
    if label is not None:
        seg = np.asarray(label.numpy() if hasattr(label, "numpy") else label)
        if seg.ndim == 3:
            seg = seg[None]
        seg = np.rint(seg).astype(np.int16) if seg.dtype.kind == "f" else seg.astype(np.int16)
        if seg.shape[1:] != data.shape[1:]:
            raise PlanningError(f"label grid {seg.shape[1:]} does not match the image grid {data.shape[1:]}")

    forward = list(cfg.transpose_forward)
    backward = list(cfg.transpose_backward)
    shape_before = [int(s) for s in data.shape[1:]]
    data = np.ascontiguousarray(data.transpose([0, *(a + 1 for a in forward)]))
    if seg is not None:
        seg = np.ascontiguousarray(seg.transpose([0, *(a + 1 for a in forward)]))
    spacing_t = [spacing[a] for a in forward]

    mask = nonzero_mask(data)
    bbox = bounding_box(mask)
    slicer = tuple(slice(a, b) for a, b in bbox)
    data = data[(slice(None), *slicer)]
    mask = mask[slicer]
    if seg is not None:
        seg = seg[(slice(None), *slicer)].copy()
        seg[(seg == 0) & ~mask[None]] = OUTSIDE_LABEL
        norm_mask = seg[0] >= 0
    else:
        norm_mask = mask
    shape_after_crop = [int(s) for s in data.shape[1:]]

    data = np.stack([normalize_channel(c, s, norm_mask) for c, s in zip(data, cfg.normalization, strict=True)])

    new_spacing = target_spacing(cfg, spacing_t)
    new_shape = compute_new_shape(shape_after_crop, spacing_t, new_spacing)
    settings = cfg.resampling
    data = resample_image(data, spacing_t, new_spacing, settings, new_shape)
    if seg is not None:
        seg = resample_labels(seg, spacing_t, new_spacing, settings, new_shape)
    properties = {
        "spacing": spacing,
        "affine": affine.tolist(),
        "shape_before_cropping": shape_before,
        "transpose_forward": forward,
        "transpose_backward": backward,
        "spacing_after_transpose": spacing_t,
        "bbox_used_for_cropping": bbox,
        "shape_after_cropping_and_before_resampling": shape_after_crop,
        "target_spacing": new_spacing,
        "shape_after_resampling": [int(s) for s in data.shape[1:]],
    }
    return data.astype(np.float32, copy=False), seg, properties


def class_locations(
    seg: np.ndarray, values: Sequence[int], num_samples: int = 10_000, min_coverage: float = 0.01, seed: int = 1234
) -> dict[int, np.ndarray]:
    """Sampled voxel coordinates of each foreground label (nnU-Net's ``_sample_foreground_locations``).

    Per label: ``max(min(num_samples, n), ceil(0.01 · n))`` of its ``n`` voxels, drawn without replacement with a
    generator seeded by ``seed``; used to centre the foreground-oversampled patches.

    Args:
        seg: ``(1, *spatial)`` label map.
        values: Foreground label values.
        num_samples: Samples per label.
        min_coverage: Minimum fraction of a label's voxels kept.
        seed: Generator seed.

    Returns:
        label → int32 array ``(k, ndim)`` of spatial coordinates (``k`` may be 0).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for value in values:
        coords = np.argwhere(seg[0] == value)
        if len(coords) > 0:
            target = max(min(num_samples, len(coords)), int(np.ceil(len(coords) * min_coverage)))
            coords = coords[np.sort(rng.choice(len(coords), target, replace=False))]
        out[int(value)] = coords.astype(np.int32)
    return out
