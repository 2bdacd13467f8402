"""Volume report: exact millilitres from the affine, absent labels as 0 mL, names, failures, CLI outputs."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from dicom_series import write_series
from testutils import oblique_affine

from medseg.cli.main import main
from medseg.evaluation.volumes import list_segmentations, measure_volumes, pair_images, write_volume_report
from medseg.io import load_image, save_image


def _cli(args: list[Any]) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = main([str(a) for a in args])
    return code, buffer.getvalue()


def _label_file(path: Path, counts: dict[int, int], affine: np.ndarray, shape=(20, 20, 10)) -> Path:
    array = np.zeros(int(np.prod(shape)), dtype=np.uint8)
    start = 0
    for value, n in counts.items():
        array[start:start + n] = value
        start += n
    nib.save(nib.Nifti1Image(array.reshape(shape), affine), path)
    return path


def test_volumes_are_voxel_counts_times_the_voxel_volume(tmp_path: Path) -> None:
    oblique = oblique_affine((0.5, 0.8, 2.5), (10.0, 20.0, -5.0), (1.0, 2.0, 3.0))  # 1 mm³ per voxel
    _label_file(tmp_path / "a.nii.gz", {1: 1000, 2: 30}, np.diag([2.0, 2.0, 2.0, 1.0]))  # 8 mm³ per voxel
    _label_file(tmp_path / "b.nii.gz", {1: 500}, oblique)
    (tmp_path / "labels.json").write_text(json.dumps({"0": "background", "1": "liver", "2": "tumour"}))
    (tmp_path / "ledger.sqlite").write_bytes(b"not an image")  # ignored: not a segmentation file
    report = measure_volumes(tmp_path)
    assert report.labels == {1: "liver", 2: "tumour"}
    a, b = report.cases
    assert a.case_id == "a" and a.volume_ml(1) == pytest.approx(8.0) and a.volume_ml(2) == pytest.approx(0.24)
    assert b.volume_ml(1) == pytest.approx(0.5) and b.volume_ml(2) == 0.0  # absent: 0 mL, still reported
    stats = report.statistics()
    assert stats["tumour"]["present"] == 1 and stats["tumour"]["cases"] == 2
    assert stats["liver"]["mean"] == pytest.approx(4.25) and stats["liver"]["max"] == pytest.approx(8.0)


def test_unreadable_files_are_reported_and_the_rest_measured(tmp_path: Path) -> None:
    _label_file(tmp_path / "good.nii.gz", {1: 10}, np.eye(4))
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b truncated")
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 0.5, np.float32), np.eye(4)), tmp_path / "probs.nii.gz")
    report = measure_volumes(tmp_path)
    assert [c.case_id for c in report.cases] == ["good"]
    failed = dict(report.failed)
    assert set(failed) == {"broken", "probs"}
    assert "broken.nii.gz" in failed["broken"] and "non-integer" in failed["probs"]


def test_cli_writes_csv_json_html_and_names_from_a_manifest(tmp_path: Path) -> None:
    seg = tmp_path / "seg"
    seg.mkdir()
    _label_file(seg / "case_1.nii.gz", {1: 125, 3: 1000}, np.diag([2.0, 2.0, 2.0, 1.0]))
    manifest = tmp_path / "dataset.json"
    manifest.write_text(json.dumps({
        "name": "t", "modality": {"0": "CT"}, "labels": {"background": 0, "kidney": 1, "cyst": 2, "tumour": 3},
        "training": [{"image": "ct.nii.gz", "label": "seg/case_1.nii.gz"}],
    }))
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["volumes", str(seg), "-o", str(tmp_path / "out"), "--manifest", str(manifest)])
    text = buffer.getvalue()
    assert code == 0, text
    assert "kidney" in text and "8.00" in text and "report: " in text
    rows = list(csv.DictReader((tmp_path / "out" / "volumes.csv").read_text().splitlines()))
    assert [(r["name"], r["voxels"], r["volume_ml"]) for r in rows] == [
        ("kidney", "125", "1.0000"), ("cyst", "0", "0.0000"), ("tumour", "1000", "8.0000")]
    data = json.loads((tmp_path / "out" / "volumes.json").read_text())
    assert data["cases"]["case_1"]["volume_ml"] == pytest.approx({"kidney": 1.0, "cyst": 0.0, "tumour": 8.0})
    html = (tmp_path / "out" / "volumes.html").read_text()
    assert "<table" in html and "tumour" in html and "http" not in html.replace("http-equiv", "")


def test_cli_exit_code_when_a_file_cannot_be_measured(tmp_path: Path) -> None:
    _label_file(tmp_path / "good.nii.gz", {1: 10}, np.eye(4))
    (tmp_path / "bad.nrrd").write_text("NRRD0004\nnonsense\n")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = main(["volumes", str(tmp_path)])
    assert code == 1
    assert "bad:" in buffer.getvalue() and (tmp_path / "volumes.csv").exists()


def test_dicom_seg_volumes_equal_the_label_map_volumes(mni_crop, tmp_path: Path) -> None:
    pytest.importorskip("highdicom")
    from medseg.inference.writers import write_dicom_seg

    data, affine = mni_crop
    write_series(data, affine, tmp_path / "series", modality="MR")
    source = load_image(tmp_path / "series")
    labels = (np.asarray(source[0]) > np.percentile(np.asarray(source[0]), 60)).astype(np.uint8)
    labels[:5] *= 2
    out = tmp_path / "seg"
    write_dicom_seg(labels, source.meta["source_files"], out / "mr.dcm", {1: "wm", 2: "edge"})
    report = measure_volumes(out)
    voxel_ml = abs(np.linalg.det(np.asarray(source.affine)[:3, :3])) / 1000
    (case,) = report.cases
    assert report.labels == {1: "wm", 2: "edge"}
    for value in (1, 2):
        assert case.volume_ml(value) == pytest.approx(np.count_nonzero(labels == value) * voxel_ml)
    paths = write_volume_report(report, tmp_path / "report")
    assert paths["csv"].exists() and paths["html"].exists()


# Intensity under each mask ----------------------------------------------------------------------------------------


def _spleen(shared_data: Path) -> tuple[Any, np.ndarray]:
    from medseg.io import load_image

    folder = shared_data / "ivadomed_msd_spleen"
    image = load_image(folder / "sub-spleen2_ct.nii.gz")
    return image, (load_image(folder / "sub-spleen2_ct_seg-manual.nii.gz").numpy()[0] > 0).astype(np.uint8)


def test_intensity_statistics_of_real_ct_in_hounsfield_units(shared_data: Path, tmp_path: Path) -> None:
    """The spleen under its manual mask, from a DICOM SEG paired with its CT series in a DICOM tree."""
    pytest.importorskip("highdicom")
    from medseg.inference.writers import write_dicom_seg
    from medseg.io import load_image

    image, mask = _spleen(shared_data)
    hu = image.numpy()[0]
    write_series(hu, np.asarray(image.meta["affine"]), tmp_path / "tree" / "pat" / "ct", modality="CT",
                 intercept=-1024.0, description="abdomen")
    write_series(hu[::-1], np.asarray(image.meta["affine"]), tmp_path / "tree" / "pat" / "other", modality="CT",
                 intercept=-1024.0, description="other")  # a second series the SEG does not reference
    source = load_image(tmp_path / "tree" / "pat" / "ct")
    write_dicom_seg(mask, source.meta["source_files"], tmp_path / "segs" / "spleen_seg.dcm", {1: "spleen"})
    code, text = _cli(["volumes", tmp_path / "segs", "--image", tmp_path / "tree", "-o", tmp_path / "report"])
    assert code == 0, text
    rows = list(csv.DictReader((tmp_path / "report" / "volumes.csv").read_text().splitlines()))
    (row,) = rows
    inside = hu[mask > 0]
    assert row["name"] == "spleen" and row["unit"] == "HU" and row["channel"] == "image"
    assert float(row["mean"]) == pytest.approx(inside.mean(), abs=1e-3)
    assert float(row["median"]) == pytest.approx(np.median(inside), abs=1e-3)
    assert float(row["p5"]) == pytest.approx(np.percentile(inside, 5), abs=1e-3)
    assert float(row["p95"]) == pytest.approx(np.percentile(inside, 95), abs=1e-3)
    assert 20 < float(row["mean"]) < 200  # soft tissue, in HU
    summary = json.loads((tmp_path / "report" / "volumes.json").read_text())
    assert summary["cases"]["spleen_seg"]["intensity_unit"] == "HU"
    html = (tmp_path / "report" / "volumes.html").read_text()
    assert "Intensity under each mask" in html and "image under each label" in text


def test_intensity_statistics_paired_by_case_id_and_manifest(mni_crop, tmp_path: Path) -> None:
    data, affine = mni_crop
    labels = (data > np.percentile(data, 70)).astype(np.uint8)
    labels[:10] *= 2
    save_image(labels[None], tmp_path / "segs" / "case.nii.gz", affine=affine)
    save_image(data[None], tmp_path / "images" / "case_0000.nii.gz", affine=affine)
    report = measure_volumes(tmp_path / "segs", {1: "bright", 2: "edge"},
                             images=pair_images(list_segmentations(tmp_path / "segs"), tmp_path / "images")[0])
    (case,) = report.cases
    assert case.unit == "" and set(case.intensity) == {1, 2}
    assert case.intensity[2]["image"]["mean"] == pytest.approx(float(data[labels == 2].mean()), rel=1e-5)
    manifest = {"name": "m", "channels": [{"name": "T1", "modality": "MR"}], "labels": {"background": 0, "bright": 1},
                "cases": [{"id": "case", "images": ["images/case_0000.nii.gz"]}]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    images, missing = pair_images({"case": tmp_path / "segs" / "case.nii.gz", "other": tmp_path / "x.nii.gz"},
                                  tmp_path / "m.json")
    assert missing == ["other"] and images["case"].channels == ("T1",)
