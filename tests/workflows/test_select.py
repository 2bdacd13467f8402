"""``medseg select``: nnU-Net's best-configuration choice over runs and pair ensembles, and its postprocessing rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from medseg.inference.predictor import apply_postprocessing, keep_largest_foreground
from medseg.workflows.select import choose_postprocessing


def _write_mni_dataset(root: Path) -> dict:
    """The training tests' small MNI dataset (tests/training/conftest.py), loaded by path."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "training" / "conftest.py"
    spec = importlib.util.spec_from_file_location("medseg_training_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_mni_dataset(root)


def test_postprocessing_rule_keeps_only_what_improves() -> None:
    """All-foreground LCC only when the mean Dice rises and no class falls; per class where that class rises."""
    reference = np.zeros((20, 20, 20), np.int16)
    reference[2:8, 2:8, 2:8] = 1
    reference[12:18, 12:18, 12:18] = 2
    prediction = reference.copy()
    prediction[0, 19, 19] = 1  # a stray voxel of class 1 far from everything
    chosen, record = choose_postprocessing({"a": prediction}, {"a": reference}, [1, 2])
    # all foreground as one would drop class 2's whole region (the largest component wins): refused
    assert chosen["largest_component_all_foreground"] is False
    assert record["all_foreground"]["mean_dice"]["2"] == 0.0 or record["all_foreground"]["mean_dice"]["2"] is None
    assert chosen["largest_component_classes"] == [1]
    assert record["after"]["mean_dice"]["1"] == 1.0
    assert np.array_equal(apply_postprocessing(prediction, chosen), reference)
    # one class: the stray voxel goes with the all-foreground step
    single = (reference == 1).astype(np.int16)
    noisy = single.copy()
    noisy[19, 0, 19] = 1
    chosen, _ = choose_postprocessing({"a": noisy}, {"a": single}, [1])
    assert chosen == {"largest_component_all_foreground": True, "largest_component_classes": []}
    assert np.array_equal(keep_largest_foreground(noisy), single)
    # nothing to gain: nothing chosen
    chosen, _ = choose_postprocessing({"a": single}, {"a": single}, [1])
    assert chosen == {"largest_component_all_foreground": False, "largest_component_classes": []}


def _run(root: Path, dataset: dict, seed: int, features: list[int]) -> Path:
    """A run folder with two cross-validation folds (untrained weights: selection logic, not accuracy)."""
    from medseg.models import create_model_from_plans
    from medseg.preprocessing import configuration_of

    plans = json.loads(dataset["plans"].read_text())
    cfg = configuration_of(plans, "3d_fullres")
    splits = [{"train": ["mni"], "val": ["mni_copy"]}, {"train": ["mni_copy"], "val": ["mni"]}]
    config = {"configuration": "3d_fullres", "deep_supervision": True, "patch_size": [32, 32, 32],
              "model_kwargs": {"features_per_stage": features}, "augmentation": {"mirror": True}}
    for fold in (0, 1):
        folder = root / f"fold_{fold}"
        folder.mkdir(parents=True)
        torch.manual_seed(seed + fold)
        model = create_model_from_plans(cfg.model.as_dict(), None, {"features_per_stage": features}, True)
        (folder / "plans.json").write_text(json.dumps(plans))
        (folder / "splits.json").write_text(json.dumps(splits))
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        torch.save({"model": model.state_dict(), "configuration": "3d_fullres", "fold": fold}, folder /
                   "checkpoint_final.pt")
    return root


def test_select_scores_runs_and_pairs_and_predict_takes_the_plan(tmp_path: Path) -> None:
    dataset = _write_mni_dataset(tmp_path / "data")
    runs = [_run(tmp_path / "run_a", dataset, 1, [4, 8, 16, 32]), _run(tmp_path / "run_b", dataset, 7, [6, 8, 16, 32])]
    out = tmp_path / "plan"
    cmd = [sys.executable, "-m", "medseg", "select", *map(str, runs), "-m", str(dataset["manifest"]), "-o", str(out),
           "--no-tta", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads((out / "inference_plan.json").read_text())
    assert set(plan["candidates"]) == {"run_a", "run_b", "run_a+run_b"}
    assert plan["cases"] == ["mni", "mni_copy"]  # every case validated once, by the fold that did not train on it
    scores = {k: v["foreground_mean_dice"] for k, v in plan["candidates"].items()}
    assert scores[plan["selected"]] == max(scores.values())
    assert f"selected {plan['selected']}" in done.stdout
    # the cached CV probabilities are reused by a second selection
    assert sorted(p.name for p in (out / "cv" / "run_a").glob("*.npz")) == ["mni.npz", "mni_copy.npz"]
    pred = tmp_path / "pred"
    done = subprocess.run([sys.executable, "-m", "medseg", "predict", "-i", str(dataset["root"] / "mni_t1.nii.gz"),
                           "-o", str(pred), "-m", str(out), "--device", "cpu", "--no-tta", "--progress", "plain"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(pred.glob("*.nii.gz"))) == 1
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run([sys.executable, "-m", "medseg", "predict", "-i", str(dataset["root"] / "mni_t1.nii.gz"),
                        "-o", str(tmp_path / "p2"), "-m", str(out), "-m", str(runs[0])], check=True,
                       capture_output=True)
