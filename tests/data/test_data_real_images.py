"""Checks on real images: nilearn's packaged MNI152 templates and the real CT/MR scans in ../shared/data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.cli.main import main
from medseg.data import check_dataset, import_msd

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="real test data (../shared/data) not present")


def _write_manifest(path: Path, channels: list[dict], labels: dict, cases: list[dict]) -> Path:
    data = {"format_version": 1, "name": path.stem, "channels": channels, "labels": labels, "cases": cases}
    path.write_text(json.dumps(data, indent=2))
    return path


@pytest.fixture(scope="module")
def mni(tmp_path_factory: pytest.TempPathFactory) -> Path:
    datasets = pytest.importorskip("nilearn.datasets")
    folder = tmp_path_factory.mktemp("mni")
    template = datasets.load_mni152_template(resolution=2)
    gm = datasets.load_mni152_gm_template(resolution=2)
    wm = datasets.load_mni152_wm_template(resolution=2)
    nib.save(template, str(folder / "t1.nii.gz"))
    nib.save(gm, str(folder / "gm.nii.gz"))
    tissue = np.zeros(template.shape, dtype=np.uint8)
    tissue[np.asarray(gm.dataobj) > 0.5 * np.asarray(gm.dataobj).max()] = 1
    tissue[np.asarray(wm.dataobj) > 0.5 * np.asarray(wm.dataobj).max()] = 2
    nib.save(nib.Nifti1Image(tissue, template.affine), str(folder / "tissue.nii.gz"))
    stacked = np.stack([np.asarray(template.dataobj), np.asarray(gm.dataobj), np.asarray(wm.dataobj)], axis=-1)
    nib.save(nib.Nifti1Image(stacked.astype(np.float32), template.affine), str(folder / "stack.nii.gz"))
    coarse = nib.Nifti1Image(tissue[::2, ::2, ::2].copy(), template.affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
    nib.save(coarse, str(folder / "tissue_4mm.nii.gz"))
    return folder


def test_mni_templates(mni: Path) -> None:
    tissue_labels = {"background": 0, "grey_matter": 1, "white_matter": 2}
    t1 = [{"name": "T1", "modality": "MR"}]
    three = [{"name": "T1", "modality": "MR"}, {"name": "GM", "modality": "PROB"}, {"name": "WM", "modality": "PROB"}]
    good = _write_manifest(
        mni / "good.json", t1, tissue_labels, [{"id": "mni", "images": ["t1.nii.gz"], "label": "tissue.nii.gz"}]
    )
    assert check_dataset(good).ok
    stacked = _write_manifest(
        mni / "stacked.json",
        three,
        tissue_labels,
        [{"id": "mni", "images": ["stack.nii.gz"], "label": "tissue.nii.gz"}],
    )
    assert check_dataset(stacked).ok
    separate = _write_manifest(
        mni / "separate.json",
        three[:2],
        {"background": 0, "grey_matter": 1},
        [
            {"id": "4d", "images": ["stack.nii.gz", "gm.nii.gz"], "label": "tissue.nii.gz"},
            {"id": "coarse", "images": ["t1.nii.gz", "gm.nii.gz"], "label": "tissue_4mm.nii.gz"},
        ],
    )
    report = check_dataset(separate)
    messages = [f"{p.case_id}: {Path(p.path).name}: {p.message}" for p in report.problems]
    assert messages[0] == "4d: stack.nii.gz: holds 3 channels (a 4D image); expected one 3D volume for 'T1'"
    assert messages[1].startswith("4d: tissue.nii.gz: label values outside the declared set {0, 1}: 2 (")
    assert messages[2].startswith("coarse: tissue_4mm.nii.gz: label grid differs from the image")
    assert "shape (99, 117, 95) vs (50, 59, 48)" in messages[2]
    assert "spacing (2, 2, 2) vs (4, 4, 4) mm" in messages[2]
    assert messages[3].startswith("coarse: tissue_4mm.nii.gz: label values outside the declared set")
    assert report.summary == "checked 2 cases: 4 problems in 2 cases"


@needs_shared
def test_shared_msd_spleen_import_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    task = tmp_path / "Task09_Spleen"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    shutil.copy(SHARED / "ivadomed_msd_spleen" / "sub-spleen2_ct.nii.gz", task / "imagesTr" / "spleen_2.nii.gz")
    shutil.copy(
        SHARED / "ivadomed_msd_spleen" / "sub-spleen2_ct_seg-manual.nii.gz", task / "labelsTr" / "spleen_2.nii.gz"
    )
    dataset = {
        "name": "Spleen",
        "description": "Spleen Segmentation",
        "reference": "Memorial Sloan Kettering Cancer Center",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0 06/08/2018",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"},
        "numTraining": 1,
        "numTest": 0,
        "training": [{"image": "./imagesTr/spleen_2.nii.gz", "label": "./labelsTr/spleen_2.nii.gz"}],
        "test": [],
    }
    (task / "dataset.json").write_text(json.dumps(dataset, indent=4))
    assert check_dataset(task / "dataset.json").ok  # the MSD file itself is a manifest
    result = import_msd(task, tmp_path / "spleen.json")
    assert result.warnings == ()
    assert main(["dataset", "check", str(result.path)]) == 0
    assert capsys.readouterr().out.strip() == "checked 1 case: no problems"


@needs_shared
def test_shared_spine_mr_problems_in_one_run(tmp_path: Path) -> None:
    sct = SHARED / "sct_spine"
    manifest = _write_manifest(
        tmp_path / "spine.json",
        [{"name": "T2", "modality": "MR"}],
        {"background": 0, "cord": 1},
        [
            {"id": "t2", "images": [str(sct / "t2_t2.nii.gz")], "label": str(sct / "t2_t2_seg-manual.nii.gz")},
            {"id": "t1", "images": [str(sct / "t1_t1w.nii.gz")], "label": str(sct / "t1_t1w_seg-manual.nii.gz")},
            {"id": "t2s", "images": [str(sct / "t2s_t2s.nii.gz")], "label": str(sct / "t2s_t2s_seg.nii.gz")},
            {
                "id": "levels",
                "images": [str(sct / "t2_t2.nii.gz")],
                "label": str(sct / "t2_t2_seg-manual_labeled.nii.gz"),
            },
            {"id": "mixed", "images": [str(sct / "t2s_t2s.nii.gz")], "label": str(sct / "t2_t2_seg-manual.nii.gz")},
        ],
    )
    report = check_dataset(manifest)
    assert report.cases_with_problems == ["levels", "mixed"]
    levels = [p.message for p in report.problems if p.case_id == "levels"]
    assert len(levels) == 1
    assert levels[0].startswith("label values outside the declared set {0, 1}: 2 (")
    assert ", 5 (" in levels[0]
    mixed = [p.message for p in report.problems if p.case_id == "mixed"]
    assert len(mixed) == 1
    assert mixed[0].startswith("label grid differs from the image")
    assert "shape (49, 54, 9) vs (60, 55, 52)" in mixed[0]


@needs_shared
def test_shared_dicom_ct_with_nrrd_labels(tmp_path: Path) -> None:
    ct = SHARED / "dcmqi_ct3slice"
    cases = [
        {"id": "liver_spine", "images": [str(ct / "ct-3slice")], "label": str(ct / "liver_spine_seg.nrrd")},
    ]
    channels = [{"name": "CT", "modality": "ct"}]
    ok = _write_manifest(tmp_path / "ok.json", channels, {"background": 0, "liver": 1, "spine": 2}, cases)
    assert check_dataset(ok).ok
    liver_only = _write_manifest(tmp_path / "liver.json", channels, {"background": 0, "liver": 1}, cases)
    report = check_dataset(liver_only)
    assert [p.message.split(":")[0] for p in report.problems] == ["label values outside the declared set {0, 1}"]
    mr = _write_manifest(
        tmp_path / "mr.json",
        [{"name": "T2", "modality": "MRI"}],
        {"background": 0},
        [{"id": "prostatex_0000", "images": [str(SHARED / "prostatex_t2_series")]}],
    )
    assert check_dataset(mr).ok  # an oblique DICOM MR series, unlabelled
