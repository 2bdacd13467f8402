"""Benchmark: start-up and per-case overhead of the ``medseg`` command (not a test).

Measured as a user meets them, each command run in a fresh process, the commands alternating, ``--repeats`` times,
reported as medians (and all the runs):

- ``help``: ``medseg --help``;
- ``option_error``: ``medseg predict`` with an invalid ``--device`` (fails before anything heavy is imported);
- ``convert``: ``medseg convert`` of a small NIfTI (32³ int16) to NRRD;
- ``predict``: ``medseg predict`` of ``--cases`` small real MRI cases (crops of nilearn's MNI152 T1) with a tiny
  untrained network built here, and from its ledger the per-case time split into the network (``predict``) and the
  rest (load, preprocess, export, write): the per-case overhead, as a fraction of the case time.

Writes JSON to ``benchmarks/results/startup_<time>.json`` (or ``--out``).

    python benchmarks/startup_benchmark.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MEDSEG = [sys.executable, "-m", "medseg"]


def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def _prepare(folder: Path, cases: int) -> dict[str, Path]:
    """A small NIfTI, ``cases`` MNI crops and a run folder holding an untrained tiny network on their plans."""
    import importlib.resources

    import nibabel as nib
    import numpy as np
    import torch
    import yaml

    from medseg.data import load_manifest
    from medseg.planning import compute_fingerprint, plan_experiment, save_plans
    from medseg.preprocessing import configuration_of
    from medseg.training import TrainConfig
    from medseg.training.trainer import build_model

    small = folder / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(32**3, dtype=np.int16).reshape(32, 32, 32), np.eye(4)), small)
    t1 = importlib.resources.files("nilearn.datasets") / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    wm = importlib.resources.files("nilearn.datasets") / "data" / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
    image, label = nib.load(str(t1)), nib.load(str(wm))
    data = np.asarray(image.dataobj)[::2, ::2, ::2].astype(np.int16)
    mask = (np.asarray(label.dataobj)[::2, ::2, ::2] > 127).astype(np.uint8)
    affine = image.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    (folder / "cases").mkdir()
    entries = []
    for i in range(cases):
        start = np.array([20 + i % 4, 25, 20 + i // 4])
        view = tuple(slice(s, s + n) for s, n in zip(start, (48, 56, 44), strict=True))
        moved = affine.copy()
        moved[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
        nib.save(nib.Nifti1Image(data[view], moved), folder / "cases" / f"case_{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image(mask[view], moved), folder / f"label_{i:02d}.nii.gz")
        entries.append({"id": f"case_{i:02d}", "images": [f"cases/case_{i:02d}.nii.gz"],
                        "label": f"label_{i:02d}.nii.gz"})
    manifest = {"format_version": 1, "name": "mni", "channels": [{"name": "T1", "modality": "MR"}],
                "labels": {"background": 0, "wm": 1}, "cases": entries}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    plans = plan_experiment(compute_fingerprint(load_manifest(folder / "manifest.json"), workers=1),
                            configs=("3d_fullres",), dataset_name="mni")
    save_plans(plans, folder / "plans.json")
    run = folder / "run" / "fold_0"
    run.mkdir(parents=True)
    config = TrainConfig(patch_size=[32, 32, 32], model_kwargs={"features_per_stage": [8, 16, 32, 64]},
                         device="cpu")
    model = build_model(configuration_of(plans, "3d_fullres"), config)
    (run / "plans.json").write_text(json.dumps(plans))
    import dataclasses

    (run / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config)))
    torch.save({"model": model.state_dict(), "configuration": "3d_fullres", "fold": 0}, run / "checkpoint_final.pt")
    return {"small": small, "cases": folder / "cases", "run": folder / "run"}


def _overhead(out: Path) -> dict[str, float]:
    with sqlite3.connect(out / "ledger.sqlite") as db:
        rows = [json.loads(t) for (t,) in db.execute("SELECT timings FROM cases WHERE status = 'done'")]
    total = statistics.median(r["total"] for r in rows)
    network = statistics.median(r["predict"] for r in rows)
    return {"case_seconds": total, "network_seconds": network, "overhead_seconds": total - network,
            "overhead_fraction": (total - network) / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    env = dict(os.environ)
    runs: dict[str, list[float]] = {"help": [], "option_error": [], "convert": [], "predict": []}
    overheads = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = _prepare(folder, args.cases)
        commands = {
            "help": [*MEDSEG, "--help"],
            "option_error": [*MEDSEG, "predict", "-i", "x", "-o", "y", "-m", "z", "--device", "bogus"],
            "convert": [*MEDSEG, "convert", str(files["small"]), str(folder / "small.nrrd")],
        }
        for _ in range(args.repeats):  # alternate the commands, so drifting load hits them alike
            for name, command in commands.items():
                runs[name].append(_timed(command, env))
            out = folder / "pred"
            shutil.rmtree(out, ignore_errors=True)
            runs["predict"].append(_timed([*MEDSEG, "predict", "-i", str(files["cases"]), "-o", str(out), "-m",
                                           str(files["run"]), "--device", "cpu", "--no-tta", "--progress", "plain"],
                                          env))
            overheads.append(_overhead(out))
    medians = {name: statistics.median(values) for name, values in runs.items()}
    result: dict[str, Any] = {
        "benchmark": "startup",
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count()},
        "python": platform.python_version(),
        "repeats": args.repeats,
        "cases": args.cases,
        "median_seconds": medians,
        "runs_seconds": runs,
        "predict_per_case": {k: statistics.median(o[k] for o in overheads) for k in overheads[0]},
    }
    RESULTS.mkdir(exist_ok=True)
    path = args.out or RESULTS / f"startup_{time.strftime('%Y%m%d_%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median_seconds": medians, "predict_per_case": result["predict_per_case"]}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
