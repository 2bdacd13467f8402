"""The fingerprint on real images, checked against numpy computed directly."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.data import load_manifest
from medseg.errors import PlanningError
from medseg.planning import compute_fingerprint, fingerprint_matches, plan_experiment, validate_fingerprint


def _reference_stats(values: np.ndarray) -> dict[str, float]:
    p005, median, p995 = np.percentile(values, (0.5, 50, 99.5))
    return {"mean": values.mean(), "median": median, "std": values.std(), "min": values.min(), "max": values.max(),
            "percentile_00_5": p005, "percentile_99_5": p995}


def test_mni_fingerprint_matches_numpy(mni_dataset, crop_of):
    calls = []
    fp = compute_fingerprint(mni_dataset["manifest"], workers=1, progress=lambda *a: calls.append(a))
    validate_fingerprint(fp)
    assert [c[0] for c in calls] == [1, 2, 3] and all(c[1] == 3 for c in calls)
    assert fp["channels"] == [{"name": "T1", "modality": "MR"}]
    rel_sizes, fg_values = [], []
    counts_total = {"0": 0, "1": 0, "2": 0}
    for case in fp["cases"]:
        image, label, spacing = mni_dataset["arrays"][case["id"]]
        crop = crop_of(image)
        cropped_shape = [s.stop - s.start for s in crop]
        assert case["spacing"] == pytest.approx(spacing)
        assert case["shape_before_crop"] == list(label.shape)
        assert case["shape_after_crop"] == cropped_shape
        assert case["shape_after_crop"] < case["shape_before_crop"]  # the zero padding is cropped away
        rel = np.prod(cropped_shape) / np.prod(label.shape)
        assert case["relative_size_after_cropping"] == pytest.approx(rel)
        rel_sizes.append(rel)
        fg = label[crop] > 0
        fg_values.append(image[0][crop][fg])
        values, counts = np.unique(label, return_counts=True)
        expected_counts = {str(v): int(c) for v, c in zip(values, counts, strict=True)}
        assert case["class_voxel_counts"] == expected_counts
        assert case["foreground_voxels"] == int(fg.sum())
        for k, v in expected_counts.items():
            counts_total[k] += v
    assert fp["median_relative_size_after_cropping"] == pytest.approx(np.median(rel_sizes))
    assert fp["class_voxel_counts"] == counts_total
    # fewer foreground voxels than the sample size: the statistics are exact
    all_fg = np.concatenate(fg_values)
    assert fp["intensity_sampling"]["exact"] is True
    assert fp["intensity_sampling"]["sampled_voxels"] == all_fg.size
    stats = fp["foreground_intensity_properties_per_channel"]["0"]
    for key, value in _reference_stats(all_fg).items():
        assert stats[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    # MR: per-image z-score; the brain-only template loses more than 25% to cropping → nonzero mask
    plans = plan_experiment(fp)
    assert fp["median_relative_size_after_cropping"] < 0.75
    norm = plans["configurations"]["3d_fullres"]["normalization"][0]
    assert (norm["scheme"], norm["use_mask_for_norm"]) == ("zscore", True)


def test_sampling_is_proportional_reproducible_and_worker_independent(mni_dataset):
    full = compute_fingerprint(mni_dataset["manifest"], workers=1)
    total = full["intensity_sampling"]["foreground_voxels"]
    a = compute_fingerprint(mni_dataset["manifest"], workers=1, max_samples=5000)
    b = compute_fingerprint(mni_dataset["manifest"], workers=2, max_samples=5000)
    assert a == b  # same seed, same sample, whatever the pool does
    assert a["intensity_sampling"]["sampled_voxels"] == 5000 and a["intensity_sampling"]["exact"] is False
    exact = full["foreground_intensity_properties_per_channel"]["0"]
    sampled = a["foreground_intensity_properties_per_channel"]["0"]
    assert sampled["mean"] == pytest.approx(exact["mean"], rel=0.03)
    assert sampled["median"] == pytest.approx(exact["median"], rel=0.05)
    assert total > 5000
    other_seed = compute_fingerprint(mni_dataset["manifest"], workers=1, max_samples=5000, seed=7)
    assert other_seed["foreground_intensity_properties_per_channel"] != a["foreground_intensity_properties_per_channel"]


def test_spleen_ct_fingerprint_and_plan(spleen_manifest):
    import nibabel as nib

    fp = compute_fingerprint(spleen_manifest, workers=1)
    manifest = load_manifest(spleen_manifest)
    ct = np.asanyarray(nib.load(manifest.image_paths(manifest.cases[0])[0]).dataobj).astype(np.float64)
    seg = np.asanyarray(nib.load(manifest.label_path(manifest.cases[0])).dataobj)
    case = fp["cases"][0]
    assert case["spacing"] == pytest.approx([0.794922, 0.794922, 5.0], abs=1e-5)
    assert case["shape_after_crop"] == [164, 166, 26]  # air is -1000 HU, not zero: nothing to crop
    assert case["class_voxel_counts"] == {"0": int((seg == 0).sum()), "1": int((seg == 1).sum())}
    stats = fp["foreground_intensity_properties_per_channel"]["0"]
    for key, value in _reference_stats(ct[seg > 0]).items():
        assert stats[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    plans = plan_experiment(fp)
    full = plans["configurations"]["3d_fullres"]
    assert plans["transpose_forward"] == [2, 1, 0]  # 5 mm slices first, then nnU-Net's y, x
    assert full["spacing"] == pytest.approx([5.0, 0.794922, 0.794922], abs=1e-5)
    norm = full["normalization"][0]
    assert norm["scheme"] == "ct" and norm["use_mask_for_norm"] is False
    assert (norm["clip_lower"], norm["clip_upper"]) == (stats["percentile_00_5"], stats["percentile_99_5"])
    assert (norm["mean"], norm["std"]) == (stats["mean"], stats["std"])


def test_fingerprint_errors(tmp_path, mni_dataset):
    import json

    import nibabel as nib

    manifest = json.loads(mni_dataset["manifest"].read_text())
    root = mni_dataset["manifest"].parent
    # an undeclared label value
    reference = nib.load(root / "mni_a_seg.nii.gz")
    lbl = np.asanyarray(reference.dataobj).copy()
    lbl[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(lbl, reference.affine), tmp_path / "bad_seg.nii.gz")
    bad = dict(manifest, cases=[{"id": "a", "images": [str(root / "mni_a_t1.nii.gz")],
                                 "label": str(tmp_path / "bad_seg.nii.gz")}])
    (tmp_path / "m.json").write_text(json.dumps(bad))
    with pytest.raises(PlanningError, match=r"label values \[7\] are not declared"):
        compute_fingerprint(tmp_path / "m.json", workers=1)
    # a label on another grid
    nib.save(nib.Nifti1Image(lbl[:-1], reference.affine), tmp_path / "small_seg.nii.gz")
    bad["cases"][0]["label"] = str(tmp_path / "small_seg.nii.gz")
    (tmp_path / "m.json").write_text(json.dumps(bad))
    with pytest.raises(PlanningError, match=r"label grid differs from the image; image vs label: shape"):
        compute_fingerprint(tmp_path / "m.json", workers=1)
    # a label with the right shape but another spacing
    nib.save(nib.Nifti1Image(lbl, np.eye(4)), tmp_path / "spaced_seg.nii.gz")
    bad["cases"][0]["label"] = str(tmp_path / "spaced_seg.nii.gz")
    (tmp_path / "m.json").write_text(json.dumps(bad))
    with pytest.raises(PlanningError, match=r"label grid differs from the image; image vs label: spacing"):
        compute_fingerprint(tmp_path / "m.json", workers=1)
    # no labelled case
    unl = dict(manifest, cases=[{"id": "a", "images": [str(root / "mni_a_t1.nii.gz")]}])
    (tmp_path / "u.json").write_text(json.dumps(unl))
    with pytest.raises(PlanningError, match="no labelled case"):
        compute_fingerprint(tmp_path / "u.json", workers=1)


def test_fingerprint_matches_manifest(mni_dataset):
    fp = compute_fingerprint(mni_dataset["manifest"], workers=1, max_samples=100)
    manifest = load_manifest(mni_dataset["manifest"])
    assert fingerprint_matches(fp, manifest)
    fp["cases"] = fp["cases"][:2]
    assert not fingerprint_matches(fp, manifest)
