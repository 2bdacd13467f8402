"""pipelines/predict_dicom.yaml: a DICOM tree → one DICOM SEG per series and a volume report, resumable."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from dicom_series import write_series
from testutils import oblique_affine

from medseg.cli.main import main
from medseg.io import load_image

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("highdicom")


def _run(args: list[str]) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = main(args)
    return code, buffer.getvalue()


def test_dicom_tree_to_segs_and_volume_report(trained_run: Path, mni_crop: Any, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data, affine = mni_crop
    tree = tmp_path / "archive"
    write_series(data, affine, tree / "patient_a" / "t1", modality="MR", description="t1_axial")
    oblique = oblique_affine((1.0, 1.0, 1.0), (8.0, -6.0, 12.0), tuple(affine[:3, 3]))
    write_series(data, oblique, tree / "patient_b" / "t1", modality="MR", description="t1_oblique")
    write_series(data, affine, tree / "patient_c" / "t1", modality="MR", description="t1_truncated")
    broken = sorted((tree / "patient_c" / "t1").iterdir())[3]
    broken.write_bytes(broken.read_bytes()[:-2000])  # a slice cut short in its pixel data: an interrupted export

    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    args = ["run", "pipelines/predict_dicom.yaml", "--set", f"input={tree}", "--set", f"model={trained_run}",
            "--set", f"out={out}", "--set", "device=cpu", "--set", "tta=--no-tta"]
    code, text = _run(args)
    assert code == 0, text
    assert "exit code 3, accepted" in text  # the broken series failed; the report still covers the others
    assert "1 failed" in text
    segs = sorted((out / "seg").glob("*.dcm"))
    assert len(segs) == 2
    descriptions = set()
    for path in segs:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.Modality == "SEG"
        descriptions.add(ds.SeriesDescription)
        seg = load_image(path)
        source = load_image(tree / ("patient_a" if "axial" in ds.SeriesDescription else "patient_b"))
        assert seg.meta["referenced_series_uids"] == [source.meta["series_instance_uid"]]
        np.testing.assert_allclose(seg.affine.numpy(), source.affine.numpy(), atol=1e-4)
    assert descriptions == {"medseg t1_axial", "medseg t1_oblique"}

    rows = list(csv.DictReader((out / "report" / "volumes.csv").read_text().splitlines()))
    assert {r["description"] for r in rows} == descriptions and {r["name"] for r in rows} == {"wm"}
    assert all(float(r["volume_ml"]) > 0 for r in rows)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    for row in rows:
        case = load_image(out / "seg" / f"{row['case_id']}.dcm")
        assert float(row["volume_ml"]) == pytest.approx(np.count_nonzero(case.numpy() == 1) * voxel_ml, rel=1e-4)
    summary = json.loads((out / "report" / "volumes.json").read_text())
    assert summary["statistics"]["wm"]["cases"] == 2 and summary["failed"] == {}
    assert (out / "report" / "volumes.html").exists()

    code, text = _run(args)
    assert code == 0 and "0 steps ran, 2 up to date" in text
