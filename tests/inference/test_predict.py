"""`medseg predict` end to end: exact output geometry (NIfTI, NRRD, DICOM), DICOM SEG, ledger, resume, Dice."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medseg.cli.main import main
from medseg.errors import OutputError
from medseg.inference import Predictor, discover_cases, load_folds, run_batch
from medseg.inference.writers import read_dicom_seg_labels
from medseg.io import load_image, save_image
from medseg.preprocessing.resampling import separate_z_axis
from medseg.utils.files import LOCK_NAME, atomic_write


def _cli(args: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue() + err.getvalue()


def _predict_args(inp: Path, out: Path, run: Path, *extra: str) -> list[str]:
    return ["predict", "-i", str(inp), "-o", str(out), "-m", str(run), "--device", "cpu", "--progress", "plain",
            *extra]


def _oblique_anisotropic(mni_crop: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The MNI crop with every 4th row (4 mm along axis 1) and a rotated affine."""
    data, affine = mni_crop
    angle = np.deg2rad(12)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    new = np.eye(4)
    new[:3, :3] = rot @ np.diag([1.0, 4.0, 1.0])
    new[:3, 3] = affine[:3, 3]
    return data[:, ::4, :], new


def _ledger(out: Path) -> dict[str, tuple[str, int, str | None]]:
    with sqlite3.connect(out / "ledger.sqlite") as db:
        return {r[0]: (r[1], r[2], r[3]) for r in db.execute("SELECT case_id, status, attempts, error FROM cases")}


def _no_temporaries(folder: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != LOCK_NAME]
    assert not leftovers, leftovers


# Geometry ---------------------------------------------------------------------------------------------------------


def test_outputs_keep_the_exact_input_grid(untrained_run: Path, mni_crop: Any, tmp_path: Path) -> None:
    """NIfTI (oblique, anisotropic: separate-z export) and NRRD inputs: same shape and affine, transposed plans."""
    from dicom_series import write_series

    data, affine = _oblique_anisotropic(mni_crop)
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(data, affine), inputs / "aniso.nii.gz")
    save_image(data[None], inputs / "iso.nrrd", affine=mni_crop[1])
    predictor = Predictor(load_folds([untrained_run]), device="cpu", tta=False)
    prepared = predictor.prepare("aniso", load_image(inputs / "aniso.nii.gz"))
    assert separate_z_axis(prepared.properties["target_spacing"],
                           prepared.properties["spacing_after_transpose"]) is not None
    code, text = _cli(_predict_args(inputs, tmp_path / "out", untrained_run, "--no-tta"))
    assert code == 0, text
    for name in ("aniso.nii.gz", "iso.nrrd"):
        source = load_image(inputs / name)
        target = tmp_path / "out" / ("aniso.nii.gz" if name.endswith(".nii.gz") else "iso.nii.gz")
        result = load_image(target)
        assert result.shape == source.shape
        np.testing.assert_allclose(result.meta["affine"], source.meta["affine"], atol=1e-5)
    code, text = _cli(_predict_args(inputs / "iso.nrrd", tmp_path / "out_nrrd", untrained_run, "--format", "nrrd"))
    assert code == 0, text
    result, source = load_image(tmp_path / "out_nrrd" / "iso.nrrd"), load_image(inputs / "iso.nrrd")
    assert result.shape == source.shape
    np.testing.assert_allclose(result.meta["affine"], source.meta["affine"], atol=1e-5)

    write_series(mni_crop[0], mni_crop[1], tmp_path / "dicom" / "patient" / "series")
    code, text = _cli(_predict_args(tmp_path / "dicom", tmp_path / "out_dcm", untrained_run))
    assert code == 0, text
    source = load_image(tmp_path / "dicom" / "patient" / "series")
    (written,) = list((tmp_path / "out_dcm").glob("*.nii.gz"))
    # named by patient, series number and description (with a short hash of the UID), not by the bare UID
    assert written.name.startswith("TEST001_s1_test_series_") and source.meta["series_instance_uid"] not in written.name
    result = load_image(written)
    assert result.shape == source.shape
    np.testing.assert_allclose(result.meta["affine"], source.meta["affine"], atol=1e-4)


# DICOM SEG --------------------------------------------------------------------------------------------------------


