"""Output-space domain adaptation (AdaptSegNet, Tsai et al. 2018; MADA-Net's multi-scale aggregation): the target
cache without labels, the discriminators per level and per scale, and on real spinal-cord MRI the paper's result —
trained on labelled T2 images and unlabelled T1 images, the network segments the T1 cord far better than the same
training on T2 alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from methods_helpers import SHARED, dice

from medseg.config import load_config
from medseg.data import load_manifest
from medseg.models import create_model
from medseg.preprocessing import load_cached_case, preprocess_dataset
from medseg.training.config import AugmentationConfig
from medseg.training.data import BatchDataset
from medseg.training.domain_adaptation import DomainAdaptation, output_shapes


def _nnunet_2d() -> torch.nn.Module:
    return create_model("nnunet", 2, 1, 2, features_per_stage=[4, 8, 16], strides=[[1, 1], [2, 2], [2, 2]],
                        kernel_sizes=[[3, 3]] * 3, n_conv_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1],
                        deep_supervision=True)


def test_output_levels_and_scales_get_their_discriminators() -> None:
    shapes = output_shapes(_nnunet_2d, 1, [32, 32])
    assert shapes == [(32, 32), (16, 16)]
    model = _nnunet_2d()
    target = {"data": torch.randn(2, 1, 32, 32)}
    hook = DomainAdaptation(model, lambda e, i: target, 2, 2, shapes, torch.device("cpu"), levels=2, features=4)
    assert hook.weights == [0.001, 0.0002] and len(hook.discriminators) == 2
    hook.start_epoch(0)
    output = model(torch.randn(2, 1, 32, 32))
    loss = hook.generator_loss(torch.zeros(2, 1, 32, 32), output, torch.zeros(2, 1, 32, 32, dtype=torch.long))
    loss.backward()
    assert [p[1].shape for p in hook.pending] == [(2, 2, 32, 32), (2, 2, 16, 16)]
    hook.discriminator_step()
    assert hook.epoch_metrics()["domain_disc_loss"] > 0
    mada = DomainAdaptation(model, lambda e, i: target, 2, 2, shapes, torch.device("cpu"), method="mada",
                            scales=[1, 2, 4], features=4)
    mada.start_epoch(0)
    mada.generator_loss(torch.zeros(2, 1, 32, 32), model(torch.randn(2, 1, 32, 32)), torch.zeros(2, 1, 32, 32))
    assert [p[2].shape[2:] for p in mada.pending] == [(32, 32), (16, 16), (8, 8)] and mada.weights == [0.001] * 3
    with pytest.raises(ValueError, match="levels is 3"):
        DomainAdaptation(model, lambda e, i: target, 2, 2, shapes, torch.device("cpu"), levels=3)
    with pytest.raises(ValueError, match="2 values for 3 scales"):
        DomainAdaptation(model, lambda e, i: target, 2, 2, shapes, torch.device("cpu"), method="mada",
                         weights=[0.1, 0.2])


def test_target_images_are_cached_without_labels(tmp_path: Path, mni_dataset_plans: dict[str, Any]) -> None:
    manifest = load_manifest(mni_dataset_plans["manifest"])
    folder = preprocess_dataset(manifest, mni_dataset_plans["plans"], "3d_fullres", tmp_path / "target", labels=False)
    assert sorted(p.name for p in folder.iterdir()) == ["cache.json", "mni.json", "mni.npy", "mni_copy.json",
                                                        "mni_copy.npy"]
    assert json.loads((folder / "cache.json").read_text())["labels"] is False
    assert preprocess_dataset(manifest, mni_dataset_plans["plans"], "3d_fullres", tmp_path / "target",
                              labels=False) == folder  # reused
    case = load_cached_case(folder, "mni")
    assert case["seg"] is None and case["locations"] == {}
    batches = BatchDataset(folder, ["mni", "mni_copy"], [16, 16, 16], 2, 0, 2, 3, 0, 2, AugmentationConfig(),
                           oversample_foreground=0.0)
    batch = batches[0]
    assert batch["data"].shape == (2, 1, 16, 16, 16) and not batch["target"].any()


def _cord_data(root: Path) -> dict[str, Any]:
    """T2 (source, labelled) and T1 (target; its mask only for scoring) of ``sct_spine``, prepared as
    ``benchmarks/domain_adaptation_benchmark.py`` prepares them (one preparation for the test and the benchmark)."""
    import importlib.util

    folder = SHARED / "sct_spine"
    if not folder.is_dir():
        pytest.skip(f"real test data not present at {folder}")
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "domain_adaptation_benchmark.py"
    spec = importlib.util.spec_from_file_location("domain_adaptation_benchmark", path)
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    benchmark.prepare(folder, root)
    return {"root": root}


@pytest.mark.slow
def test_adaptation_raises_target_dice_over_source_only_training(tmp_path: Path) -> None:
    """T2 → T1 cervical cord, 2D, 150 iterations of batch 4 each: source only, AdaptSegNet and MADA at equal budget.

    ``benchmarks/domain_adaptation_benchmark.py --epochs 6 --batch-size 4`` runs the same trainings.
    """
    from medseg.inference import Predictor, load_folds
    from medseg.io import load_image
    from medseg.training import TrainConfig, train

    data = _cord_data(tmp_path / "data")
    root = data["root"]
    t1_cord = np.asarray(nib.load(root / "t1_cord.nii.gz").dataobj) > 0
    t2_cord = np.asarray(nib.load(root / "t2_cord.nii.gz").dataobj) > 0
    common = ["epochs=6", "iterations_per_epoch=25", "val_iterations=1", "patch_size=[48, 48]", "batch_size=4",
              "model_kwargs={features_per_stage: [8, 16, 32, 64]}", "optimizer=adamw", "lr=0.003", "num_workers=0",
              "device=cpu", "progress=plain", "final_validation=false", "preprocess_workers=1",
              f"cache_dir={tmp_path / 'cache'}"]
    adapt = [f"domain_adaptation.target_manifest={root / 'target.json'}", "domain_adaptation.weights=[0.01]",
             "domain_adaptation.levels=1", "domain_adaptation.features=16"]
    runs = {"source_only": [], "adaptsegnet": adapt, "mada": [*adapt, "domain_adaptation.method=mada"]}
    scores = {}
    for name, settings in runs.items():
        config = load_config(TrainConfig, None, common + settings)
        train(root / "plans.json", "2d", [0], tmp_path / name, config, manifest_path=root / "source.json",
              stream=open(tmp_path / f"{name}.log", "w"))  # noqa: SIM115
        predictor = Predictor(load_folds([tmp_path / name], [0]), tta=False, device="cpu")
        target = predictor.predict(load_image(root / "t1.nii.gz")).labels.numpy()[0] > 0
        source = predictor.predict(load_image(root / "t2.nii.gz")).labels.numpy()[0] > 0
        scores[name] = {"target": dice(target, t1_cord), "source": dice(source, t2_cord)}
    print(scores)
    for name in ("adaptsegnet", "mada"):
        assert scores[name]["target"] > scores["source_only"]["target"] + 0.08, scores
        assert scores[name]["source"] > 0.9, scores
    records = [json.loads(x) for x in (tmp_path / "mada" / "fold_0" / "metrics.jsonl").read_text().splitlines()]
    assert {"domain_adv_loss", "domain_disc_loss", "domain_disc_accuracy"} <= set(records[-1])
    assert (tmp_path / "cache" / "target").is_dir()
    shutil.rmtree(tmp_path / "cache")
