"""The cascade: 3d_lowres, then 3d_cascade_fullres on its cross-validation predictions; predict runs both."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medseg.config import load_config
from medseg.errors import TrainingError
from medseg.training import TrainConfig, train
from medseg.training.cascade import NEXT_STAGE_FOLDER, augment_previous, one_hot_foreground

TINY = ["patch_size=[16, 16, 16]", "model_kwargs={features_per_stage: [4, 8, 16, 32]}", "num_workers=0",
        "device=cpu", "val_iterations=1", "progress=plain", "epochs=1", "iterations_per_epoch=2",
        "val_mirroring=false"]


def test_previous_stage_augmentation_keeps_one_hot() -> None:
    seg = torch.zeros(1, 24, 24, 24, dtype=torch.int16)
    seg[0, 4:12, 4:12, 4:12] = 1
    seg[0, 14:20, 14:20, 14:20] = 2
    seg[0, 0, 0, 0] = -1
    onehot = one_hot_foreground(seg, 3)
    assert onehot.shape == (2, 24, 24, 24) and onehot[:, 0, 0, 0].sum() == 0
    changed = 0
    for seed in range(12):
        out = augment_previous(onehot, np.random.default_rng(seed))
        assert out.sum(0).max() <= 1  # never two labels in one voxel
        changed += int(not torch.equal(out, onehot))
    assert 0 < changed < 12  # applied to some samples only (p = 0.4 and 0.2)


def _cascade_dataset(root: Path) -> dict[str, Any]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("medseg_training_fixtures", Path(__file__).parent / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dataset = module.write_mni_dataset(root)
    manifest = json.loads(dataset["manifest"].read_text())
    manifest["splits"] = [{"train": ["mni"], "val": ["mni_copy"]}, {"train": ["mni_copy"], "val": ["mni"]}]
    dataset["manifest"].write_text(json.dumps(manifest))
    plans = json.loads(dataset["plans"].read_text())
    full = plans["configurations"]["3d_fullres"]
    low = copy.deepcopy(full)
    low.update(spacing=[s * 2 for s in full["spacing"]], data_identifier="medsegPlans_3d_lowres",
               median_image_size_in_voxels=[m / 2 for m in full["median_image_size_in_voxels"]],
               next_stage="3d_cascade_fullres")
    cascade = copy.deepcopy(full)
    cascade.update(inherits_from="3d_fullres", previous_stage="3d_lowres")
    cascade["model"]["in_channels"] = 2  # the image and the one-hot white-matter prediction
    cascade["num_input_channels"] = 2
    plans["configurations"].update({"3d_lowres": low, "3d_cascade_fullres": cascade})
    dataset["plans"].write_text(json.dumps(plans))
    return dataset


def test_cascade_trains_on_lowres_cv_predictions_and_predicts_both_stages(tmp_path: Path) -> None:
    dataset = _cascade_dataset(tmp_path / "data")
    low_run, cascade_run = tmp_path / "lowres", tmp_path / "cascade"
    settings = [*TINY, "cache_dir=" + str(tmp_path / "cache")]
    config = load_config(TrainConfig, None, settings)
    with pytest.raises(TrainingError, match="previous_stage_run"):
        train(dataset["plans"], "3d_cascade_fullres", [0], cascade_run, config, manifest_path=dataset["manifest"])
    train(dataset["plans"], "3d_lowres", [0], low_run, config, manifest_path=dataset["manifest"])
    # fold 0 validated mni_copy only: the cascade's fold 0 also trains on mni, whose lowres prediction is missing
    cascade_config = load_config(TrainConfig, None, [*settings, f"previous_stage_run={low_run}"])
    with pytest.raises(TrainingError, match="mni"):
        train(dataset["plans"], "3d_cascade_fullres", [0], cascade_run, cascade_config,
              manifest_path=dataset["manifest"])
    train(dataset["plans"], "3d_lowres", [1], low_run, config, manifest_path=dataset["manifest"])
    written = sorted(p.name for p in low_run.glob(f"fold_*/{NEXT_STAGE_FOLDER}/*.npz"))
    assert written == ["mni.npz", "mni_copy.npz"]
    with np.load(low_run / "fold_0" / NEXT_STAGE_FOLDER / "mni_copy.npz") as stored:
        seg = stored["seg"]
    cached = np.load(tmp_path / "cache" / "medsegPlans_3d_fullres" / "mni_copy_seg.npy")
    assert seg.shape == cached.shape  # on the cascade's (full-resolution) grid
    summaries = train(dataset["plans"], "3d_cascade_fullres", [0], cascade_run, cascade_config,
                      manifest_path=dataset["manifest"])
    assert summaries[0]["configuration"] == "3d_cascade_fullres"
    state = torch.load(cascade_run / "fold_0" / "checkpoint_final.pt", weights_only=True)
    first_conv = next(v for k, v in state["model"].items() if k.endswith("conv.weight"))
    assert first_conv.shape[1] == 2  # image + one-hot lowres prediction
    out = tmp_path / "pred"
    done = subprocess.run([sys.executable, "-m", "medseg", "predict", "-i", str(dataset["root"] / "mni_t1.nii.gz"),
                           "-o", str(out), "-m", str(cascade_run), "--folds", "0", "--device", "cpu", "--no-tta",
                           "--progress", "plain"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 fold model(s)" in done.stderr  # the cascade's fold and the two lowres folds it runs first
    assert len(list(out.glob("*.nii.gz"))) == 1
