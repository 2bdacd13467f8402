"""Metric definitions: analytic shapes, empty-mask rules, HD95 pooling, exact crops, MONAI cross-checks, real data."""

from __future__ import annotations

import importlib.resources
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_shapes import ball, cube
from scipy import ndimage

from medseg.evaluation import metrics as M

SPACING = (0.5, 1.0, 2.0)


# ---------------------------------------------------------------------------------------------------------------------
# Analytic shapes


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_shifted_cubes_anisotropic(axis: int, k: int) -> None:
    shape, n = (30, 30, 30), 10
    start = [8, 8, 8]
    ref = cube(shape, tuple(start), n)
    start[axis] += k
    pred = cube(shape, tuple(start), n)
    out = M.compute_metrics(pred, ref, SPACING, nsd_tolerances_mm=(k * SPACING[axis], k * SPACING[axis] * 0.99))
    assert out["status"] == "ok"
    assert out["Dice"] == pytest.approx((n - k) / n)
    assert out["IoU"] == pytest.approx((n - k) / (n + k))
    assert out["TP"] == n * n * (n - k) and out["FP"] == out["FN"] == n * n * k
    assert out["TN"] == pred.size - n * n * (n + k)
    assert out["HD"] == pytest.approx(k * SPACING[axis])  # the far faces are k voxels apart along the shift axis
    assert out["HD95"] <= out["HD"] + 1e-12
    assert M.nsd(pred, ref, SPACING, k * SPACING[axis]) == 1.0
    assert M.nsd(pred, ref, SPACING, k * SPACING[axis] * 0.99) < 1.0
    # the standalone functions agree with the combined one
    assert M.dice(pred, ref) == out["Dice"] and M.iou(pred, ref) == out["IoU"]
    assert M.hausdorff(pred, ref, SPACING) == out["HD"]
    assert M.hausdorff95(pred, ref, SPACING) == out["HD95"]
    assert M.assd(pred, ref, SPACING) == out["ASSD"]


def test_shifted_cubes_exact_assd_and_nsd() -> None:
    """Cubes of 4 voxels shifted by 1 along x, 1 mm isotropic: every distance counted by hand."""
    shape = (12, 12, 12)
    ref, pred = cube(shape, (4, 4, 4), 4), cube(shape, (5, 4, 4), 4)
    d = M.surface_distances(pred, ref, (1, 1, 1))
    # A 4³ cube has 4³ - 2³ = 56 border voxels. For pred: the x = 5..7 layers lie on ref's border where they touch
    # ref's side faces (distance 0) except ref's interior 2×2 columns; the far face x = 8 is 1 voxel from ref's x = 7.
    assert d.pred_to_ref.size == d.ref_to_pred.size == 56
    assert d.hausdorff == 1.0
    assert np.count_nonzero(d.pred_to_ref == 0) == 56 - 16 - 4 * 1  # far face (16) and 4 interior voxels at x = 5, 6
    assert np.all(np.isin(d.pred_to_ref, [0.0, 1.0]))
    expected_assd = (2 * 20) / 112  # 20 voxels at distance 1 in each direction
    assert d.average_symmetric == pytest.approx(expected_assd)
    assert d.surface_dice(0.5) == pytest.approx((112 - 40) / 112)
    assert d.surface_dice(1.0) == 1.0


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 2.0)])
def test_concentric_spheres(spacing: tuple[float, float, float]) -> None:
    r1, r2 = 8.0, 12.0
    shape = tuple(round(34 / s) for s in spacing)
    centre = tuple(n * s / 2 for n, s in zip(shape, spacing, strict=True))
    ref, pred = ball(shape, centre, r2, spacing), ball(shape, centre, r1, spacing)
    out = M.compute_metrics(pred, ref, spacing, nsd_tolerances_mm=(r2 - r1 + max(spacing), 1.0))
    tol = max(spacing)  # border voxels sit up to one voxel inside the continuous surface
    assert abs(out["HD"] - (r2 - r1)) <= tol
    assert abs(out["ASSD"] - (r2 - r1)) <= tol
    assert abs(out["HD95"] - (r2 - r1)) <= tol
    assert out["Dice"] == pytest.approx(2 * r1**3 / (r1**3 + r2**3), rel=0.08)
    assert out[M.nsd_key(r2 - r1 + max(spacing))] == 1.0
    assert out["NSD_1mm"] < 0.05