def test_dicom_seg_references_the_series_and_aligns_with_its_slices(trained_run: Path, mni_crop: Any,
                                                                    mni_data: dict[str, Any], tmp_path: Path) -> None:
    import highdicom as hd
    from dicom_series import write_series

    series_dir = tmp_path / "dicom"
    write_series(mni_crop[0], mni_crop[1], series_dir, modality="MR")
    code, text = _cli(_predict_args(series_dir, tmp_path / "seg", trained_run, "--format", "dicom-seg",
                                    "--manifest", str(mni_data["manifest"])))
    assert code == 0, text
    code, text = _cli(_predict_args(series_dir, tmp_path / "nifti", trained_run))
    assert code == 0, text
    source = load_image(series_dir)
    (seg_path,) = list((tmp_path / "seg").glob("*.dcm"))
    ds = pydicom.dcmread(seg_path)
    assert ds.Modality == "SEG"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.meta["series_instance_uid"]
    assert ds.StudyInstanceUID == source.meta["study_instance_uid"]
    seg = hd.seg.segread(str(seg_path))
    assert [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()] == ["wm"]
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced == set(source.meta["sop_instance_uids"])
    labels, names = read_dicom_seg_labels(seg_path, source.meta["sop_instance_uids"])
    assert names == {1: "wm"}
    expected = load_image(next((tmp_path / "nifti").glob("*.nii.gz")))[0].numpy()
    assert labels.shape == expected.shape == tuple(source.shape[1:])
    assert set(np.unique(expected)) == {0, 1}
    np.testing.assert_array_equal(labels, expected)  # frame k ↔ source slice k, rows/columns as the source
    _no_temporaries(tmp_path / "seg")


# Batches: failures, ledger, resume, atomic writes -----------------------------------------------------------------


def _batch_folder(root: Path, mni_crop: Any) -> Path:
    data, affine = mni_crop
    root.mkdir(parents=True)
    nib.save(nib.Nifti1Image(data, affine), root / "a_good.nii.gz")
    nib.save(nib.Nifti1Image(data[::-1].copy(), affine), root / "b_good.nii.gz")
    (root / "c_corrupt.nii.gz").write_bytes(b"\x1f\x8b this is not a gzip stream" * 10)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), affine), root / "d_fourd.nii.gz")
    return root


def test_batch_records_failures_and_resumes(untrained_run: Path, mni_crop: Any, tmp_path: Path) -> None:
    inputs = _batch_folder(tmp_path / "in", mni_crop)
    out = tmp_path / "out"
    code, text = _cli(_predict_args(inputs, out, untrained_run))
    assert code == 3, text  # the batch finished, some cases failed
    assert "2 predicted, 0 already done, 2 failed" in text
    assert "failed: c_corrupt:" in text and "failed: d_fourd:" in text
    ledger = _ledger(out)
    assert ledger["a_good"][:2] == ("done", 1) and ledger["b_good"][:2] == ("done", 1)
    assert ledger["c_corrupt"][0] == "failed" and ledger["d_fourd"][0] == "failed"
    assert "channel" in (ledger["d_fourd"][2] or "")  # wrong dimensionality, said in words
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    assert set(written) == {"a_good.nii.gz", "b_good.nii.gz"}
    assert json.loads((out / "labels.json").read_text()) == {"0": "background", "1": "wm"}
    _no_temporaries(out)

    code, text = _cli(_predict_args(inputs, out, untrained_run))
    assert code == 3
    assert "0 predicted, 2 already done, 2 failed" in text
    ledger = _ledger(out)
    assert ledger["a_good"][1] == 1 and ledger["c_corrupt"][1] == 2  # done skipped, failed redone
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")} == written
    with sqlite3.connect(out / "ledger.sqlite") as db:
        runs = db.execute("SELECT done, skipped, failed, interrupted FROM runs ORDER BY run_id").fetchall()
    assert runs == [(2, 0, 2, 0), (0, 2, 2, 0)]


