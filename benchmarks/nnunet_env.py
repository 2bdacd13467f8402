"""nnU-Net v2 in its own virtual environment, for the benchmarks that compare medseg with it (not a test).

nnU-Net (``nnunetv2``) pulls torchvision, timm and a CUDA build of torch, so it never enters medseg's environment:
:func:`ensure_venv` builds ``benchmarks/.nnunet-venv`` with ``python -m venv`` and pip alone (torch pinned to the
CPU build medseg's Makefile installs, ``torch==2.13.0``, then ``nnunetv2`` with torch held at that pin), and
:func:`run_nnunet` runs Python code or nnU-Net's commands there with nnU-Net's folder variables pointing into a work
folder. :func:`write_raw_dataset` writes an nnU-Net raw dataset (``imagesTr/CASE_0000.nii.gz``,
``labelsTr/CASE.nii.gz``, ``dataset.json``) from medseg manifest cases.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = HERE / ".nnunet-venv"
PYTHON = VENV / "bin" / "python"
NNUNET_VERSION = "2.8.1"
TORCH_VERSION = "2.13.0"  # as the Makefile pins it for medseg's environment: the CPU wheel


def ensure_venv(log: Any = print, venv: Path = VENV) -> Path:
    """Build the nnU-Net environment once with pip (``torch==TORCH_VERSION``, then ``nnunetv2``); its Python.

    Torch goes in first and stays pinned while ``nnunetv2`` installs, so pip keeps the CPU build and picks the
    torchvision release made for it. A CUDA build of torch is refused (it is gigabytes, and nothing here uses it).
    """
    python = venv / "bin" / "python"
    if python.is_file() and subprocess.run([str(python), "-c", "import nnunetv2"], capture_output=True).returncode == 0:
        return python
    log(f"building {venv} (torch {TORCH_VERSION} CPU, nnunetv2 {NNUNET_VERSION}); this takes minutes")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    pinned = f"torch=={TORCH_VERSION}"
    subprocess.run([*pip, pinned], check=True)
    subprocess.run([*pip, f"nnunetv2=={NNUNET_VERSION}", pinned], check=True)
    cuda = subprocess.run([str(python), "-c", "import torch; print(torch.version.cuda)"], capture_output=True,
                          text=True, check=True).stdout.strip()
    if cuda != "None":
        raise RuntimeError(f"{venv}: pip installed a CUDA {cuda} build of torch {TORCH_VERSION}; make the CPU wheel "
                           "available to pip (e.g. --extra-index-url https://download.pytorch.org/whl/cpu)")
    return python


def nnunet_env(work: Path, threads: int = 1) -> dict[str, str]:
    """The environment nnU-Net runs in: its three folders under ``work``, one thread, one augmentation worker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    env.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"), nnUNet_n_proc_DA="1", nnUNet_compile="false",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_nnunet(work: Path, code: str | None = None, command: Sequence[str] | None = None,
               timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` or an nnU-Net ``command`` (e.g. ``nnUNetv2_plan_and_preprocess``) in its environment."""
    if code is not None:
        args = [str(PYTHON), "-c", code]
    else:
        assert command is not None
        args = [str(VENV / "bin" / command[0]), *command[1:]]
    done = subprocess.run(args, capture_output=True, text=True, env=nnunet_env(work), timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"nnU-Net failed ({' '.join(args[:3])}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def write_raw_dataset(work: Path, dataset_id: int, name: str, cases: Sequence[tuple[str, list[Path], Path | None]],
                      channels: Sequence[str], labels: dict[str, int]) -> Path:
    """An nnU-Net raw dataset (``DatasetXXX_NAME``) holding ``(case id, channel files, label file)`` cases."""
    folder = work / "nnUNet_raw" / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    n_train = 0
    for case, images, label in cases:
        target = "imagesTr" if label is not None else "imagesTs"
        for c, image in enumerate(images):
            shutil.copyfile(image, folder / target / f"{case}_{c:04d}.nii.gz")
        if label is not None:
            shutil.copyfile(label, folder / "labelsTr" / f"{case}.nii.gz")
            n_train += 1
    dataset = {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": labels,
               "numTraining": n_train, "file_ending": ".nii.gz", "name": name}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder


TRAIN_CODE = """
import json, torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
torch.set_num_threads({threads})
root = {root!r}
plans = json.load(open(root + '/nnUNetPlans.json'))
plans['continue_training'] = False  # what nnU-Net's run_training entry point adds
dataset = json.load(open(root + '/dataset.json'))
trainer = nnUNetTrainer(plans, {configuration!r}, {fold!r}, dataset, device=torch.device('cpu'))
trainer.num_epochs = {epochs}
trainer.num_iterations_per_epoch = {iterations}
trainer.num_val_iterations_per_epoch = {val_iterations}
trainer.run_training()
print(trainer.output_folder)
"""

PREDICT_CODE = """
import torch, time
torch.set_num_threads({threads})
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
start = time.perf_counter()
p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring={mirroring},
                    perform_everything_on_device=False, device=torch.device('cpu'), allow_tqdm=False)
p.initialize_from_trained_model_folder({folder!r}, use_folds={folds!r}, checkpoint_name='checkpoint_final.pth')
p.predict_from_files({source!r}, {out!r}, save_probabilities=False, overwrite=True, num_processes_preprocessing=1,
                     num_processes_segmentation_export=1)
print('seconds', time.perf_counter() - start)
"""


def train_nnunet(work: Path, dataset: str, configuration: str, fold: str | int, iterations: int, epochs: int = 1,
                 val_iterations: int = 2, threads: int = 1) -> Path:
    """Train nnU-Net's ``nnUNetTrainer`` briefly on the CPU; returns its results folder (``fold_K``'s parent)."""
    root = str(work / "nnUNet_preprocessed" / dataset)
    done = run_nnunet(work, TRAIN_CODE.format(threads=threads, root=root, configuration=configuration, fold=fold,
                                              epochs=epochs, iterations=iterations, val_iterations=val_iterations))
    return Path(done.stdout.strip().splitlines()[-1]).parent


def predict_nnunet(work: Path, folder: Path, source: Path, out: Path, folds: Sequence[str | int],
                   mirroring: bool = True, threads: int = 1) -> float:
    """nnU-Net's ``nnUNetPredictor`` on every image of ``source``; returns its wall time."""
    done = run_nnunet(work, PREDICT_CODE.format(threads=threads, mirroring=mirroring, folder=str(folder),
                                                folds=[f if f == "all" else int(f) for f in folds],
                                                source=str(source), out=str(out)))
    return float(done.stdout.strip().splitlines()[-1].split()[-1])


def machine() -> dict[str, Any]:
    """The machine the numbers come from."""
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.machine(),
                            "cpu_count": os.cpu_count(), "torch": torch.__version__,
                            "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def agreement(a: Any, b: Any, classes: Sequence[int]) -> dict[str, Any]:
    """Fraction of identical voxels and Dice per class between two label maps."""

    dice = {}
    for c in classes:
        x, y = a == c, b == c
        total = int(x.sum() + y.sum())
        dice[str(c)] = 1.0 if total == 0 else float(2 * (x & y).sum() / total)
    return {"identical_fraction": float((a == b).mean()), "dice": dice, "voxels": int(a.size)}