def test_identical_masks() -> None:
    mask = ball((20, 20, 20), (10, 10, 10), 6)
    out = M.compute_metrics(mask, mask, (1, 1, 1))
    assert out["Dice"] == out["IoU"] == out["NSD_1mm"] == 1.0
    assert out["HD"] == out["HD95"] == out["ASSD"] == 0.0


def test_2d_masks() -> None:
    ref, pred = cube((20, 20), (5, 5), 6), cube((20, 20), (5, 7), 6)
    out = M.compute_metrics(pred, ref, (1.0, 0.5))
    assert out["HD"] == pytest.approx(1.0) and out["Dice"] == pytest.approx(4 / 6)


def test_spacing_is_required_and_validated() -> None:
    mask = cube((5, 5, 5), (1, 1, 1), 2)
    with pytest.raises(ValueError, match="spacing"):
        M.hausdorff(mask, mask, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        M.compute_metrics(mask, mask, (1, 0, 1))
    with pytest.raises(ValueError, match="shapes differ"):
        M.compute_metrics(mask, mask[:4], (1, 1, 1))
    with pytest.raises(ValueError, match="unknown metric"):
        M.compute_metrics(mask, mask, (1, 1, 1), ["dice", "hd99"])


# ---------------------------------------------------------------------------------------------------------------------
# Empty masks


def test_both_empty() -> None:
    empty = np.zeros((10, 10, 10), bool)
    out = M.compute_metrics(empty, empty, SPACING, nsd_tolerances_mm=(1.0,))
    assert out["status"] == "both_empty"
    assert out["Dice"] == out["IoU"] == out["NSD_1mm"] == 1.0
    assert out["HD"] == out["HD95"] == out["ASSD"] == 0.0
    assert out["TN"] == 1000 and out["n_pred"] == out["n_ref"] == 0
    assert M.dice(empty, empty) == 1.0 and M.hausdorff(empty, empty, SPACING) == 0.0
    assert M.nsd(empty, empty, SPACING, 1) == 1.0


@pytest.mark.parametrize("which", ["pred", "ref"])
def test_one_empty_scores_the_penalty(which: str) -> None:
    shape = (10, 20, 30)
    empty, mask = np.zeros(shape, bool), cube(shape, (2, 2, 2), 3)
    pred, ref = (empty, mask) if which == "pred" else (mask, empty)
    out = M.compute_metrics(pred, ref, SPACING)
    penalty = float(np.sqrt((10 * 0.5) ** 2 + 20**2 + (30 * 2.0) ** 2))
    assert M.empty_penalty_mm(shape, SPACING) == pytest.approx(penalty)
    assert out["status"] == ("missed" if which == "pred" else "false_positive")
    assert out["Dice"] == out["IoU"] == out["NSD_1mm"] == 0.0
    assert out["HD"] == out["HD95"] == out["ASSD"] == pytest.approx(penalty)
    assert all(np.isfinite(v) for k, v in out.items() if k != "status")
    assert M.hausdorff95(pred, ref, SPACING) == pytest.approx(penalty)
    assert M.hausdorff(pred, ref, SPACING, penalty_mm=99.0) == 99.0
    # the penalty is worse than any distance two voxels of this grid can have
    corner_to_corner = np.sqrt(np.sum(((np.array(shape) - 1) * np.array(SPACING)) ** 2))
    assert penalty > corner_to_corner
    with pytest.raises(ValueError, match="non-empty"):
        M.surface_distances(pred, ref, SPACING)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_monai_drops_misses_but_we_keep_them() -> None:
    """The pitfall this module avoids: MONAI's HD95 is NaN for a missed structure, so nanmean forgets it."""
    from monai.metrics import compute_hausdorff_distance

    shape = (24, 24, 24)
    ref = cube(shape, (6, 6, 6), 8)
    good = cube(shape, (7, 6, 6), 8)
    missed = np.zeros(shape, bool)
    t = lambda m: torch.as_tensor(m[None, None])  # noqa: E731
    with pytest.warns(UserWarning):
        monai_miss = float(compute_hausdorff_distance(t(missed), t(ref), percentile=95, spacing=(1, 1, 1)))
    monai_good = float(compute_hausdorff_distance(t(good), t(ref), percentile=95, spacing=(1, 1, 1)))
    assert not np.isfinite(monai_miss)  # NaN (MONAI ≥ 1.5) or inf: either way dropped or poisoning the mean
    ours = [M.hausdorff95(good, ref, (1, 1, 1)), M.hausdorff95(missed, ref, (1, 1, 1))]
    assert ours[0] == pytest.approx(monai_good)
    assert np.mean(ours) > ours[0]  # the miss makes the mean worse, as it should


# ---------------------------------------------------------------------------------------------------------------------
# HD95 pooling


def _pooling_case() -> tuple[np.ndarray, np.ndarray]:
    """Prediction = reference cube; the reference also has a distant small blob (6–7 % of its border)."""
    shape = (40, 40, 40)
    pred = cube(shape, (4, 4, 4), 14)
    ref = pred | cube(shape, (30, 30, 30), 4)
    return pred, ref


def test_hd95_pooling_differs_and_is_documented() -> None:
    pred, ref = _pooling_case()
    d = M.surface_distances(pred, ref, (1, 1, 1))
    far = np.count_nonzero(d.ref_to_pred > 0)
    assert far == 56 and d.ref_to_pred.size == 14**3 - 12**3 + 56
    pooled_fraction = far / (d.ref_to_pred.size + d.pred_to_ref.size)
    assert far / d.ref_to_pred.size > 0.05 > pooled_fraction  # so the two definitions must differ
    per_direction = M.hausdorff95(pred, ref, (1, 1, 1))
    pooled = M.hausdorff95(pred, ref, (1, 1, 1), pooling="pooled")
    assert per_direction == pytest.approx(max(np.percentile(d.pred_to_ref, 95), np.percentile(d.ref_to_pred, 95)))
    assert pooled == pytest.approx(np.percentile(np.concatenate([d.pred_to_ref, d.ref_to_pred]), 95))
    assert pooled == 0.0 and per_direction > 10.0
    assert M.compute_metrics(pred, ref, (1, 1, 1))["HD95"] == per_direction  # the default is per direction
    with pytest.raises(ValueError, match="pooling"):
        d.hausdorff_percentile(95, "mean")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------------
# Cropping is exact


def _full_volume_distances(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Reference implementation without any cropping: borders and distance transforms on the whole array."""
    structure = ndimage.generate_binary_structure(pred.ndim, 1)
    bp = pred & ~ndimage.binary_erosion(pred, structure, border_value=0)
    br = ref & ~ndimage.binary_erosion(ref, structure, border_value=0)
    return ndimage.distance_transform_edt(~br, sampling=spacing)[bp], ndimage.distance_transform_edt(
        ~bp, sampling=spacing
    )[br]


def _blobs(shape, seed: int, threshold: float = 0.62) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 3.0)
    field = (field - field.min()) / (field.max() - field.min())
    return field > threshold


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_equals_full_volume(seed: int) -> None:
    shape, spacing = (36, 30, 24), (0.7, 1.1, 2.5)
    pred, ref = _blobs(shape, seed), _blobs(shape, seed + 10)
    pred[0:3, 5:9, 0:4] = True  # touching the array's edge: border voxels there must match the full-volume rule
    assert pred.any() and ref.any()
    d = M.surface_distances(pred, ref, spacing)
    full_pr, full_rp = _full_volume_distances(pred, ref, spacing)
    np.testing.assert_allclose(np.sort(d.pred_to_ref), np.sort(full_pr))
    np.testing.assert_allclose(np.sort(d.ref_to_pred), np.sort(full_rp))
    # embedding in a larger volume changes nothing but TN
    big_p, big_r = np.zeros((60, 50, 40), bool), np.zeros((60, 50, 40), bool)
    big_p[10:46, 7:37, 9:33], big_r[10:46, 7:37, 9:33] = pred, ref
    small = M.compute_metrics(pred, ref, spacing, penalty_mm=1.0)
    big = M.compute_metrics(big_p, big_r, spacing, penalty_mm=1.0)
    for key in small:
        if key != "TN":
            assert big[key] == small[key], key


def test_kdtree_path_equals_distance_transform(monkeypatch) -> None:
    shape, spacing = (40, 34, 26), (0.9, 0.7, 2.2)
    pred, ref = _blobs(shape, 7), _blobs(shape, 8)
    edt = M.surface_distances(pred, ref, spacing)
    monkeypatch.setattr(M, "EDT_MAX_VOXELS", 0)  # force the k-d tree
    tree = M.surface_distances(pred, ref, spacing)
    np.testing.assert_allclose(tree.pred_to_ref, edt.pred_to_ref, rtol=1e-12)
    np.testing.assert_allclose(tree.ref_to_pred, edt.ref_to_pred, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Cross-checks against MONAI (same definitions: border voxels, per-direction percentile, pooled mean)


def _t(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(mask[None, None])


@pytest.mark.parametrize("seed", [3, 4])
def test_matches_monai(seed: int) -> None:
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    shape, spacing = (40, 36, 28), (0.8, 1.2, 2.0)
    pred, ref = _blobs(shape, seed), _blobs(shape, seed + 20)
    tolerances = (1.0, 2.0, 3.5)
    ours = M.compute_metrics(pred, ref, spacing, nsd_tolerances_mm=tolerances)
    p, r = _t(pred), _t(ref)
    hd = float(compute_hausdorff_distance(p, r, include_background=True, spacing=spacing))
    hd95 = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=spacing))
    assd = float(compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=spacing))
    assert ours["HD"] == pytest.approx(hd, rel=1e-5)
    assert ours["HD95"] == pytest.approx(hd95, rel=1e-5)
    assert ours["ASSD"] == pytest.approx(assd, rel=1e-5)
    for tol in tolerances:
        monai_nsd = float(compute_surface_dice(p.float(), r.float(), [tol], include_background=True, spacing=spacing))
        assert ours[M.nsd_key(tol)] == pytest.approx(monai_nsd, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Scale: small objects in a large volume stay memory-bounded (timings live in benchmarks/, not in tests)


def test_large_volume_small_objects_memory_bounded() -> None:
    shape, spacing = (256, 256, 200), (0.7, 0.7, 1.5)
    ref = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    ref[100:112, 120:130, 90:98] = True
    pred[101:113, 121:131, 90:99] = True
    ref[200:204, 30:34, 10:13] = True  # a second small component far away: the box grows, stays sparse
    tracemalloc.start()
    out = M.compute_metrics(pred, ref, spacing)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert out["status"] == "ok" and 0 < out["Dice"] < 1
    # one boolean copy of the volume (the union) plus the box's distance maps: far below a float copy of the volume
    assert peak < 8 * ref.size, f"peak {peak / 1e6:.0f} MB"


def test_large_organ_box_is_exact() -> None:
    """A liver-sized cube pair (120 × 120 × 150 voxels, a 2.2 M-voxel box) takes the k-d tree path, exactly."""
    shape = (160, 160, 170)
    ref, pred = cube(shape, (10, 10, 10), (120, 120, 150)), cube(shape, (13, 10, 12), (120, 120, 150))
    out = M.compute_metrics(pred, ref, (0.8, 0.8, 1.0))
    assert out["HD"] == pytest.approx(np.hypot(3 * 0.8, 2 * 1.0))  # corner (10, 10, 10) to corner (13, 10, 12)


# ---------------------------------------------------------------------------------------------------------------------
# Real masks: the MNI152 grey and white matter maps shipped with nilearn


def _mni(name: str) -> tuple[np.ndarray, tuple[float, ...]]:
    import nibabel as nib

    path = Path(str(importlib.resources.files("nilearn.datasets") / "data" / name))
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    return data > 0.5 * data.max(), tuple(float(s) for s in img.header.get_zooms())


@pytest.mark.parametrize("tissue", ["gm", "wm"])
def test_mni_tissue_eroded(tissue: str) -> None:
    ref, spacing = _mni(f"mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz")
    ref = ref[40:160, 40:190, 30:160]  # the brain, to keep the MONAI cross-check quick
    pred = ndimage.binary_erosion(ref)
    assert ref.sum() > 10_000 and pred.sum() > 0
    out = M.compute_metrics(pred, ref, spacing, nsd_tolerances_mm=(1.0, 2.0))
    assert out["Dice"] == pytest.approx(2 * pred.sum() / (pred.sum() + ref.sum()))
    assert out["NSD_1mm"] > 0.9 and out["NSD_2mm"] >= out["NSD_1mm"]
    # one erosion moves most of the border by one voxel; thin strands vanish entirely, so HD is large but HD95 is not
    assert 0 < out["ASSD"] < 1.5 and out["HD95"] <= 2.0 and out["HD"] >= out["HD95"]
    from monai.metrics import compute_hausdorff_distance

    monai_hd = float(compute_hausdorff_distance(_t(pred), _t(ref), spacing=spacing))
    monai_hd95 = float(compute_hausdorff_distance(_t(pred), _t(ref), percentile=95, spacing=spacing))
    assert out["HD"] == pytest.approx(monai_hd, rel=1e-5)
    assert out["HD95"] == pytest.approx(monai_hd95, rel=1e-5)
