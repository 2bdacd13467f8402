"""The generalised energy distance of samples against several annotations (Kohl et al. 2018, Eq. 5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from eval_shapes import cube, write_nifti

from medseg.cli.main import main
from medseg.errors import EvaluationError
from medseg.evaluation import evaluate, summarize
from medseg.evaluation.metric_table import DEFAULT_METRICS, metric_help, metric_spec
from medseg.evaluation.metrics import (
    METRIC_NAMES,
    compute_metrics,
    energy_distance_terms,
    generalised_energy_distance,
    iou_distance,
)

SHAPE = (20, 20, 6)


def _box(start: int, size: int) -> np.ndarray:
    return cube(SHAPE, (start, start, 1), (size, size, 4))


def test_iou_distance_and_its_empty_rule() -> None:
    a, b = _box(2, 4), _box(4, 4)  # 64 voxels each, overlap 2×2×4 = 16: IoU 16 / 112
    assert iou_distance(a, b) == pytest.approx(1 - 16 / 112)
    empty = np.zeros(SHAPE, bool)
    assert iou_distance(empty, empty) == 0.0 and iou_distance(a, empty) == 1.0


def test_energy_distance_by_hand() -> None:
    a, b = _box(2, 4), _box(4, 4)
    d = 1 - 16 / 112
    assert generalised_energy_distance([a], [b]) == pytest.approx(2 * d)  # one sample, one annotation
    assert generalised_energy_distance([a, b], [b, a]) == pytest.approx(0.0)  # the annotations' distribution
    # annotations {a, b}, samples {a, a}: 2·mean(0, 0, d, d) - 0 - mean(0, d, d, 0) = d - d/2
    assert generalised_energy_distance([a, a], [a, b]) == pytest.approx(d / 2)
    d_ys, d_ss, d_yy = energy_distance_terms([a, a, b], [a, b])
    assert d_ys.shape == (2, 3) and d_ss.shape == (3, 3) and d_yy.shape == (2, 2)
    assert np.allclose(d_ss, d_ss.T) and np.allclose(np.diag(d_ss), 0)
    assert d_ys[1].tolist() == pytest.approx([d, d, 0.0])
    empty = np.zeros(SHAPE, bool)
    assert generalised_energy_distance([empty], [empty, empty]) == 0.0
    with pytest.raises(ValueError, match="samples and annotations"):
        generalised_energy_distance([], [a])


def test_ged_in_the_metric_table_but_not_in_the_pair_metrics() -> None:
    spec = metric_spec("ged")
    assert spec.key == "GED" and spec.samples and not spec.higher_is_better and not spec.default
    assert "ged" not in METRIC_NAMES and "ged" not in DEFAULT_METRICS and "ged (" in metric_help()
    with pytest.raises(ValueError, match="generalised_energy_distance"):
        compute_metrics(_box(2, 4), _box(4, 4), (1, 1, 1), ["dice", "ged"])


def _cases(root: Path, n_samples: int = 3) -> dict[str, np.ndarray]:
    """Two cases: reference (rater 1), a second rater's annotation, a label map and per-sample label maps."""
    masks = {}
    for case, shift in (("c1", 0), ("c2", 2)):
        rater1 = _box(4 + shift, 6).astype(np.uint8)
        rater2 = _box(5 + shift, 6).astype(np.uint8)
        draws = [_box(4 + shift + (i % 2), 6).astype(np.uint8) for i in range(n_samples)]
        write_nifti(root / "ref" / f"{case}.nii.gz", rater1)
        write_nifti(root / "rater2" / f"{case}.nii.gz", rater2)
        write_nifti(root / "pred" / f"{case}.nii.gz", draws[0])
        write_nifti(root / "pred" / "samples" / f"{case}.nii.gz", np.stack(draws, -1))  # 4D: one volume per draw
        masks[case] = (np.stack(draws), np.stack([rater1, rater2]))
    return masks


def test_evaluate_scores_samples_against_the_reference_and_further_annotations(tmp_path: Path) -> None:
    masks = _cases(tmp_path)
    result = evaluate(tmp_path / "pred", tmp_path / "ref", metrics=["dice", "ged"],
                      annotations=[tmp_path / "rater2"])
    assert result.metric_keys == ["Dice", "GED"]
    for case in result.cases:
        draws, raters = masks[case.case_id]
        expected = generalised_energy_distance(list(draws == 1), list(raters == 1))
        assert case.metrics[1]["GED"] == pytest.approx(expected) and expected > 0
        assert (case.n_samples, case.n_annotations) == (3, 2)
    summary = summarize(result)
    assert summary["metric_per_case"][0]["n_samples"] == 3
    assert "GED" in summary["definitions"] and summary["metrics"]["GED"]["higher_is_better"] is False
    json.dumps(summary, allow_nan=False)


def test_ged_needs_samples_and_annotations_need_ged(tmp_path: Path) -> None:
    _cases(tmp_path)
    with pytest.raises(EvaluationError, match="further annotations are scored by the sample metric only"):
        evaluate(tmp_path / "pred", tmp_path / "ref", metrics=["dice"], annotations=[tmp_path / "rater2"])
    (tmp_path / "pred" / "samples" / "c2.nii.gz").unlink()
    with pytest.raises(EvaluationError, match=r"no samples for 1 of 2 cases \(c2\).*--save-samples"):
        evaluate(tmp_path / "pred", tmp_path / "ref", metrics=["ged"])


def test_cli_evaluate_with_ged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _cases(tmp_path)
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--annotations",
                 str(tmp_path / "rater2"), "--metrics", "dice,ged", "-o", str(tmp_path / "report"), "--no-report"])
    out = capsys.readouterr().out
    assert code == 0 and "GED" in out
    header = (tmp_path / "report" / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("case_id,label,label_name,status,Dice,GED,")