def test_interrupted_batch_completes_on_rerun(untrained_run: Path, mni_crop: Any, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for k in range(3):
        nib.save(nib.Nifti1Image(np.roll(mni_crop[0], k, 0), mni_crop[1]), inputs / f"case{k}.nii.gz")
    out = tmp_path / "out"
    cases, _ = discover_cases(inputs)
    predictor = Predictor(load_folds([untrained_run]), device="cpu", tta=False)

    def interrupt(case_id: str, status: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(predictor, cases, out, settings={"x": 1}, progress="plain", stream=io.StringIO(),
                  after_case=interrupt)
    assert _ledger(out) == {"case0": ("done", 1, None)}
    summary = run_batch(predictor, cases, out, settings={"x": 1}, progress="plain", stream=io.StringIO())
    assert summary.skipped == ["case0"] and summary.done == ["case1", "case2"] and not summary.failed
    assert {p.name for p in out.glob("*.nii.gz")} == {"case0.nii.gz", "case1.nii.gz", "case2.nii.gz"}
    # changed settings redo every case
    summary = run_batch(predictor, cases, out, settings={"x": 2}, progress="plain", stream=io.StringIO())
    assert summary.done == ["case0", "case1", "case2"]
    with sqlite3.connect(out / "ledger.sqlite") as db:
        assert db.execute("SELECT interrupted FROM runs ORDER BY run_id").fetchall() == [(1,), (0,), (0,)]


def test_writes_are_atomic(tmp_path: Path) -> None:
    target = tmp_path / "out.npz"

    def half_then_fail(handle: Any) -> None:
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OutputError, match=r"out\.npz: cannot write: disk full") as excinfo:
        atomic_write(target, half_then_fail)
    assert ".tmp" not in str(excinfo.value)  # the error names the final file, never the temporary one
    assert not target.exists()
    _no_temporaries(tmp_path)
    atomic_write(target, lambda h: h.write(b"complete"))
    assert target.read_bytes() == b"complete"
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, lambda h: (h.write(b"x"), (_ for _ in ()).throw(KeyboardInterrupt())))
    assert target.read_bytes() == b"complete"
    _no_temporaries(tmp_path)


# A trained model ----------------------------------------------------------------------------------------------------


def test_trained_model_segments_its_training_case(trained_run: Path, mni_data: dict[str, Any],
                                                  tmp_path: Path) -> None:
    image = Path(mni_data["root"]) / "mni_t1.nii.gz"
    code, text = _cli(_predict_args(image, tmp_path / "out", trained_run, "--save-probabilities", "--lcc"))
    assert code == 0, text
    predicted = np.asarray(nib.load(tmp_path / "out" / "mni_t1.nii.gz").dataobj)
    reference = mni_data["label"]
    dice = 2 * np.sum((predicted == 1) & (reference == 1)) / (np.sum(predicted == 1) + np.sum(reference == 1))
    print(f"training-case Dice through `medseg predict`: {dice:.4f}")
    assert dice >= 0.8
    with np.load(tmp_path / "out" / "mni_t1_probabilities.npz") as npz:
        probs = npz["probabilities"].astype(np.float32)
        assert list(npz["labels"]) == ["background", "wm"]
    assert probs.shape == (2, *reference.shape)
    np.testing.assert_allclose(probs.sum(0), 1, atol=2e-3)


def test_fold_ensemble_with_rich_progress(transposed_plans: dict[str, Any], mni_crop: Any, tmp_path: Path,
                                          run_folder_writer: Any) -> None:
    write_run_folder = run_folder_writer
    run = tmp_path / "run"
    write_run_folder(run, transposed_plans, fold=0, seed=0)
    write_run_folder(run, transposed_plans, fold=1, seed=1)
    write_run_folder(run, transposed_plans, fold=2, seed=2)
    folds = load_folds([run], folds=[0, 1])
    assert [f.fold for f in folds] == [0, 1] and folds[0].mirror_axes == [0, 1, 2]
    predictor = Predictor(folds, device="cpu", tta=False)
    assert predictor.window.output_kind == "probabilities"
    image = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(mni_crop[0], mni_crop[1]), image)
    cases, _ = discover_cases(image)
    stream = io.StringIO()
    summary = run_batch(predictor, cases, tmp_path / "out", progress="rich", stream=stream, save_probabilities=True)
    assert summary.done == ["case"] and "case" in stream.getvalue()
    with np.load(tmp_path / "out" / "case_probabilities.npz") as npz:
        np.testing.assert_allclose(npz["probabilities"].astype(np.float32).sum(0), 1, atol=2e-3)
    code, text = _cli(_predict_args(image, tmp_path / "out2", run, "--folds", "0,7"))
    assert code == 1 and "fold(s) [7]" in text
