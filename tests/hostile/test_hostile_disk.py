"""A full disk and a read-only folder under ``predict``, ``evaluate``, ``volumes``, ``convert`` and ``plan``: one line
naming the user's folder, the right exit code, and the previous results complete and unchanged.

Each case mounts a small tmpfs (root only: CI runs as root); elsewhere they skip, saying so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hostile_helpers import (
    assert_no_temporaries,
    assert_one_line_error,
    fill_disk,
    remount_read_only,
    small_tmpfs,
    snapshot,
    write_nifti,
)

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _label(shift: int = 0) -> np.ndarray:
    label = np.zeros((16, 16, 8), np.uint8)
    label[3 + shift:9 + shift, 4:10, 2:6] = 1
    return label


def _evaluate(cli, tmp_path: Path, out: Path):
    return cli("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "-o", out, "--workers", "1")


def test_evaluate_on_a_full_disk_keeps_the_previous_results(cli, tmp_path: Path) -> None:
    write_nifti(tmp_path / "ref" / "case.nii.gz", _label(), AFFINE)
    write_nifti(tmp_path / "pred" / "case.nii.gz", _label(), AFFINE)
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        out = disk / "report"
        assert _evaluate(cli, tmp_path, out).code == 0
        before = snapshot(out)
        summary = json.loads((out / "summary.json").read_text())
        write_nifti(tmp_path / "pred" / "case.nii.gz", _label(shift=2), AFFINE)  # new results would differ
        fill_disk(disk)
        line = assert_one_line_error(_evaluate(cli, tmp_path, out), 1, out, "no space left")
        assert "summary.json" in line or "metrics.csv" in line or "report.html" in line
        assert snapshot(out) == before
        assert json.loads((out / "summary.json").read_text()) == summary  # complete, parseable, the old results
        assert_no_temporaries(out)


def test_evaluate_into_a_new_folder_on_a_full_disk_leaves_no_empty_files(cli, tmp_path: Path) -> None:
    write_nifti(tmp_path / "ref" / "case.nii.gz", _label(), AFFINE)
    write_nifti(tmp_path / "pred" / "case.nii.gz", _label(), AFFINE)
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        fill_disk(disk)
        out = disk / "report"
        assert_one_line_error(_evaluate(cli, tmp_path, out), 1, "no space left")
        assert not any(p.is_file() for p in out.rglob("*")) if out.exists() else True


def test_evaluate_into_a_read_only_folder(cli, tmp_path: Path) -> None:
    write_nifti(tmp_path / "ref" / "case.nii.gz", _label(), AFFINE)
    write_nifti(tmp_path / "pred" / "case.nii.gz", _label(), AFFINE)
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        (disk / "report").mkdir()
        remount_read_only(disk)
        assert_one_line_error(_evaluate(cli, tmp_path, disk / "report"), 1, disk / "report", "read-only")


def test_volumes_on_a_full_disk_keeps_the_previous_report(cli, tmp_path: Path) -> None:
    write_nifti(tmp_path / "pred" / "case.nii.gz", _label(), AFFINE)
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        out = disk / "vol"
        assert cli("volumes", tmp_path / "pred", "-o", out).code == 0
        before = snapshot(out)
        write_nifti(tmp_path / "pred" / "other.nii.gz", _label(shift=1), AFFINE)
        fill_disk(disk)
        assert_one_line_error(cli("volumes", tmp_path / "pred", "-o", out), 1, out, "no space left")
        assert snapshot(out) == before


def test_convert_onto_a_full_disk_and_a_read_only_one(cli, tmp_path: Path) -> None:
    source = write_nifti(tmp_path / "in.nii.gz", np.random.default_rng(0).integers(0, 999, (64, 64, 32)).astype(
        np.int16), AFFINE)
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        target = disk / "out.nii.gz"
        target.write_bytes(b"previous")
        fill_disk(disk)
        assert_one_line_error(cli("convert", source, target), 1, target, "no space left")
        assert target.read_bytes() == b"previous"
        assert_no_temporaries(disk)
    with small_tmpfs(tmp_path / "ro", "1m") as disk:
        remount_read_only(disk)
        assert_one_line_error(cli("convert", source, disk / "out.nrrd"), 1, disk, "read-only")


def test_plan_onto_a_full_disk_keeps_the_previous_plans(cli, tmp_path: Path, mni_dataset) -> None:
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        out = disk / "plans.json"
        out.write_text('{"previous": true}')
        fill_disk(disk)
        assert_one_line_error(cli("plan", mni_dataset["manifest"], "-o", out), 1, "no space left")
        assert json.loads(out.read_text()) == {"previous": True}


def test_predict_on_a_full_disk_stops_with_exit_3_and_keeps_finished_cases(cli, tmp_path: Path, tiny_run: Path,
                                                                            mni_image) -> None:
    data, affine = mni_image
    folder = tmp_path / "in"
    for name in ("a", "b", "c"):
        write_nifti(folder / f"{name}.nii.gz", data, affine)
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        out = disk / "pred"
        first = cli("predict", "-i", folder / "a.nii.gz", "-o", out, "-m", tiny_run, "--device", "cpu", "--no-tta")
        assert first.code == 0, first.err
        before = (out / "a.nii.gz").read_bytes()
        fill_disk(disk)
        result = cli("predict", "-i", folder, "-o", out, "-m", tiny_run, "--device", "cpu", "--no-tta",
                     "--progress", "plain")
        assert result.code == 3, (result.out, result.err)
        assert "no space left on the disk" in result.out and "stopped:" in result.out
        assert "OperationalError" not in result.out + result.err
        assert (out / "a.nii.gz").read_bytes() == before
        assert_no_temporaries(out)
