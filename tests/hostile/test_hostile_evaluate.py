"""Hostile inputs through ``medseg evaluate``, ``medseg volumes``, ``medseg dataset`` and ``medseg plan``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hostile_helpers import assert_one_line_error, raw_nifti, snapshot, write_nifti

AFFINE = np.diag([1.2, 0.8, 2.0, 1.0])
AFFINE[:3, 3] = (10, -5, 3)


def _label(shape=(12, 10, 8)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[3:8, 2:7, 2:6] = 1
    label[1:3, 1:3, 1:3] = 2
    return label


def _permuted(label: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stored with axes (z, x, y) and x reversed, as a converter may write them."""
    stored = np.flip(np.transpose(label, (2, 0, 1)), 1)
    to_original = np.zeros((4, 4))
    to_original[0, 1], to_original[0, 3] = -1, label.shape[0] - 1
    to_original[1, 2] = to_original[2, 0] = to_original[3, 3] = 1
    return np.ascontiguousarray(stored), affine @ to_original


def test_prediction_stored_in_another_axis_order_is_reoriented(cli, tmp_path: Path) -> None:
    label = _label()
    write_nifti(tmp_path / "ref" / "case.nii.gz", label, AFFINE)
    stored, affine = _permuted(label, AFFINE)
    write_nifti(tmp_path / "pred" / "case.nii.gz", stored, affine)
    result = cli("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "-o", tmp_path / "out",
                 "--no-report", "--workers", "1")
    assert result.code == 0, result.err
    assert "reoriented losslessly: case" in result.err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["metric_per_case"][0]["reoriented"] is True
    assert summary["mean"]["1"]["Dice"] == pytest.approx(1.0) and summary["mean"]["2"]["Dice"] == pytest.approx(1.0)


def test_real_grid_mismatch_names_reference_then_prediction(cli, tmp_path: Path) -> None:
    write_nifti(tmp_path / "ref" / "case.nii.gz", _label(), AFFINE)
    write_nifti(tmp_path / "pred" / "case.nii.gz", _label((12, 10, 9)), AFFINE)
    line = assert_one_line_error(cli("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref",
                                     "--no-report", "--workers", "1"), 1, "pred/case.nii.gz",
                                 "reference vs prediction", "(12, 10, 8) vs (12, 10, 9)")
    assert "--resample-to-ref" in line


def test_huge_label_values_neither_hang_nor_allocate_by_value(cli, tmp_path: Path) -> None:
    label = _label().astype(np.int32)
    label[label == 2] = 2**30
    write_nifti(tmp_path / "ref" / "case.nii.gz", label, AFFINE)
    write_nifti(tmp_path / "pred" / "case.nii.gz", label, AFFINE)
    result = cli("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "-o", tmp_path / "out",
                 "--no-report", "--workers", "1", "--metrics", "dice")
    assert result.code == 0, result.err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["labels"]) == {"1", str(2**30)}
    volumes = cli("volumes", tmp_path / "pred", "-o", tmp_path / "vol")
    assert volumes.code == 0, volumes.err
    rows = (tmp_path / "vol" / "volumes.csv").read_text().splitlines()
    assert any(f",{2**30}," in row for row in rows)


def test_two_files_for_one_case_in_the_predictions(cli, tmp_path: Path) -> None:
    write_nifti(tmp_path / "ref" / "a_b.nii.gz", _label(), AFFINE)
    write_nifti(tmp_path / "pred" / "a b.nii.gz", _label(), AFFINE)
    write_nifti(tmp_path / "pred" / "a_b.nii.gz", _label(), AFFINE)
    assert_one_line_error(cli("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--no-report"), 1,
                          "a b.nii.gz", "a_b.nii.gz")


def test_missing_predictions_are_listed(cli, tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write_nifti(tmp_path / "ref" / f"{name}.nii.gz", _label(), AFFINE)
    write_nifti(tmp_path / "pred" / "a.nii.gz", _label(), AFFINE)
    line = assert_one_line_error(cli("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref",
                                     "--no-report"), 1, "b, c")
    assert "--missing" in line


def test_label_names_file_nested_too_deeply(cli, tmp_path: Path) -> None:
    write_nifti(tmp_path / "pred" / "a.nii.gz", _label(), AFFINE)
    labels = tmp_path / "pred" / "labels.json"
    labels.write_text("[" * 100_000 + "]" * 100_000)
    assert_one_line_error(cli("volumes", tmp_path / "pred", "-o", tmp_path / "vol"), 1, labels, "deeper")


def test_volumes_with_an_unreadable_file_goes_on(cli, tmp_path: Path) -> None:
    write_nifti(tmp_path / "pred" / "a.nii.gz", _label(), AFFINE)
    (tmp_path / "pred" / "b.nii.gz").write_bytes(b"garbage")
    raw_nifti(tmp_path / "pred" / "c.nii", _label(), srow=np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0.0]]),
              sform_code=1)
    result = cli("volumes", tmp_path / "pred", "-o", tmp_path / "vol")
    assert result.code == 1
    assert "b.nii.gz" in result.out + result.err and "c.nii" in result.out + result.err
    assert (tmp_path / "vol" / "volumes.csv").read_text().count("\na,") >= 1


