"""Training networks that declare their own objective: the label goes into the forward pass (the posterior nets of
the probabilistic U-Nets), their ``training_loss`` replaces the configured loss, and nothing else changes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from medseg.cli.main import main


def _train(tmp_path: Path, dataset: dict[str, Any], settings: list[str], model: str, model_kwargs: str,
           capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[Path, str]:
    sets = [item for s in settings if not s.startswith("model_kwargs") for item in ("--set", s)]
    out = tmp_path / "run"
    code = main(["train", str(dataset["plans"]), "--config", "3d_fullres", "--fold", "0", "--out", str(out),
                 "--model", model, "--epochs", "1", "--iters-per-epoch", "4", "--manifest", str(dataset["manifest"]),
                 *sets, "--set", f"model_kwargs={model_kwargs}", "--set", "optimizer=adamw", "--set", "lr=0.001",
                 "--set", "preprocess_workers=1", "--set", f"cache_dir={tmp_path / 'cache'}", *extra])
    text = "".join(capsys.readouterr())
    assert code == 0, text
    return out / "fold_0", text


def test_prob_unet_trains_with_its_elbo_and_the_label(tmp_path: Path, mni_dataset: dict[str, Any],
                                                      tiny_settings: list[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    fold, text = _train(tmp_path, mni_dataset, tiny_settings, "prob_unet", "{features: [4, 8, 8]}", capsys,
                        "--set", "final_validation=true", "--set", "val_mirroring=false")
    assert "trains with its own objective" in text and "'dice_ce'" in text
    record = json.loads((fold / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])
    assert 0 < record["train_loss"] < 1  # the ELBO per voxel (cross-entropy ≈ ln 2 at the start), not Dice + CE
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["cases"] and summary["foreground_mean_dice"] is not None
    trained = torch.load(fold / "checkpoint_final.pt", weights_only=True)["model"]
    from medseg.models import create_model

    torch.manual_seed(12345)  # the trainer's seed: the weights it started from
    start = create_model("prob_unet", 3, 1, 2, features=(4, 8, 8)).state_dict()
    moved = [k for k in start if k.startswith("posterior.") and not torch.equal(start[k], trained[k])]
    assert moved, "the posterior net never saw the label"


def test_hprob_unet_trains_with_geco(tmp_path: Path, mni_dataset: dict[str, Any], tiny_settings: list[str],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    fold, _ = _train(tmp_path, mni_dataset, tiny_settings, "hprob_unet",
                     "{channels_per_block: [4, 8, 8], latent_dims: [1], blocks_per_level: 1}", capsys)
    state = torch.load(fold / "checkpoint_final.pt", weights_only=True)["model"]
    assert int(state["geco_steps"]) == 4  # one GECO update per training step, none in validation
    assert float(state["geco_lambda"]) != 1.0


def test_gp_unet_trains_from_image_level_labels_and_localises(tmp_path: Path, mni_dataset: dict[str, Any],
                                                              tiny_settings: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """GP-Unet through ``medseg train`` on the white-matter fraction of each patch alone (no voxel labels reach the
    loss): the pooled map learns the fraction, and the map itself then marks where the white matter is."""
    import numpy as np

    from medseg.models import create_model

    sets = [item for s in tiny_settings if not s.startswith("model_kwargs") for item in ("--set", s)]
    out = tmp_path / "run"
    code = main(["train", str(mni_dataset["plans"]), "--config", "3d_fullres", "--fold", "0", "--out", str(out),
                 "--model", "gp_unet", "--epochs", "6", "--iters-per-epoch", "10", "--manifest",
                 str(mni_dataset["manifest"]), *sets, "--set",
                 "model_kwargs={features: [8, 16], weak_target: fraction}", "--set", "optimizer=adamw", "--set",
                 "lr=0.003", "--set", "preprocess_workers=1", "--set", f"cache_dir={tmp_path / 'cache'}"])
    text = "".join(capsys.readouterr())
    assert code == 0, text
    records = [json.loads(line) for line in (out / "fold_0" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train_loss"] < 0.5 * records[0]["train_loss"], records
    model = create_model("gp_unet", 3, 1, 2, features=(8, 16), weak_target="fraction")
    model.load_state_dict(torch.load(out / "fold_0" / "checkpoint_final.pt", weights_only=True)["model"])
    model.eval()
    image = torch.as_tensor(np.asarray(mni_dataset["image"], np.float32))[None, None]
    image = (image - image.mean()) / image.std()
    with torch.no_grad():
        wm_map = model(image)[0, 1].numpy()
    label = np.asarray(mni_dataset["label"]) > 0
    assert wm_map[label].mean() > wm_map[~label].mean()  # the map localises what the fraction counted
