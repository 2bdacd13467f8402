"""End-to-end training on a real MRI crop: convergence, exact kill-and-resume, 2-process DDP, CLI errors."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from medseg.config import load_config
from medseg.errors import TrainingError
from medseg.training import TrainConfig, train

PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[2]


def _cli(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-m", "medseg", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _train_args(dataset: dict[str, Any], out: Path, settings: list[str], epochs: int, iters: int) -> list[str]:
    args = ["train", str(dataset["plans"]), "--config", "3d_fullres", "--fold", "0", "--epochs", str(epochs),
            "--iters-per-epoch", str(iters), "--out", str(out), "--manifest", str(dataset["manifest"])]
    for item in settings:
        args += ["--set", item]
    return args


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _check_run_folder(folder: Path) -> None:
    """Every file loads: checkpoints with weights_only=True, JSON/JSONL/YAML parse, the PNG decodes."""
    names = {p.name for p in folder.iterdir()}
    for required in ("config.yaml", "plans.json", "splits.json", "environment.json", "seed", "metrics.jsonl",
                     "progress.png", "checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt"):
        assert required in names, required
    for path in folder.rglob("*"):
        if path.is_dir():
            continue
        assert not path.name.startswith("."), f"temporary file left behind: {path}"
        if path.suffix == ".pt":
            state = torch.load(path, map_location="cpu", weights_only=True)
            assert {"model", "optimizer", "epoch", "rng", "scheduler"} <= set(state)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text())
        elif path.suffix == ".png":
            Image.open(path).verify()
        elif path.name == "seed":
            int(path.read_text())


@pytest.mark.slow
def test_converges_on_real_mri(mni_dataset: dict[str, Any], tmp_path: Path) -> None:
    """A tiny 3D nnU-Net with the default recipe (SGD, Dice+CE, deep supervision) reaches Dice >= 0.8 in < 60 s."""
    config = load_config(TrainConfig, None, [
        "epochs=4", "iterations_per_epoch=12", "val_iterations=2", "patch_size=[32, 32, 32]",
        "model_kwargs={features_per_stage: [8, 16, 32, 64]}", "num_workers=0", "device=cpu", "progress=plain",
        "val_mirroring=false", "cache_dir=" + str(tmp_path / "cache"),
    ])
    start = time.perf_counter()
    results = train(mni_dataset["plans"], "3d_fullres", [0], tmp_path / "run", config,
                    manifest_path=mni_dataset["manifest"])
    elapsed = time.perf_counter() - start
    dice = results[0]["mean_dice"]["wm"]
    print(f"training-case Dice {dice:.4f} in {elapsed:.1f} s")
    assert dice >= 0.8
    folder = tmp_path / "run" / "fold_0"
    _check_run_folder(folder)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert all(0 <= r["data_wait_fraction"] < 1 for r in records)
    assert records[0]["lr"] == pytest.approx(1e-2)
    assert records[1]["lr"] == pytest.approx(1e-2 * 0.75**0.9)
    summary = json.loads((folder / "validation" / "summary.json").read_text())
    assert summary["cases"][0]["case"] == "mni_copy"


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(mni_dataset: dict[str, Any], tmp_path: Path,
                                              tiny_settings: list[str]) -> None:
    """SIGKILL after the first checkpoint, --resume: the final weights equal an uninterrupted run's, bit for bit."""
    settings = [*tiny_settings, "cache_dir=" + str(tmp_path / "cache"), "augmentation.enabled=true"]
    # build the cache first so that both runs below only read it
    done = _cli(["preprocess", str(mni_dataset["plans"]), "--manifest", str(mni_dataset["manifest"]), "--out",
                 str(tmp_path / "cache")])
    assert done.wait(120) == 0, done.communicate()[0]
    epochs, iters = 6, 3
    reference = _cli(_train_args(mni_dataset, tmp_path / "reference", settings, epochs, iters))
    victim = _cli(_train_args(mni_dataset, tmp_path / "killed", settings, epochs, iters))
    latest = tmp_path / "killed" / "fold_0" / "checkpoint_latest.pt"
    deadline = time.monotonic() + 120
    while not latest.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = torch.load(latest, map_location="cpu", weights_only=True)["epoch"]
    assert killed_at < epochs, "the run finished before it could be killed"
    resumed = _cli([*_train_args(mni_dataset, tmp_path / "killed", settings, epochs, iters), "--resume"])
    out = resumed.communicate(timeout=180)[0]
    assert resumed.returncode == 0, out
    assert f"resuming fold 0 at epoch {killed_at + 1}" in out
    ref_out = reference.communicate(timeout=180)[0]
    assert reference.returncode == 0, ref_out
    a = _weights(tmp_path / "reference" / "fold_0" / "checkpoint_final.pt")
    b = _weights(tmp_path / "killed" / "fold_0" / "checkpoint_final.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    _check_run_folder(tmp_path / "killed" / "fold_0")
    ref_metrics = [json.loads(x) for x in (tmp_path / "reference/fold_0/metrics.jsonl").read_text().splitlines()]
    new_metrics = [json.loads(x) for x in (tmp_path / "killed/fold_0/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in new_metrics] == list(range(epochs))
    assert [r["train_loss"] for r in new_metrics] == [r["train_loss"] for r in ref_metrics]


@pytest.mark.slow
def test_ddp_two_processes_average_gradients(mni_dataset: dict[str, Any], tmp_path: Path,
                                             tiny_settings: list[str]) -> None:
    """torchrun with 2 gloo processes (batch 1 each) takes the same step as one process on the batch of 2.

    With batch Dice on, so the Dice term must be the global batch's (sums gathered over the processes) for the two
    steps to agree.
    """
    settings = [*tiny_settings, "cache_dir=" + str(tmp_path / "cache"), "batch_size=2", "batch_dice=true",
                "augmentation.enabled=true"]
    done = _cli(["preprocess", str(mni_dataset["plans"]), "--manifest", str(mni_dataset["manifest"]), "--out",
                 str(tmp_path / "cache")])
    assert done.wait(120) == 0, done.communicate()[0]
    args = _train_args(mni_dataset, tmp_path / "ddp", settings, 1, 1)
    ddp = subprocess.Popen([PYTHON, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                            "29517", "-m", "medseg", *args], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    single = _cli(_train_args(mni_dataset, tmp_path / "single", settings, 1, 1))
    out = ddp.communicate(timeout=240)[0]
    assert ddp.returncode == 0, out
    assert single.wait(240) == 0, single.communicate()[0]
    env = json.loads((tmp_path / "ddp" / "fold_0" / "environment.json").read_text())
    assert env["world_size"] == 2
    initial = _weights_after_init(mni_dataset, settings)
    a = _weights(tmp_path / "ddp" / "fold_0" / "checkpoint_final.pt")
    b = _weights(tmp_path / "single" / "fold_0" / "checkpoint_final.pt")
    moved = 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
        moved += int(not torch.equal(a[key], initial[key]))
    assert moved > 0  # the step did change the weights


def _weights_after_init(dataset: dict[str, Any], settings: list[str]) -> dict[str, torch.Tensor]:
    from medseg.planning import load_plans
    from medseg.preprocessing import configuration_of
    from medseg.training import build_model

    config = load_config(TrainConfig, None, settings)
    torch.manual_seed(config.seed)
    return build_model(configuration_of(load_plans(dataset["plans"]), "3d_fullres"), config).state_dict()


def test_resume_refuses_changed_config(mni_dataset: dict[str, Any], tmp_path: Path,
                                       tiny_settings: list[str]) -> None:
    settings = [*tiny_settings, "cache_dir=" + str(tmp_path / "cache")]
    config = load_config(TrainConfig, None, [*settings, "epochs=1", "iterations_per_epoch=1"])
    train(mni_dataset["plans"], "3d_fullres", [0], tmp_path / "run", config, manifest_path=mni_dataset["manifest"])
    _check_run_folder(tmp_path / "run" / "fold_0")
    with pytest.raises(TrainingError, match="already holds a training run"):
        train(mni_dataset["plans"], "3d_fullres", [0], tmp_path / "run", config,
              manifest_path=mni_dataset["manifest"])
    changed = load_config(TrainConfig, None, [*settings, "epochs=1", "iterations_per_epoch=1", "lr=0.5"])
    with pytest.raises(TrainingError, match=r"configuration differs .*\(lr\)"):
        train(mni_dataset["plans"], "3d_fullres", [0], tmp_path / "run", changed,
              manifest_path=mni_dataset["manifest"], resume=True)
    # runtime-only settings may differ; a finished run resumes to a no-op
    runtime = load_config(TrainConfig, None, [*settings, "epochs=1", "iterations_per_epoch=1", "num_workers=1"])
    train(mni_dataset["plans"], "3d_fullres", [0], tmp_path / "run", runtime, manifest_path=mni_dataset["manifest"],
          resume=True)
    # --resume without a checkpoint starts fresh
    train(mni_dataset["plans"], "3d_fullres", [0], tmp_path / "fresh", config, manifest_path=mni_dataset["manifest"],
          resume=True)
    assert (tmp_path / "fresh" / "fold_0" / "checkpoint_final.pt").is_file()


def test_cli_errors_are_one_line(mni_dataset: dict[str, Any], tmp_path: Path) -> None:
    from medseg.cli.main import main

    plans_only = tmp_path / "plans.json"
    plans_only.write_text((mni_dataset["plans"]).read_text())
    cases = [
        (["train", str(plans_only)], "cannot locate the dataset"),
        (["train", str(mni_dataset["plans"]), "--fold", "7", "--manifest", str(mni_dataset["manifest"])],
         "fold 7 does not exist"),
        (["train", str(mni_dataset["plans"]), "--config", "2d", "--manifest", str(mni_dataset["manifest"])],
         "no configuration '2d'"),
        (["train", str(mni_dataset["plans"]), "--set", "optimiser=adam"], "optimiser"),
        (["train", str(mni_dataset["plans"]), "--fold", "x"], "--fold must be"),
    ]
    for args, expected in cases:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(args)
        text = err.getvalue().strip()
        assert code == 1, (args, text)
        assert text.count("\n") == 0 and text.startswith("medseg: error:"), text
        assert expected in text, text


def test_checkpoint_holds_plain_state(mni_dataset: dict[str, Any], tmp_path: Path, tiny_settings: list[str]) -> None:
    config = load_config(TrainConfig, None, [*tiny_settings, "epochs=1", "iterations_per_epoch=2",
                                             "cache_dir=" + str(tmp_path / "cache"), "optimizer=adamw", "lr=1e-3",
                                             "loss=dice_focal", "progress=rich"])
    train(mni_dataset["plans"], "3d_fullres", [0], tmp_path / "run", config, manifest_path=mni_dataset["manifest"])
    state = torch.load(tmp_path / "run" / "fold_0" / "checkpoint_final.pt", weights_only=True)
    assert state["epoch"] == 1 and state["scheduler"]["name"] == "poly"
    assert isinstance(state["rng"]["torch"], torch.Tensor)
    assert np.isfinite(json.loads((tmp_path / "run" / "fold_0" / "metrics.jsonl").read_text())["train_loss"])


def test_fold_all_trains_one_model_on_every_case(mni_dataset: dict[str, Any], tmp_path: Path,
                                                 tiny_settings: list[str]) -> None:
    """``--fold all`` (nnU-Net's semantics): one model on every labelled case in fold_all, validated on them;
    ``predict`` takes it when no numbered fold is there, or with ``--folds all``."""
    from medseg.cli.train import _folds
    from medseg.data import load_manifest
    from medseg.inference import load_folds

    assert _folds("all") == ["all"] and _folds("0-4") == [0, 1, 2, 3, 4] and _folds("1,3") == [1, 3]
    with pytest.raises(TrainingError, match="--fold must be"):
        _folds("4-1")
    config = load_config(TrainConfig, None, [*tiny_settings, "epochs=1", "iterations_per_epoch=1",
                                             "cache_dir=" + str(tmp_path / "cache")])
    train(mni_dataset["plans"], "3d_fullres", ["all"], tmp_path / "run", config, manifest_path=mni_dataset["manifest"])
    run = tmp_path / "run" / "fold_all"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["fold_all"]
    every = sorted(c.id for c in load_manifest(mni_dataset["manifest"]).labelled_cases)
    state = torch.load(run / "checkpoint_final.pt", weights_only=True)
    assert state["fold"] == "all"
    loaded = load_folds([tmp_path / "run"])
    assert [f.fold for f in loaded] == ["all"] and load_folds([tmp_path / "run"], ["all"])[0].run_dir == run
    assert len(every) >= 2
