"""Folder evaluation and ``medseg evaluate``: pairing, empty-mask counts in means, grids, summary keys, real data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from eval_shapes import cube, write_nifti
from scipy import ndimage

from medseg.cli.main import main
from medseg.errors import EvaluationError
from medseg.evaluation import evaluate, parse_labels, summarize, write_metrics_csv, write_summary_json
from medseg.evaluation.metrics import empty_penalty_mm

SPLEEN = Path(__file__).resolve().parents[3] / "shared" / "data" / "ivadomed_msd_spleen"
NNUNET_KEYS = {"Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref"}


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_misses_stay_in_the_means(case_folders) -> None:
    pred, ref, _ = case_folders()
    result = evaluate(pred, ref, metrics=["dice", "hd95", "nsd"], nsd_tolerances_mm=[1.0])
    assert result.labels == {1: "1", 2: "2"}
    dice2 = result.values(2, "Dice")
    assert dice2[2] == 0.0 and result.cases[2].metrics[2]["status"] == "missed"
    summary = summarize(result)
    assert summary["mean"]["2"]["Dice"] == pytest.approx(dice2.mean())
    assert summary["mean"]["2"]["Dice"] < np.mean(dice2[:2])  # the miss lowers the mean, it is not dropped
    penalty = empty_penalty_mm((48, 40, 20), (1.0, 1.0, 2.0))
    assert result.cases[2].metrics[2]["HD95"] == pytest.approx(penalty)
    assert summary["mean"]["2"]["HD95"] == pytest.approx((result.values(2, "HD95")[:2].sum() + penalty) / 3)
    assert summary["counts"]["2"] == {"cases": 3, "ok": 2, "both_empty": 0, "missed": 1, "false_positive": 0}
    assert summary["foreground_mean"]["Dice"] == pytest.approx((summary["mean"]["1"]["Dice"] + dice2.mean()) / 2)
    json.dumps(summary, allow_nan=False)  # never NaN


def test_both_empty_and_false_positive_counts(tmp_path: Path) -> None:
    shape = (20, 20, 10)
    ref_a = np.zeros(shape, np.uint8)
    ref_a[cube(shape, (2, 2, 2), 5)] = 1
    pred_a = ref_a.copy()
    pred_a[cube(shape, (12, 12, 2), 3)] = 3  # class 3 present only in the prediction: false positive
    write_nifti(tmp_path / "ref" / "a.nii.gz", ref_a)
    write_nifti(tmp_path / "pred" / "a.nii.gz", pred_a)
    write_nifti(tmp_path / "ref" / "b.nii.gz", ref_a)
    write_nifti(tmp_path / "pred" / "b.nii.gz", ref_a)  # class 3 absent from both: both empty
    result = evaluate(tmp_path / "pred", tmp_path / "ref")
    assert list(result.labels) == [1, 3]  # every value found in any reference or prediction
    m3 = {c.case_id: c.metrics[3] for c in result.cases}
    assert m3["a"]["status"] == "false_positive" and m3["a"]["Dice"] == 0.0 and m3["a"]["NSD_1mm"] == 0.0
    assert m3["b"]["status"] == "both_empty" and m3["b"]["Dice"] == 1.0 and m3["b"]["HD"] == 0.0
    assert m3["b"]["TN"] == ref_a.size
    counts = summarize(result)["counts"]["3"]
    assert counts == {"cases": 2, "ok": 0, "both_empty": 1, "missed": 0, "false_positive": 1}
    assert summarize(result)["mean"]["3"]["Dice"] == 0.5  # both-empty counts as 1, as documented


def test_nnunet_compatible_summary(case_folders, tmp_path: Path) -> None:
    pred, ref, _ = case_folders()
    result = evaluate(pred, ref, labels=[1, 2], metrics=["dice", "iou"])
    path = write_summary_json(result, tmp_path / "out" / "summary.json")
    summary = json.loads(path.read_text())
    assert {"metric_per_case", "mean", "foreground_mean"} <= set(summary)
    first = summary["metric_per_case"][0]
    assert {"metrics", "prediction_file", "reference_file"} <= set(first)
    assert set(first["metrics"]) == {"1", "2"} and set(first["metrics"]["1"]) >= NNUNET_KEYS
    assert set(summary["mean"]["1"]) >= NNUNET_KEYS and set(summary["foreground_mean"]) >= NNUNET_KEYS
    # nnU-Net's formulas on the same files
    r = np.asarray(nib.load(first["reference_file"]).dataobj) == 1
    p = np.asarray(nib.load(first["prediction_file"]).dataobj) == 1
    tp, fp, fn = int((r & p).sum()), int((~r & p).sum()), int((r & ~p).sum())
    m = first["metrics"]["1"]
    assert (m["TP"], m["FP"], m["FN"], m["TN"]) == (tp, fp, fn, r.size - tp - fp - fn)
    assert m["Dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn)) and m["IoU"] == pytest.approx(tp / (tp + fp + fn))
    assert {"statistics", "foreground_statistics", "counts", "labels"} <= set(summary)
    assert {"mean", "median", "std", "p5", "p95", "min", "max", "n"} <= set(summary["statistics"]["1"]["Dice"])


def test_metrics_csv_one_row_per_case_and_class(case_folders, tmp_path: Path) -> None:
    pred, ref, _ = case_folders()
    result = evaluate(pred, ref, nsd_tolerances_mm=[1, 2.5])
    path = write_metrics_csv(result, tmp_path / "metrics.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 6 and rows[0]["case_id"] == "c1"
    assert {"Dice", "IoU", "HD", "HD95", "ASSD", "NSD_1mm", "NSD_2.5mm", "status", "label_name"} <= set(rows[0])
    assert [r["status"] for r in rows].count("missed") == 1


def test_pairing_errors_and_missing_options(case_folders, tmp_path: Path) -> None:
    pred, ref, _ = case_folders()
    (pred / "c2.nii.gz").unlink()
    shutil.copy(ref / "c1.nii.gz", pred / "extra.nii.gz")
    (pred / "notes.txt").write_text("not an image")
    with pytest.raises(EvaluationError, match=r"1 of 3 references have no prediction.*c2.*--missing"):
        evaluate(pred, ref)
    skipped = evaluate(pred, ref, missing="skip")
    assert [c.case_id for c in skipped.cases] == ["c1", "c3"]
    assert skipped.pairing.missing_predictions == ["c2"] and skipped.pairing.unpaired_predictions == ["extra"]
    as_empty = evaluate(pred, ref, missing="empty")
    c2 = as_empty.cases[1]
    assert c2.prediction is None and all(c2.metrics[v]["status"] == "missed" for v in (1, 2))
    shutil.copy(pred / "c1.nii.gz", pred / "c1.nii")
    with pytest.raises(EvaluationError, match="two files for case c1"):
        evaluate(pred, ref, missing="skip")
    with pytest.raises(EvaluationError, match="not found"):
        evaluate(tmp_path / "nope", ref)


def test_parse_labels() -> None:
    names = {0: "background", 1: "liver", 2: "tumour"}
    assert parse_labels("1,2") == {1: "1", 2: "2"}
    assert parse_labels("liver, tumour", names) == {1: "liver", 2: "tumour"}
    assert parse_labels("2", names) == {2: "tumour"} and parse_labels("lesion=2") == {2: "lesion"}
    assert parse_labels("") is None and parse_labels(None) is None
    with pytest.raises(EvaluationError, match="known names: background, liver, tumour"):
        parse_labels("spleen", names)
    with pytest.raises(EvaluationError, match="twice"):
        parse_labels("1,liver", names)


def test_grid_mismatch_and_resample_to_ref(tmp_path: Path) -> None:
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[cube(ref.shape, (5, 5, 5), 7)] = 1
    fine = np.zeros((40, 40, 40), np.uint8)  # the same cube on a 1 mm grid sharing the 2 mm grid's origin
    fine[cube(fine.shape, (10, 10, 10), 14)] = 1
    write_nifti(tmp_path / "ref" / "a.nii.gz", ref, (2.0, 2.0, 2.0))
    write_nifti(tmp_path / "pred" / "a.nii.gz", fine, (1.0, 1.0, 1.0))
    with pytest.raises(EvaluationError, match=r"grid differs.*shape.*spacing.*--resample-to-ref"):
        evaluate(tmp_path / "pred", tmp_path / "ref")
    result = evaluate(tmp_path / "pred", tmp_path / "ref", resample_to_ref=True)
    assert result.cases[0].resampled and result.cases[0].metrics[1]["Dice"] == 1.0
    assert result.cases[0].spacing == (2.0, 2.0, 2.0)


def test_unusable_label_maps(tmp_path: Path) -> None:
    write_nifti(tmp_path / "ref" / "a.nii.gz", np.full((4, 4, 4), 0.5, np.float32))
    write_nifti(tmp_path / "pred" / "a.nii.gz", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(EvaluationError, match="non-integer"):
        evaluate(tmp_path / "pred", tmp_path / "ref")


def test_parallel_workers_match_serial(case_folders) -> None:
    pred, ref, _ = case_folders()
    serial = evaluate(pred, ref, workers=1)
    parallel = evaluate(pred, ref, workers=2)
    assert [c.case_id for c in parallel.cases] == ["c1", "c2", "c3"]
    assert summarize(parallel)["mean"] == summarize(serial)["mean"]


# ---------------------------------------------------------------------------------------------------------------------
# The command line, in process


def test_cli_end_to_end(case_folders, tmp_path: Path, capsys) -> None:
    pred, ref, images = case_folders()
    out_dir = tmp_path / "report"
    code, out, err = run(
        capsys, "evaluate", "--pred", str(pred), "--ref", str(ref), "--images", str(images), "-o", str(out_dir),
        "--workers", "1", "--nsd-tolerance-mm", "1,2",
    )
    assert code == 0, err
    assert "Dice" in out and "HD95" in out and "NSD_2mm" in out and "missed" in out
    assert f"report: {out_dir / 'report.html'}" in out.replace("\n", "")
    assert {p.name for p in out_dir.iterdir()} == {"metrics.csv", "summary.json", "report.html"}
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["counts"]["2"]["missed"] == 1 and summary["settings"]["nsd_tolerances_mm"] == [1.0, 2.0]


def test_cli_errors_are_one_line(case_folders, tmp_path: Path, capsys) -> None:
    pred, ref, _ = case_folders()
    (pred / "c3.nii.gz").unlink()
    code, _, err = run(capsys, "evaluate", "--pred", str(pred), "--ref", str(ref), "-o", str(tmp_path / "o"))
    assert code == 1 and err.startswith("medseg: error: ") and err.count("\n") == 1 and "c3" in err
    code, _, err = run(capsys, "evaluate", "--pred", str(pred), "--ref", str(ref), "--metrics", "dice,hd99",
                       "--missing", "skip", "-o", str(tmp_path / "o"))
    assert code == 1 and "unknown metric hd99" in err
    code, _, err = run(capsys, "evaluate", "--pred", str(pred), "--ref", str(ref), "--missing", "empty",
                         "--no-report", "--workers", "1", "-o", str(tmp_path / "o"))
    assert code == 0 and "scored as empty predictions" in err and not (tmp_path / "o" / "report.html").exists()


def test_cli_without_matplotlib_still_writes_metrics(case_folders, tmp_path: Path, capsys, monkeypatch) -> None:
    import medseg.evaluation.report as report

    monkeypatch.setattr(report, "matplotlib_available", lambda: False)
    pred, ref, _ = case_folders()
    code, _, err = run(capsys, "evaluate", "--pred", str(pred), "--ref", str(ref), "--workers", "1")
    assert code == 0
    assert "pip install 'medseg[report]'" in err
    assert (pred / "evaluation" / "summary.json").exists() and not (pred / "evaluation" / "report.html").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Real data: the MSD spleen case (skipped when ../shared/data is absent)


@pytest.mark.skipif(not SPLEEN.is_dir(), reason=f"real test data not found at {SPLEEN}")
def test_spleen_manifest_end_to_end(tmp_path: Path, capsys) -> None:
    from medseg.data import Case, Channel, Manifest, save_manifest

    label = nib.load(str(SPLEEN / "sub-spleen2_ct_seg-manual.nii.gz"))
    ref = np.asarray(label.dataobj) > 0
    spacing = tuple(float(s) for s in label.header.get_zooms()[:3])
    pred = ndimage.binary_erosion(ref, iterations=2)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    nib.save(nib.Nifti1Image(pred.astype(np.uint8), label.affine, label.header), str(pred_dir / "spleen2.nii.gz"))
    image = SPLEEN / "sub-spleen2_ct.nii.gz"
    manifest = Manifest(
        name="spleen",
        channels=(Channel("CT", "CT"),),
        labels={"background": 0, "spleen": 1},
        cases=(Case("spleen2", (str(image),), str(SPLEEN / "sub-spleen2_ct_seg-manual.nii.gz")),),
        root=tmp_path,
    )
    manifest_path = save_manifest(manifest, tmp_path / "dataset.json")
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "evaluate", "--pred", str(pred_dir), "--ref", str(manifest_path), "-o", str(out_dir),
                         "--workers", "1", "--labels", "spleen")
    assert code == 0, err
    assert "spleen" in out
    summary = json.loads((out_dir / "summary.json").read_text())
    m = summary["metric_per_case"][0]["metrics"]["1"]
    assert summary["labels"] == {"1": "spleen"}
    assert m["Dice"] == pytest.approx(2 * pred.sum() / (pred.sum() + ref.sum()))
    # two erosions: in-plane borders move 2 × 0.795 mm, through-plane 2 × 5 mm (or vanish where thin)
    assert 2 * min(spacing) - 1e-6 <= m["HD95"] and m["ASSD"] < m["HD95"] <= m["HD"]
    html = (out_dir / "report.html").read_text()
    assert "data:image/png;base64," in html  # the CT image with contours, from the manifest
