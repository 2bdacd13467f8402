"""Samples through the sliding window and ``medseg predict --samples``: mean probability, entropy, mutual information,
per-sample label maps with the input's geometry, the ledger, and clear refusals for deterministic networks."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medseg.cli.main import main
from medseg.errors import InferenceError, ModelError
from medseg.inference import SlidingWindowPredictor
from medseg.inference.uncertainty import SampleAccumulator, entropy
from medseg.models import create_model


def _cli(args: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue() + err.getvalue()


# The summary ---------------------------------------------------------------------------------------------------------


def test_entropy_and_mutual_information_by_hand() -> None:
    certain_a = np.array([[1.0, 0.9], [0.0, 0.1]], np.float32)  # (K=2, 2 voxels)
    certain_b = np.array([[0.0, 0.9], [1.0, 0.1]], np.float32)
    acc = SampleAccumulator(keep_samples=True)
    acc.add(certain_a, certain_a.argmax(0))
    acc.add(certain_b, certain_b.argmax(0))
    summary = acc.result()
    assert summary.count == 2 and summary.samples.tolist() == [[0, 0], [1, 0]]
    np.testing.assert_allclose(summary.mean_probabilities[:, 0], [0.5, 0.5])
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    np.testing.assert_allclose(summary.entropy, [math.log(2), h], rtol=1e-6)
    # voxel 0: every sample certain, they disagree: all of the entropy is disagreement; voxel 1: they agree
    np.testing.assert_allclose(summary.mutual_information, [math.log(2), 0.0], atol=1e-6)
    assert summary.labels.tolist() == [0, 0]
    assert entropy(np.array([[1.0], [0.0]]))[0] == 0.0
    with pytest.raises(ValueError, match="differs"):
        acc.add(np.ones((3, 2), np.float32), np.zeros(2))
    with pytest.raises(ValueError, match="no samples"):
        SampleAccumulator().result()


# The sliding window --------------------------------------------------------------------------------------------------


def test_sliding_window_draws_reproducible_samples_of_latent_and_dropout_networks() -> None:
    torch.manual_seed(0)
    volume = torch.randn(1, 24, 24, 24)
    latent = create_model("prob_unet", 3, 1, 2, features=(4, 8, 8))
    dropout = create_model("unet", 3, 1, 2, features=(4, 8, 8), dropout=0.5)
    for model in (latent, dropout):
        window = SlidingWindowPredictor([model], [16, 16, 16], step=0.5, device="cpu")
        plain = window.predict(volume)
        first, again, other = (window.predict(volume, sample=s) for s in (3, 3, 4))
        assert torch.equal(first, again) and not torch.equal(first, other) and not torch.equal(first, plain)
        assert torch.equal(window.predict(volume), plain)  # sampling leaves the network as it was
    deterministic = SlidingWindowPredictor([create_model("unet", 3, 1, 2, features=(4, 8))], [16, 16, 16],
                                           device="cpu")
    with pytest.raises(ModelError, match="deterministic"):
        deterministic.predict(volume, sample=0)


# medseg predict --samples --------------------------------------------------------------------------------------------


def _run_folder(root: Path, plans: dict[str, Any], model: str, model_kwargs: dict[str, Any]) -> Path:
    """A fold folder of an untrained ``model`` built by the trainer's own builder (as ``medseg train`` writes it)."""
    from medseg.preprocessing import configuration_of
    from medseg.training import TrainConfig
    from medseg.training.trainer import build_model

    folder = root / "fold_0"
    folder.mkdir(parents=True)
    config = TrainConfig(patch_size=[16, 16, 16], model=model, model_kwargs=model_kwargs, device="cpu")
    torch.manual_seed(0)
    network = build_model(configuration_of(plans, "3d_fullres"), config)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config)))
    torch.save({"model": network.state_dict(), "configuration": "3d_fullres", "fold": 0, "model_name": model},
               folder / "checkpoint_final.pt")
    return root


@pytest.fixture(scope="module")
def prob_run(tmp_path_factory: pytest.TempPathFactory, mni_plans: dict[str, Any]) -> Path:
    return _run_folder(tmp_path_factory.mktemp("prob_run"), mni_plans, "prob_unet", {"features": [4, 8, 8]})


