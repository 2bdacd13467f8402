"""``medseg fingerprint`` and ``medseg plan`` end to end on a tiny real dataset, in-process."""

from __future__ import annotations

import json
import os

from medseg.cli.main import main
from medseg.planning import load_fingerprint, load_plans


def test_fingerprint_command(tmp_path, mni_dataset, capsys):
    out = tmp_path / "fp.json"
    assert main(["fingerprint", str(mni_dataset["manifest"]), "-o", str(out), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "fingerprint of mni_tiny (3 labelled cases)" in text
    assert "median spacing" in text and f"wrote {out}" in text
    assert load_fingerprint(out)["num_cases"] == 3


def test_plan_command_computes_then_reuses_the_fingerprint(tmp_path, mni_dataset, capsys):
    out = tmp_path / "plans" / "plans.json"
    args = ["plan", str(mni_dataset["manifest"]), "-o", str(out), "--workers", "1", "--gpu-memory-gb", "8"]
    assert main(args) == 0
    text = capsys.readouterr().out
    fp_path = out.parent / "fingerprint.json"
    assert f"wrote {fp_path}" in text and f"wrote {out}" in text
    for row in ("3d_fullres", "2d", "patch size", "batch size", "poolings per axis", "normalisation", "T1: zscore"):
        assert row in text, row
    plans = load_plans(out)
    assert set(plans["configurations"]) == {"2d", "3d_fullres"}
    assert plans["dataset_name"] == "mni_tiny"
    assert plans["configurations"]["3d_fullres"]["model"]["name"] == "nnunet"
    # second run: the fingerprint is newer than the manifest and matches it, so it is reused
    assert main(args) == 0
    assert f"using fingerprint {fp_path}" in capsys.readouterr().out
    # a manifest edited after the fingerprint makes it stale
    stamp = fp_path.stat().st_mtime
    os.utime(mni_dataset["manifest"], (stamp + 10, stamp + 10))
    assert main(args) == 0
    assert f"wrote {fp_path}" in capsys.readouterr().out


def test_plan_command_options_and_errors(tmp_path, mni_dataset, capsys):
    fp = tmp_path / "elsewhere.json"
    out = tmp_path / "plans.json"
    base = ["plan", str(mni_dataset["manifest"]), "-o", str(out), "--fingerprint", str(fp), "--workers", "1"]
    assert main([*base, "--configs", "3d_fullres", "--model", "nnunet", "--gpu-memory-gb", "24"]) == 0
    capsys.readouterr()
    plans = json.loads(out.read_text())
    assert fp.is_file() and set(plans["configurations"]) == {"3d_fullres"} and plans["gpu_memory_gb"] == 24.0
    assert main([*base, "--model", "nope"]) == 1
    err = capsys.readouterr().err
    assert "medseg: error: unknown model 'nope'; choose one of:" in err and "nnunet" in err
    assert main([*base, "--configs", "3d_fullres,4d"]) == 1
    assert "unknown configuration '4d'" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "missing.json"), "-o", str(out)]) == 1
    assert "medseg: error:" in capsys.readouterr().err


def test_stored_fingerprint_is_not_reused_for_other_files(tmp_path, capsys) -> None:
    """Two manifests with the same case ids but different files must not share a fingerprint."""
    import json

    import nibabel as nib
    import numpy as np

    from medseg.cli.main import main

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        image = rng.normal(size=(12, 14, 10)).astype(np.float32) + (0 if name == "a" else 100)
        label = np.zeros((12, 14, 10), np.uint8)
        label[3:8, 4:9, 2:7] = 1
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(tmp_path / f"{name}_seg.nii.gz"))
        manifest = {"channels": [{"name": "MR", "modality": "MR"}], "labels": {"background": 0, "x": 1},
                    "cases": [{"id": "c", "images": [f"{name}.nii.gz"], "label": f"{name}_seg.nii.gz"}]}
        (tmp_path / f"{name}.json").write_text(json.dumps(manifest))
    assert main(["plan", str(tmp_path / "a.json"), "-o", str(tmp_path / "plans_a.json")]) == 0
    assert main(["plan", str(tmp_path / "b.json"), "-o", str(tmp_path / "plans_b.json")]) == 0
    out = capsys.readouterr().out
    assert "using fingerprint" not in out
    means = [json.loads((tmp_path / f"plans_{n}.json").read_text())["foreground_intensity_properties_per_channel"]["0"]
             ["mean"] for n in ("a", "b")]
    assert means[1] - means[0] > 90


def test_non_finite_image_stops_the_fingerprint(tmp_path, capsys) -> None:
    import json

    import nibabel as nib
    import numpy as np

    from medseg.cli.main import main

    image = np.ones((10, 10, 10), np.float32)
    image[0, 0, :3] = np.nan
    label = np.zeros((10, 10, 10), np.uint8)
    label[2:6, 2:6, 2:6] = 1
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "nan.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(tmp_path / "seg.nii.gz"))
    manifest = {"channels": [{"name": "MR", "modality": "MR"}], "labels": {"background": 0, "x": 1},
                "cases": [{"id": "c", "images": ["nan.nii.gz"], "label": "seg.nii.gz"}]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    assert main(["fingerprint", str(tmp_path / "m.json"), "-o", str(tmp_path / "fp.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("nan.nii.gz: 3 non-finite voxels (3 NaN, 0 Inf)")
