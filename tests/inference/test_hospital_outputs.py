"""`medseg predict` on a real MR series: NIfTI, SEG and RTSTRUCT at once, named by patient and series, a preview and
statistics; the three outputs hold the same segmentation."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.io import load_image

pytest.importorskip("highdicom")
pytest.importorskip("contourpy")


def _cli(args: list[object]) -> tuple[int, str]:
    from medseg.cli.main import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = main([str(a) for a in args])
    return code, buffer.getvalue()


def test_three_formats_preview_and_statistics(trained_run: Path, shared_data: Path, tmp_path: Path) -> None:
    from medseg.inference.writers import read_dicom_seg_labels
    from medseg.io.rtstruct import rasterize_rtstruct

    series = shared_data / "prostatex_t2_series"
    out = tmp_path / "out"
    args = ["predict", "-i", series, "-o", out, "-m", trained_run, "--device", "cpu", "--no-tta", "--progress",
            "plain", "--format", "nifti,dicom-seg,dicom-rtstruct", "--preview", "--statistics"]
    code, text = _cli(args)
    assert code == 0, text
    (nifti,) = out.glob("*.nii.gz")
    stem = nifti.name[: -len(".nii.gz")]
    assert stem.startswith("ProstateX-0000_s4_t2_tse_tra_")  # patient, series number, description (+ a UID hash)
    seg_path, rt_path = out / f"{stem}_seg.dcm", out / f"{stem}_rtstruct.dcm"
    assert seg_path.is_file() and rt_path.is_file() and (out / "previews" / f"{stem}.png").is_file()

    source = load_image(series)
    labels = load_image(nifti).numpy()[0]
    assert labels.any()
    from_seg, names = read_dicom_seg_labels(seg_path, source.meta["sop_instance_uids"])
    assert names == {1: "wm"}
    np.testing.assert_array_equal(from_seg, labels)
    from_rt, _ = rasterize_rtstruct(rt_path, source)
    inter = np.logical_and(from_rt == 1, labels == 1).sum()
    dice = 2 * inter / ((from_rt == 1).sum() + (labels == 1).sum())
    assert dice >= 0.95
    assert pydicom.dcmread(rt_path, stop_before_pixels=True).SeriesDescription == "medseg RT t2_tse_tra"

    rows = list(csv.DictReader((out / "statistics.csv").read_text().splitlines()))
    (row,) = rows
    t2 = source.numpy()[0][labels == 1]
    assert row["case_id"] == stem and row["unit"] == "" and float(row["mean"]) == pytest.approx(t2.mean(), rel=1e-4)
    assert float(row["volume_ml"]) == pytest.approx(
        (labels == 1).sum() * abs(np.linalg.det(np.asarray(source.affine)[:3, :3])) / 1000, rel=1e-6)
    assert (out / "statistics.html").is_file() and (out / "statistics.json").is_file()

    code, text = _cli(args)  # resumable: nothing redone
    assert code == 0 and "0 predicted, 1 already done" in text
