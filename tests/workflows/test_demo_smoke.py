"""The demo pipeline end to end in a reduced smoke mode: every artifact exists and the Dice is sane."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_pipeline_smoke(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the pipeline's relative paths (pipelines/, data_manifests/) are the repository's
    work = tmp_path / "demo"
    args = [
        "run", "pipelines/demo.yaml", "--set", f"work={work}", "--set", "n_train=3", "--set", "n_test=1",
        "--set", "spacing=6", "--set", "preset=demo_smoke", "--set", f"manifests={tmp_path}",
        "--set", "device=cpu", "--set", "tta=--no-tta",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    for path in [
        work / "data" / "dataset.json", work / "data" / "test.json", tmp_path / "mni152_tissue.json",
        work / "plans.json", work / "model" / "fold_0" / "checkpoint_final.pt",
        work / "model" / "fold_0" / "progress.png",
        work / "predictions" / "sub-ts000.nii.gz", work / "predictions" / "ledger.sqlite",
        work / "report" / "report.html", work / "report" / "metrics.csv", work / "report" / "summary.json",
    ]:
        assert path.exists(), path
    summary = json.loads((work / "report" / "summary.json").read_text())
    dice = summary["foreground_mean"]["Dice"]
    assert 0.2 < dice <= 1.0  # 100 tiny steps: far from trained, far from empty
    assert "report: " in out and "grey_matter" in out
    assert main(args) == 0  # a second run skips every finished step
    assert "0 steps ran, 5 up to date" in capsys.readouterr().out
