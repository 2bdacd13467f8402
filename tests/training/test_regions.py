"""Region-based training (nnU-Net's regions: sigmoid per region, Dice + BCE, ``regions_class_order``)."""

from __future__ import annotations

import importlib.resources
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.config import load_config
from medseg.training import TrainConfig, train
from medseg.training.loss import RegionDiceBCELoss, build_loss, regions_to_masks
from medseg.training.trainer import labels_from_regions


def test_region_loss_is_bce_plus_soft_dice_of_the_sigmoids() -> None:
    target = torch.tensor([0, 1, 2, 2, 1, 0]).view(1, 1, 6)
    masks = regions_to_masks(target, [[1, 2], [2]])
    assert masks[0].tolist() == [[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]]
    logits = torch.randn(1, 2, 6, generator=torch.Generator().manual_seed(0))
    loss = RegionDiceBCELoss([[1, 2], [2]])(logits, target)
    p = torch.sigmoid(logits)
    dice = (2 * (p * masks).sum(-1) + 1e-5) / (p.sum(-1) + masks.sum(-1) + 1e-5)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, masks) - dice.mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    assert isinstance(build_loss("dice_ce", False, [[1]]), RegionDiceBCELoss)
    with pytest.raises(ValueError, match="regions"):
        build_loss("dice_bce", False)
    # later regions overwrite earlier ones
    region_logits = torch.tensor([[1.0, 1.0, -1.0], [-1.0, 2.0, 3.0]])
    assert labels_from_regions(region_logits, [1, 2]).tolist() == [1, 2, 2]


def test_region_config_is_checked() -> None:
    with pytest.raises(ValueError, match="one entry per region"):
        TrainConfig(regions=[[1, 2], [2]], regions_class_order=[1])
    with pytest.raises(ValueError, match="foreground"):
        TrainConfig(regions=[[0, 1]], regions_class_order=[1])


def _mni(name: str) -> np.ndarray:
    file = f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    path = importlib.resources.files("nilearn.datasets") / "data" / file
    return np.asarray(nib.load(str(path)).dataobj)


def test_region_training_learns_and_predicts_label_maps(tmp_path: Path) -> None:
    """Grey and white matter of the MNI152 template as two nested regions (brain tissue ⊃ white matter)."""
    from medseg.data import load_manifest
    from medseg.planning import compute_fingerprint, plan_experiment, save_fingerprint, save_plans

    view = (slice(25, 73), slice(30, 78), slice(25, 73))
    t1 = _mni("t1")[::2, ::2, ::2][view].astype(np.int16)
    gm = _mni("gm")[::2, ::2, ::2][view] > 0.5 * 255
    wm = _mni("wm")[::2, ::2, ::2][view] > 0.5 * 255
    label = np.where(wm, 2, np.where(gm, 1, 0)).astype(np.uint8)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(t1, affine), tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "label.nii.gz")
    manifest = {"format_version": 1, "name": "tissue", "channels": [{"name": "T1", "modality": "MR"}],
                "labels": {"background": 0, "grey": 1, "white": 2},
                "cases": [{"id": "a", "images": ["t1.nii.gz"], "label": "label.nii.gz"},
                          {"id": "b", "images": ["t1.nii.gz"], "label": "label.nii.gz"}],
                "splits": [{"train": ["a"], "val": ["b"]}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    fingerprint = compute_fingerprint(load_manifest(tmp_path / "manifest.json"), workers=1)
    save_fingerprint(fingerprint, tmp_path / "fingerprint.json")
    save_plans(plan_experiment(fingerprint, configs=("3d_fullres",)), tmp_path / "plans.json")
    config = load_config(TrainConfig, None, [
        "patch_size=[32, 32, 32]", "model_kwargs={features_per_stage: [8, 16, 32, 64]}", "num_workers=0",
        "device=cpu", "val_iterations=1", "augmentation.enabled=false", "progress=plain", "epochs=3",
        "iterations_per_epoch=12", "optimizer=adamw", "lr=3e-3", "val_mirroring=false", "batch_size=2",
        "regions=[[1, 2], [2]]", "regions_class_order=[1, 2]", "cache_dir=" + str(tmp_path / "cache")])
    summaries = train(tmp_path / "plans.json", "3d_fullres", [0], tmp_path / "run", config,
                      manifest_path=tmp_path / "manifest.json")
    run = tmp_path / "run" / "fold_0"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert len(records[-1]["pseudo_dice"]) == 2  # one pseudo-Dice per region
    mean = summaries[0]["mean_dice"]
    assert set(mean) == {"grey+white", "white"}
    assert mean["grey+white"] > 0.5  # the brain-tissue region is learnt in a few dozen steps
    out = tmp_path / "pred"
    done = subprocess.run([sys.executable, "-m", "medseg", "predict", "-i", str(tmp_path / "t1.nii.gz"), "-o",
                           str(out), "-m", str(tmp_path / "run"), "--device", "cpu", "--no-tta", "--progress",
                           "plain"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    predicted = np.asarray(nib.load(str(out / "t1.nii.gz")).dataobj)
    assert set(np.unique(predicted)) <= {0, 1, 2} and (predicted > 0).any()
    assert json.loads((out / "labels.json").read_text()) == {"0": "background", "1": "grey", "2": "white"}
    tissue = label > 0
    dice = 2 * ((predicted > 0) & tissue).sum() / ((predicted > 0).sum() + tissue.sum())
    assert dice > 0.5
    # exported to nnU-Net's form, the regions and their order go to dataset.json; loaded back it predicts the same
    exported = tmp_path / "exported"
    done = subprocess.run([sys.executable, "-m", "medseg", "export-nnunet", str(tmp_path / "run"), "-o",
                           str(exported)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    nn_dataset = json.loads((exported / "dataset.json").read_text())
    assert nn_dataset["labels"] == {"background": 0, "grey+white": [1, 2], "white": [2]}
    assert nn_dataset["regions_class_order"] == [1, 2]
    again = tmp_path / "pred_exported"
    done = subprocess.run([sys.executable, "-m", "medseg", "predict", "-i", str(tmp_path / "t1.nii.gz"), "-o",
                           str(again), "-m", str(exported), "--device", "cpu", "--no-tta", "--progress", "plain"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.array_equal(np.asarray(nib.load(str(again / "t1.nii.gz")).dataobj), predicted)
