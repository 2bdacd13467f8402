"""Hostile inputs and faults through ``medseg predict``: colliding case ids, anonymised DICOM, locks, killed runs,
bad options — each refused up front or isolated to its case, with one line naming the file."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hostile_helpers import assert_no_temporaries, assert_one_line_error, raw_nifti, snapshot, write_nifti


def _predict(cli, source: Path, out: Path, run: Path, *extra: Any):
    return cli("predict", "-i", source, "-o", out, "-m", run, "--device", "cpu", "--no-tta", "--progress", "plain",
               *extra)


@pytest.mark.parametrize(("first", "second"), [("a b.nii.gz", "a_b.nii.gz"), ("c.nii.gz", "c.nrrd")])
def test_two_inputs_for_one_case_id_are_refused_up_front(cli, tmp_path: Path, tiny_run: Path, mni_image,
                                                        first: str, second: str) -> None:
    data, affine = mni_image
    folder = tmp_path / "in"
    write_nifti(folder / first, data, affine)
    from medseg.io import save_image
    from medseg.io.meta import make_image

    save_image(make_image(data[None], affine), folder / second)
    line = assert_one_line_error(_predict(cli, folder, tmp_path / "out", tiny_run), 1, first, second)
    assert "same output" in line
    assert not (tmp_path / "out").exists()


def test_series_without_uids_in_two_folders_stay_two_cases(tmp_path: Path, mni_image) -> None:
    from dicom_series import write_series

    from medseg.inference import discover_cases

    data, affine = mni_image
    for name in ("patient_a", "patient_b"):
        files = write_series(data[:, :, :6], affine, tmp_path / "tree" / name)
        for file in files:
            ds = pydicom.dcmread(file)
            del ds.SeriesInstanceUID
            ds.save_as(file)
    cases, _ = discover_cases(tmp_path / "tree")
    assert sorted(c.case_id for c in cases) == ["no_series_uid_patient_a", "no_series_uid_patient_b"]
    assert all(len(c.paths) == 6 for c in cases)


def test_anonymised_series_gets_its_other_formats_and_a_clear_seg_failure(cli, tmp_path: Path, tiny_run: Path,
                                                                        mni_image) -> None:
    from dicom_series import write_series

    data, affine = mni_image
    files = write_series(data[:, :, :8], affine, tmp_path / "series")
    for file in files:
        ds = pydicom.dcmread(file)
        for keyword in ("SOPInstanceUID", "StudyInstanceUID"):
            setattr(ds, keyword, "")
        ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
        ds.save_as(file)
    only_seg = _predict(cli, tmp_path / "series", tmp_path / "seg_only", tiny_run, "--format", "dicom-seg")
    assert only_seg.code == 3
    assert "SOPInstanceUID" in only_seg.out and "anonymised" in only_seg.out
    assert not list((tmp_path / "seg_only").glob("*.dcm"))
    both = _predict(cli, tmp_path / "series", tmp_path / "both", tiny_run, "--format", "nifti,dicom-seg")
    assert both.code == 3, both.err
    assert "wrote nifti, not dicom-seg" in both.out
    (nifti,) = list((tmp_path / "both").glob("*.nii.gz"))
    assert nib.load(str(nifti)).shape[:2] == data.shape[:2]


def test_seg_for_files_that_are_not_dicom_is_refused_before_predicting(cli, tmp_path: Path, tiny_run: Path,
                                                                     mni_image) -> None:
    data, affine = mni_image
    source = write_nifti(tmp_path / "scan.nii.gz", data, affine)
    result = _predict(cli, source, tmp_path / "out", tiny_run, "--format", "dicom-seg")
    assert result.code == 3 and "needs a DICOM series" in result.out
    assert not list((tmp_path / "out").glob("*.dcm"))


@pytest.mark.parametrize("option", [("--format", "jpeg"), ("--device", "gpu0"), ("--device", "cuda:x"),
                                    ("--precision", "fp8"), ("--checkpoint", "newest"), ("--folds", "one")])
def test_bad_options_fail_before_loading_anything(cli, tmp_path: Path, tiny_run: Path, option) -> None:
    source = tmp_path / "never_read.nii.gz"
    source.write_bytes(b"")
    line = assert_one_line_error(_predict(cli, source, tmp_path / "out", tiny_run, *option), 1, option[1])
    assert option[0] in line or option[1] in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device", ["cuda:1", "mps"])
def test_devices_that_exist_elsewhere_are_accepted_and_checked(cli, tmp_path: Path, tiny_run: Path, mni_image,
                                                               device: str) -> None:
    import torch

    data, affine = mni_image
    source = write_nifti(tmp_path / "scan.nii.gz", data, affine)
    result = cli("predict", "-i", source, "-o", tmp_path / "out", "-m", tiny_run, "--device", device, "--no-tta")
    if device == "cuda:1" and torch.cuda.device_count() > 1:
        assert result.code == 0
        return
    line = assert_one_line_error(result, 1, device)
    assert "available" in line or "device(s)" in line


def test_a_second_batch_on_a_locked_folder_is_refused_naming_the_holder(cli, tmp_path: Path, tiny_run: Path,
                                                                       mni_image) -> None:
    import subprocess
    import sys

    data, affine = mni_image
    source = write_nifti(tmp_path / "scan.nii.gz", data, affine)
    out = tmp_path / "out"
    holder = subprocess.Popen(  # another batch holding the folder
        [sys.executable, "-c", "import sys, time\nfrom medseg.utils.files import FolderLock\n"
         "with FolderLock(sys.argv[1], 'medseg predict'):\n    print('held', flush=True)\n    time.sleep(120)",
         str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        line = assert_one_line_error(_predict(cli, source, out, tiny_run), 1, out, "in use", f"pid {holder.pid}")
        assert "--wait" in line
        assert not (out / "scan.nii.gz").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert _predict(cli, source, out, tiny_run).code == 0  # the holder is gone: the lock went with it


def test_rows_of_a_killed_run_are_closed_as_interrupted_and_redone(cli, tmp_path: Path, tiny_run: Path,
                                                                  mni_image) -> None:
    data, affine = mni_image
    folder = tmp_path / "in"
    for name in ("a", "b"):
        write_nifti(folder / f"{name}.nii.gz", data, affine)
    out = tmp_path / "out"
    assert _predict(cli, folder, out, tiny_run).code == 0
    db = sqlite3.connect(out / "ledger.sqlite")
    db.execute("UPDATE cases SET status = 'running' WHERE case_id = 'b'")  # as a run killed while predicting b
    db.execute("INSERT INTO runs (started_at, settings_json) VALUES (?, '{}')", (time.time(),))
    db.commit()
    db.close()
    (out / "b.nii.gz").unlink()
    result = _predict(cli, folder, out, tiny_run)
    assert result.code == 0, result.err
    assert "interrupted run were redone: b" in result.out and "1 predicted, 1 already done" in result.out
    rows = sqlite3.connect(out / "ledger.sqlite").execute("SELECT interrupted FROM runs ORDER BY run_id").fetchall()
    assert rows[-2] == (1,)


def test_a_bad_case_is_isolated_and_named(cli, tmp_path: Path, tiny_run: Path, mni_image) -> None:
    data, affine = mni_image
    folder = tmp_path / "in"
    write_nifti(folder / "good.nii.gz", data, affine)
    raw_nifti(folder / "singular.nii", data, srow=np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0.0]]),
              sform_code=1)
    write_nifti(folder / "fourd.nii.gz", np.zeros((8, 8, 8, 3), np.int16), affine)
    result = _predict(cli, folder, tmp_path / "out", tiny_run)
    assert result.code == 3
    assert "failed: singular:" in result.out and "singular.nii" in result.out and "singular" in result.out
    assert "failed: fourd:" in result.out and "fourd.nii.gz" in result.out
    assert (tmp_path / "out" / "good.nii.gz").is_file()
    assert_no_temporaries(tmp_path / "out")


def test_empty_input_folder_and_missing_model(cli, tmp_path: Path, tiny_run: Path, mni_image) -> None:
    (tmp_path / "empty").mkdir()
    assert_one_line_error(_predict(cli, tmp_path / "empty", tmp_path / "out", tiny_run), 1, tmp_path / "empty")
    data, affine = mni_image
    source = write_nifti(tmp_path / "scan.nii.gz", data, affine)
    assert_one_line_error(_predict(cli, source, tmp_path / "out", tmp_path / "no_run"), 1, "no_run")


def test_run_folder_with_a_truncated_checkpoint(cli, tmp_path: Path, tiny_run: Path, mni_image) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    checkpoint = run / "fold_0" / "checkpoint_final.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    data, affine = mni_image
    source = write_nifti(tmp_path / "scan.nii.gz", data, affine)
    assert_one_line_error(_predict(cli, source, tmp_path / "out", run), 1, checkpoint)


def test_run_folder_with_a_deeply_nested_plans_file(cli, tmp_path: Path, tiny_run: Path, mni_image) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    plans = run / "fold_0" / "plans.json"
    plans.write_text("[" * 100_000 + "]" * 100_000)
    data, affine = mni_image
    source = write_nifti(tmp_path / "scan.nii.gz", data, affine)
    assert_one_line_error(_predict(cli, source, tmp_path / "out", run), 1, plans, "deeper")


def test_rerun_never_rewrites_finished_outputs(cli, tmp_path: Path, tiny_run: Path, mni_image) -> None:
    data, affine = mni_image
    source = write_nifti(tmp_path / "in" / "scan.nii.gz", data, affine)
    out = tmp_path / "out"
    assert _predict(cli, source, out, tiny_run).code == 0
    before = snapshot(out)
    again = _predict(cli, source, out, tiny_run)
    assert again.code == 0 and "1 already done" in again.out
    after = snapshot(out)
    assert {k: v for k, v in after.items() if "ledger" not in k} == {k: v for k, v in before.items()
                                                                     if "ledger" not in k}

