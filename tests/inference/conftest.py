"""Inference fixtures: run folders built by hand (untrained tiny nets) and one really trained on a real MRI crop."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

_TRAINING_CONFTEST = Path(__file__).resolve().parents[1] / "training" / "conftest.py"


def _training_helpers() -> Any:
    spec = importlib.util.spec_from_file_location("_medseg_training_conftest", _TRAINING_CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run_folder(root: Path, plans: dict[str, Any], *, fold: int = 0, patch: list[int] | None = None,
                     features: list[int] | None = None, mirror: bool = True, seed: int = 0,
                     configuration: str = "3d_fullres") -> Path:
    """A ``medseg train`` fold folder with a freshly initialised network built by the trainer's own builder."""
    from medseg.preprocessing import configuration_of
    from medseg.training import TrainConfig
    from medseg.training.trainer import build_model

    folder = root / f"fold_{fold}"
    folder.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(patch_size=patch or [16, 16, 16],
                         model_kwargs={"features_per_stage": features or [4, 8, 16, 32]}, device="cpu")
    config.augmentation.mirror = mirror
    torch.manual_seed(seed)
    model = build_model(configuration_of(plans, configuration), config)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config)))
    torch.save({"model": model.state_dict(), "configuration": configuration, "fold": fold,
                "model_name": plans["configurations"][configuration]["model"]["name"]},
               folder / "checkpoint_final.pt")
    return root


@pytest.fixture(scope="session")
def mni_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The training tests' MNI white-matter dataset (48³ at 2 mm) with its plans."""
    return _training_helpers().write_mni_dataset(tmp_path_factory.mktemp("mni_infer"))


@pytest.fixture(scope="session")
def mni_plans(mni_data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(Path(mni_data["plans"]).read_text())


@pytest.fixture(scope="session")
def transposed_plans(mni_plans: dict[str, Any]) -> dict[str, Any]:
    """The MNI plans with a non-trivial transpose (axis 2 first), to exercise the transpose back."""
    plans = copy.deepcopy(mni_plans)
    cfg = plans["configurations"]["3d_fullres"]
    cfg["transpose_forward"], cfg["transpose_backward"] = [2, 0, 1], [1, 2, 0]
    plans["transpose_forward"], plans["transpose_backward"] = [2, 0, 1], [1, 2, 0]
    return plans


@pytest.fixture(scope="session")
def untrained_run(tmp_path_factory: pytest.TempPathFactory, transposed_plans: dict[str, Any]) -> Path:
    return write_run_folder(tmp_path_factory.mktemp("run_untrained"), transposed_plans)


def train_tiny_run(out: Path, mni_data: dict[str, Any] | None = None) -> Path:
    """A tiny nnU-Net really trained on the MNI crop (45 AdamW steps on 16³ patches: seconds on the CPU).

    Args:
        out: An empty folder; the run goes to ``out/run``, the training log to ``out/train.log``.
        mni_data: The MNI dataset (:func:`write_mni_dataset` of the training tests); written to ``out/mni`` if None.

    Returns:
        The run folder (what ``medseg predict -m`` and ``medseg listen -m`` take).
    """
    from medseg.config import load_config
    from medseg.training import TrainConfig, train

    if mni_data is None:
        mni_data = _training_helpers().write_mni_dataset(out / "mni")
    config = load_config(TrainConfig, None, [
        "epochs=3", "iterations_per_epoch=15", "val_iterations=1", "patch_size=[16, 16, 16]", "optimizer=adamw",
        "lr=0.01", "model_kwargs={features_per_stage: [4, 8, 16, 32]}", "num_workers=0", "device=cpu",
        "progress=plain", "final_validation=false", "augmentation.enabled=false", "preprocess_workers=1",
        "cache_dir=" + str(out / "cache"),
    ])
    with open(out / "train.log", "w") as stream:
        train(mni_data["plans"], "3d_fullres", [0], out / "run", config, manifest_path=mni_data["manifest"],
              stream=stream)
    return out / "run"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, mni_data: dict[str, Any]) -> Path:
    """:func:`train_tiny_run` on the shared MNI dataset."""
    return train_tiny_run(tmp_path_factory.mktemp("run_trained"), mni_data)


@pytest.fixture(scope="session")
def run_folder_writer() -> Any:
    """:func:`write_run_folder`, for tests that build their own run folders."""
    return write_run_folder