def test_dicom_seg_predictions_are_paired_by_their_series(cli, tmp_path: Path, mni_image) -> None:
    from dicom_series import write_series

    from medseg.inference.writers import write_dicom_seg
    from medseg.io import load_image

    data, affine = mni_image
    write_series(data[:, :, :6], affine, tmp_path / "study" / "t1")
    source = load_image(tmp_path / "study" / "t1")
    label = (np.asarray(source)[0] > np.median(np.asarray(source))).astype(np.uint8)
    write_nifti(tmp_path / "ref" / "subject.nii.gz", label, np.asarray(source.meta["affine"]))
    manifest = {"format_version": 1, "name": "t", "channels": [{"name": "T1", "modality": "MR"}],
                "labels": {"background": 0, "tissue": 1},
                "cases": [{"id": "subject", "images": [str(tmp_path / "study" / "t1")],
                           "label": str(tmp_path / "ref" / "subject.nii.gz")}]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    write_dicom_seg(label, source.meta["source_files"], tmp_path / "pred" / "1.2.3.dcm", {1: "tissue"})
    result = cli("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "m.json", "-o", tmp_path / "out",
                 "--no-report", "--workers", "1")
    assert result.code == 0, result.err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["metric_per_case"][0]["case_id"] == "subject"
    assert summary["mean"]["1"]["Dice"] == pytest.approx(1.0)


def test_manifest_path_leaving_the_dataset_folder_is_refused(cli, tmp_path: Path) -> None:
    task = tmp_path / "Task01_Evil"
    (task / "imagesTr").mkdir(parents=True)
    write_nifti(task / "imagesTr" / "a.nii.gz", _label(), AFFINE)
    (task / "dataset.json").write_text(json.dumps({
        "name": "evil", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "x"},
        "training": [{"image": "../../../../etc/passwd", "label": "./imagesTr/a.nii.gz"}], "test": []}))
    assert_one_line_error(cli("dataset", "import", task, "-o", tmp_path / "m.json"), 1, "dataset.json",
                          "../../../../etc/passwd", "leaves the dataset folder")
    assert not (tmp_path / "m.json").exists()


def test_absolute_manifest_paths_stay_allowed(tmp_path: Path) -> None:
    from medseg.data import load_manifest

    image = write_nifti(tmp_path / "elsewhere" / "a.nii.gz", _label(), AFFINE)
    (tmp_path / "ds").mkdir()
    manifest = {"format_version": 1, "name": "t", "channels": [{"name": "CT", "modality": "CT"}],
                "labels": {"background": 0, "x": 1}, "cases": [{"id": "a", "images": [str(image)]}]}
    (tmp_path / "ds" / "m.json").write_text(json.dumps(manifest))
    assert load_manifest(tmp_path / "ds" / "m.json").image_paths("a") == [image]


@pytest.mark.parametrize(("content", "words"), [
    ("[" * 100_000 + "]" * 100_000, ["deeper"]),
    ('{"name": "x", "name": "y"}', ["appears twice"]),
    ("", ["empty"]),
])
def test_malformed_manifest_json(cli, tmp_path: Path, content: str, words: list[str]) -> None:
    path = tmp_path / "m.json"
    path.write_text(content)
    assert_one_line_error(cli("dataset", "check", path), 1, path, *words)


def test_case_ids_that_would_write_one_output(cli, tmp_path: Path) -> None:
    image = write_nifti(tmp_path / "a.nii.gz", _label(), AFFINE)
    manifest = {"format_version": 1, "name": "t", "channels": [{"name": "CT", "modality": "CT"}],
                "labels": {"background": 0, "x": 1},
                "cases": [{"id": "a b", "images": [str(image)]}, {"id": "a_b", "images": [str(image)]}]}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(manifest))
    assert_one_line_error(cli("dataset", "check", path), 1, path, "'a b'", "'a_b'", "same output")


def test_dataset_check_reorients_a_permuted_label_with_a_note(cli, tmp_path: Path) -> None:
    label = _label()
    image = write_nifti(tmp_path / "img.nii.gz", label.astype(np.int16) * 100, AFFINE)
    stored, affine = _permuted(label, AFFINE)
    seg = write_nifti(tmp_path / "seg.nii.gz", stored, affine)
    manifest = {"format_version": 1, "name": "t", "channels": [{"name": "CT", "modality": "CT"}],
                "labels": {"background": 0, "a": 1, "b": 2},
                "cases": [{"id": "c", "images": [str(image)], "label": str(seg)}]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    result = cli("dataset", "check", tmp_path / "m.json")
    assert result.code == 0, result.out
    assert "note: c:" in result.out and "reoriented losslessly" in result.out


def test_plan_of_a_dataset_whose_image_has_a_singular_affine(cli, tmp_path: Path) -> None:
    label = _label()
    image = raw_nifti(tmp_path / "img.nii", label.astype(np.int16),
                      srow=np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0.0]]), sform_code=1)
    seg = write_nifti(tmp_path / "seg.nii.gz", label, AFFINE)
    manifest = {"format_version": 1, "name": "t", "channels": [{"name": "CT", "modality": "CT"}],
                "labels": {"background": 0, "a": 1, "b": 2},
                "cases": [{"id": "c", "images": [str(image)], "label": str(seg)}]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    assert_one_line_error(cli("plan", tmp_path / "m.json", "-o", tmp_path / "plans.json"), 1, image, "singular")
    assert not (tmp_path / "plans.json").exists()


def test_outputs_of_a_good_evaluation_survive_a_failing_one(cli, tmp_path: Path) -> None:
    write_nifti(tmp_path / "ref" / "case.nii.gz", _label(), AFFINE)
    write_nifti(tmp_path / "pred" / "case.nii.gz", _label(), AFFINE)
    out = tmp_path / "out"
    assert cli("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "-o", out, "--no-report").code == 0
    before = snapshot(out)
    write_nifti(tmp_path / "pred" / "case.nii.gz", _label((12, 10, 9)), AFFINE)
    assert cli("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "-o", out, "--no-report").code == 1
    assert snapshot(out) == before
