"""Fixtures of the hostile-input corpus (helpers in tests/hostile_helpers.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from hostile_helpers import Result


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``medseg ARGS`` in this process; returns a :class:`Result`."""
    from medseg.cli.main import main

    def run(*args: Any) -> Result:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run



@pytest.fixture(scope="session")
def mni_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The training tests' MNI white-matter dataset (48³ at 2 mm) with fingerprint and plans."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "training" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_medseg_training_conftest_hostile", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_mni_dataset(tmp_path_factory.mktemp("hostile_mni"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, mni_dataset: dict[str, Any]) -> Path:
    """A ``medseg train`` run folder holding an untrained tiny network on the MNI plans (prediction runs in ~1 s)."""
    import dataclasses

    import torch
    import yaml

    from medseg.preprocessing import configuration_of
    from medseg.training import TrainConfig
    from medseg.training.trainer import build_model

    plans = json.loads(Path(mni_dataset["plans"]).read_text())
    root = tmp_path_factory.mktemp("hostile_run")
    folder = root / "fold_0"
    folder.mkdir()
    config = TrainConfig(patch_size=[16, 16, 16], model_kwargs={"features_per_stage": [4, 8, 16, 32]}, device="cpu")
    torch.manual_seed(0)
    model = build_model(configuration_of(plans, "3d_fullres"), config)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config)))
    torch.save({"model": model.state_dict(), "configuration": "3d_fullres", "fold": 0,
                "model_name": plans["configurations"]["3d_fullres"]["model"]["name"]}, folder / "checkpoint_final.pt")
    return root


@pytest.fixture(scope="session")
def mni_image(mni_dataset: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The 48³ MNI crop (int16) and its affine."""
    image = nib.load(str(Path(mni_dataset["root"]) / "mni_t1.nii.gz"))
    return np.asarray(image.dataobj), image.affine