def test_predict_samples_writes_uncertainty_maps_with_the_input_geometry(
        tmp_path: Path, prob_run: Path, mni_data: dict[str, Any]) -> None:
    image = Path(mni_data["root"]) / "mni_t1.nii.gz"
    out = tmp_path / "pred"
    args = ["predict", "-i", str(image), "-o", str(out), "-m", str(prob_run), "--device", "cpu", "--progress",
            "plain", "--no-tta", "--samples", "3", "--save-samples"]
    code, text = _cli(args)
    assert code == 0, text
    reference = nib.load(image)
    loaded = {name: nib.load(out / name) for name in (
        "mni_t1.nii.gz", "uncertainty/mni_t1_mean_probabilities.nii.gz", "uncertainty/mni_t1_entropy.nii.gz",
        "uncertainty/mni_t1_mutual_information.nii.gz", "samples/mni_t1.nii.gz")}
    for name, img in loaded.items():
        assert img.shape[:3] == reference.shape, name
        np.testing.assert_allclose(img.affine, reference.affine, atol=1e-5, err_msg=name)
    mean = np.moveaxis(np.asarray(loaded["uncertainty/mni_t1_mean_probabilities.nii.gz"].dataobj), -1, 0)
    h = np.asarray(loaded["uncertainty/mni_t1_entropy.nii.gz"].dataobj)
    mi = np.asarray(loaded["uncertainty/mni_t1_mutual_information.nii.gz"].dataobj)
    draws = np.moveaxis(np.asarray(loaded["samples/mni_t1.nii.gz"].dataobj), -1, 0)
    labels = np.asarray(loaded["mni_t1.nii.gz"].dataobj)
    assert mean.shape[0] == 2 and draws.shape == (3, *reference.shape)
    np.testing.assert_allclose(mean.sum(0), 1.0, atol=2e-3)
    assert h.min() >= 0 and h.max() <= math.log(2) + 1e-4 and np.all(mi <= h + 1e-5) and mi.min() >= 0
    assert np.array_equal(labels, mean.argmax(0))
    assert mi.max() > 0  # the draws differ somewhere
    code, text = _cli(args)
    assert code == 0 and "1 already done" in text  # the ledger knows the case (and its settings)
    code, text = _cli([*args[:-2], "2"])
    assert code == 0 and "1 predicted" in text  # another number of samples redoes it


def test_samples_need_a_stochastic_network(tmp_path: Path, mni_plans: dict[str, Any],
                                           mni_data: dict[str, Any]) -> None:
    run = _run_folder(tmp_path / "run", mni_plans, "unet", {"features": [4, 8, 8]})
    image = str(Path(mni_data["root"]) / "mni_t1.nii.gz")
    code, text = _cli(["predict", "-i", image, "-o", str(tmp_path / "p"), "-m", str(run), "--samples", "2"])
    assert code == 1 and "needs a stochastic network" in text and "fold_0" in text
    code, text = _cli(["predict", "-i", image, "-o", str(tmp_path / "p"), "-m", str(run), "--save-samples"])
    assert code == 1 and "--save-samples needs --samples" in text
    from medseg.inference import load_folds
    from medseg.inference.predictor import Predictor

    with pytest.raises(InferenceError, match="0 or more"):
        Predictor(load_folds([run]), samples=-1)


def test_mc_dropout_samples_of_a_unet_trained_with_dropout(tmp_path: Path, mni_plans: dict[str, Any],
                                                           mni_data: dict[str, Any]) -> None:
    run = _run_folder(tmp_path / "run", mni_plans, "unet", {"features": [4, 8, 8], "dropout": 0.5})
    image = str(Path(mni_data["root"]) / "mni_t1.nii.gz")
    out = tmp_path / "pred"
    code, text = _cli(["predict", "-i", image, "-o", str(out), "-m", str(run), "--device", "cpu", "--no-tta",
                       "--samples", "2", "--format", "nrrd"])
    assert code == 0, text
    from medseg.io import load_image

    mi = load_image(out / "uncertainty" / "mni_t1_mutual_information.nrrd")
    assert mi.shape[1:] == nib.load(image).shape and float(mi.max()) > 0  # two dropout masks, two predictions
    assert not (out / "samples").exists()  # per-sample label maps only on request
