"""Instance metrics against values computed by hand on small maps; the evaluation files, CLI and report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.cli.main import main
from medseg.evaluation.instance import (
    aggregated_jaccard_index,
    evaluate_instances,
    match_objects,
    overlaps,
    panoptic_quality,
)


def hand_case() -> tuple[np.ndarray, np.ndarray]:
    """Reference objects 1 (4 px), 2 (4 px), 3 (2 px); predicted 1 overlaps reference 1 by 3 of its 4 px (IoU 3/5),
    predicted 2 overlaps reference 2 by 2 px (IoU 2/6), predicted 3 (2 px) touches nothing."""
    ref = np.zeros((6, 8), dtype=np.int32)
    pred = np.zeros((6, 8), dtype=np.int32)
    ref[0, 0:4] = 1
    pred[0, 1:4] = 1
    pred[1, 0] = 1
    ref[2, 0:4] = 2
    pred[2, 2:6] = 2
    ref[4, 0:2] = 3
    pred[5, 6:8] = 3
    return ref, pred


def test_panoptic_quality_and_f1_by_hand() -> None:
    ref, pred = hand_case()
    r, p, pairs = overlaps(ref, pred)
    assert r == {1: 4, 2: 4, 3: 2} and p == {1: 4, 2: 4, 3: 2} and pairs == {(1, 1): 3, (2, 2): 2}
    classes = {1: 1, 2: 1, 3: 1}
    m = match_objects(r, p, pairs, classes, classes, None)
    assert m.pairs == [(1, 1, pytest.approx(0.6))] and (m.tp, m.fp, m.fn) == (1, 2, 2)
    pq, sq, rq = panoptic_quality(m.tp, m.fp, m.fn, m.iou_sum)
    assert sq == pytest.approx(0.6) and rq == pytest.approx(1 / 3) and pq == pytest.approx(0.2)
    # the prediction's class differs: no match within a class, a match when classes are ignored
    m1 = match_objects(r, p, pairs, classes, {1: 2, 2: 1, 3: 1}, 1)
    assert (m1.tp, m1.fp, m1.fn) == (0, 2, 3)
    assert panoptic_quality(0, 0, 0, 0.0) == (1.0, 1.0, 1.0)
    assert panoptic_quality(0, 0, 3, 0.0) == (0.0, 0.0, 0.0)


def test_aggregated_jaccard_index_by_hand() -> None:
    ref, pred = hand_case()
    # C = 3 + 2 (ref 1 with pred 1, ref 2 with pred 2), U = 5 + 6 + 2 (ref 3 alone) + 2 (pred 3, chosen by none)
    assert aggregated_jaccard_index(*overlaps(ref, pred)) == pytest.approx(5 / 15)
    assert aggregated_jaccard_index(*overlaps(ref * 0, pred * 0)) == 1.0
    # one prediction covering two references: both choose it; C = 4 + 4, U = 8 + 8
    merged = ((ref == 1) | (ref == 2)).astype(np.int32)
    two = np.where(ref == 3, 0, ref)
    assert aggregated_jaccard_index(*overlaps(two, merged)) == pytest.approx(8 / 16)


def _png(array: np.ndarray, path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint16)), str(path))


def write_case(root: Path) -> Path:
    """An instance manifest of the hand case (pictures), two classes, and a prediction folder with its table."""
    ref, pred = hand_case()
    (root / "labels").mkdir(parents=True)
    (root / "pred").mkdir()
    _png(ref * 40, root / "image.png")
    _png(ref, root / "labels" / "a.png")
    _png(pred, root / "pred" / "a.png")
    manifest = {"format_version": 1, "task": "instance", "channels": [{"name": "grey", "modality": "photo"}],
                "labels": {"background": 0, "cell": 1, "debris": 2},
                "cases": [{"id": "a", "images": ["image.png"], "label": "labels/a.png",
                           "classes": {"1": "cell", "2": "cell", "3": "debris"}}]}
    (root / "dataset.json").write_text(json.dumps(manifest))
    table = {"case": "a", "task": "instance", "instances": [{"id": 1, "class": 1}, {"id": 2, "class": 1},
                                                            {"id": 3, "class": 2}]}
    (root / "pred" / "a_instances.json").write_text(json.dumps(table))
    return root


def test_evaluate_instances_rows_pooled_and_volumes(tmp_path: Path) -> None:
    root = write_case(tmp_path)
    result = evaluate_instances(root / "pred", root / "dataset.json")
    case = result.cases[0]
    assert case.rows[1]["TP"] == 1 and case.rows[1]["FP"] == 1 and case.rows[1]["FN"] == 1  # cells
    assert case.rows[2]["TP"] == 0 and case.rows[2]["FP"] == 1 and case.rows[2]["FN"] == 1  # debris
    assert case.rows[0]["PQ"] == pytest.approx(0.2) and case.rows[0]["AJI"] == pytest.approx(1 / 3)
    pooled = result.pooled(1)
    assert pooled["PQ"] == pytest.approx(0.6 * 1 / 2)
    volumes = {(o["side"], o["id"]): o["volume_mm3"] for o in case.objects}
    assert volumes[("reference", 1)] == 4.0 and volumes[("reference", 3)] == 2.0  # 1 mm pixels, one 1 mm slice
    partners = {(o["side"], o["id"]): o["matched_id"] for o in case.objects}
    assert partners[("reference", 1)] == 1 and partners[("reference", 2)] == ""


def test_evaluate_cli_on_an_instance_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_case(tmp_path)
    code = main(["evaluate", "--pred", str(root / "pred"), "--ref", str(root / "dataset.json"), "-o",
                 str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PQ" in out and "cell" in out and "debris" in out
    rows = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open()))
    assert [r["class_name"] for r in rows] == ["cell", "debris", "all"]
    assert float(rows[2]["PQ"]) == pytest.approx(0.2) and float(rows[2]["AJI"]) == pytest.approx(1 / 3)
    objects = list(csv.DictReader((tmp_path / "out" / "instances.csv").open()))
    assert len(objects) == 6 and {o["side"] for o in objects} == {"reference", "prediction"}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["pooled"]["0"]["TP"] == 1 and summary["object_volumes_mm3"]["reference"]["objects"] == 3
    pytest.importorskip("matplotlib")
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Object volumes" in html and "data:image/png;base64" in html and "<table class=sortable id=objects>" in html
