"""Benchmark: nnU-Net v2 models run in medseg, and medseg models run in nnU-Net (not a test).

Builds nnU-Net v2 in its own virtual environment (``benchmarks/nnunet_env.py``), then on real scans:

1. **nnU-Net → medseg, CT**: the spleen CT of ``../shared/data/ivadomed_msd_spleen`` as an nnU-Net raw dataset;
   ``nnUNetv2_plan_and_preprocess`` plans it, ``nnUNetTrainer`` trains ``3d_fullres`` fold ``all`` for a few
   iterations on the CPU; nnU-Net's ``nnUNetPredictor`` and ``medseg predict -m FOLDER`` predict the scan (mirroring
   on) and the label maps are compared.
2. **nnU-Net → medseg, MRI**: the same with the MNI152 grey/white-matter task nilearn ships (``medseg dataset
   demo``: training subjects for nnU-Net, held-out test subjects predicted by both).
3. **medseg → nnU-Net**: a medseg run trained briefly on the MNI task, exported with ``medseg export-nnunet``,
   predicted by nnU-Net's ``nnUNetPredictor`` and by medseg (from the run folder) on the test subjects.

Writes ``benchmarks/results/nnunet_interop.json``: per comparison and case the fraction of identical voxels and the
Dice of each class between the two tools' label maps, the training budget, the machine and the versions.

    python benchmarks/nnunet_interop.py               # everything (builds the environment the first time)
    python benchmarks/nnunet_interop.py --setup       # only build benchmarks/.nnunet-venv
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nnunet_env as env

RESULTS = env.HERE / "results"


def medseg(*args: str) -> float:
    """Run a medseg command (one thread); returns its wall time."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True,
                          env={**env.nnunet_env(Path("/nonexistent")), "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"medseg {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def compare(ours: Path, theirs: Path, classes: list[int]) -> dict[str, Any]:
    out = {}
    for path in sorted(theirs.glob("*.nii.gz")):
        case = path.name[: -len(".nii.gz")]
        mine = next(p for p in ours.glob("*.nii.gz") if p.name.startswith(case))
        a = np.asarray(nib.load(str(mine)).dataobj)
        b = np.asarray(nib.load(str(path)).dataobj)
        if a.shape != b.shape:
            raise RuntimeError(f"{case}: shapes differ {a.shape} vs {b.shape}")
        out[case] = env.agreement(a, b, classes)
    return out


def nnunet_to_medseg(work: Path, dataset_id: int, name: str, cases: list[tuple[str, list[Path], Path | None]],
                     channels: list[str], labels: dict[str, int], iterations: int, test_cases: list[Path]
                     ) -> dict[str, Any]:
    raw = env.write_raw_dataset(work, dataset_id, name, cases, channels, labels)
    dataset = raw.name
    env.run_nnunet(work, command=["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "3d_fullres",
                                  "-np", "1", "-npfp", "1", "--verify_dataset_integrity"])
    start = time.perf_counter()
    folder = env.train_nnunet(work, dataset, "3d_fullres", "all", iterations)
    train_seconds = time.perf_counter() - start
    source = work / f"{name}_test"
    source.mkdir(exist_ok=True)
    for i, image in enumerate(test_cases):
        shutil.copyfile(image, source / f"case{i:02d}_0000.nii.gz")
    nn_out, ms_out = work / f"{name}_pred_nnunet", work / f"{name}_pred_medseg"
    nn_seconds = env.predict_nnunet(work, folder, source, nn_out, ["all"])
    ms_seconds = medseg("predict", "-i", str(source), "-o", str(ms_out), "-m", str(folder), "--device", "cpu",
                        "--progress", "plain")
    plans = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]
    return {
        "dataset": name, "channels": channels, "labels": labels, "training_cases": len(cases),
        "nnunet_training": {"configuration": "3d_fullres", "fold": "all", "epochs": 1, "iterations": iterations,
                            "patch_size": plans["patch_size"], "batch_size": plans["batch_size"],
                            "spacing": plans["spacing"], "normalization": plans["normalization_schemes"],
                            "seconds": round(train_seconds, 1)},
        "prediction": {"mirroring": True, "step": 0.5, "nnunet_seconds_one_run": round(nn_seconds, 1),
                       "medseg_seconds_one_run": round(ms_seconds, 1)},
        "cases": compare(ms_out, nn_out, [v for v in labels.values() if v]),
    }


def medseg_to_nnunet(work: Path, demo: Path, iterations: int) -> dict[str, Any]:
    medseg("plan", str(demo / "dataset.json"), "-o", str(demo / "plans.json"), "--configs", "3d_fullres")
    run = work / "medseg_run"
    start = time.perf_counter()
    medseg("train", str(demo / "plans.json"), "--config", "3d_fullres", "--fold", "0", "--out", str(run),
           "--preset", "cpu_small", "--epochs", "1", "--iters-per-epoch", str(iterations), "--set", "val_iterations=1",
           "--set", "final_validation=false", "--set", "num_workers=0", "--set", "patch_size=null")
    train_seconds = time.perf_counter() - start
    exported = work / "medsegTrainer__medsegPlans__3d_fullres"
    medseg("export-nnunet", str(run), "-o", str(exported))
    source = work / "export_test"
    source.mkdir(exist_ok=True)
    for image in sorted((demo / "imagesTs").glob("*.nii.gz")):
        shutil.copyfile(image, source / image.name.replace(".nii.gz", "_0000.nii.gz"))
    nn_out, ms_out = work / "export_pred_nnunet", work / "export_pred_medseg"
    env.predict_nnunet(work, exported, source, nn_out, [0])
    medseg("predict", "-i", str(source), "-o", str(ms_out), "-m", str(run), "--device", "cpu", "--progress", "plain")
    return {"dataset": "MNI152 tissue (medseg dataset demo)", "medseg_training": {
        "configuration": "3d_fullres", "fold": 0, "preset": "cpu_small", "epochs": 1, "iterations": iterations,
        "seconds": round(train_seconds, 1)}, "cases": compare(ms_out, nn_out, [1, 2])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true", help="Only build the nnU-Net environment.")
    parser.add_argument("--iterations", type=int, default=10, help="Training iterations per model (default 10).")
    parser.add_argument("--work", type=Path, default=env.HERE / ".work" / "interop", help="Scratch folder.")
    parser.add_argument("--shared", type=Path, default=env.REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=RESULTS / "nnunet_interop.json")
    args = parser.parse_args()
    env.ensure_venv()
    if args.setup:
        return
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    version = env.run_nnunet(work, "import importlib.metadata as m; print(m.version('nnunetv2'))").stdout.strip()
    results: dict[str, Any] = {"nnunet_version": version, "machine": env.machine(), "comparisons": []}

    spleen = args.shared / "ivadomed_msd_spleen"
    image, label = spleen / "sub-spleen2_ct.nii.gz", spleen / "sub-spleen2_ct_seg-manual.nii.gz"
    if image.is_file() and label.is_file():
        print("spleen CT: nnU-Net trains, both predict", flush=True)
        results["comparisons"].append({"direction": "nnU-Net model run by medseg", **nnunet_to_medseg(
            work, 501, "Spleen", [("spleen_000", [image], label)], ["CT"], {"background": 0, "spleen": 1},
            args.iterations, [image])})

    demo = work / "demo"
    medseg("dataset", "demo", str(demo), "--n-train", "4", "--n-test", "2", "--spacing", "3")
    from medseg.data import load_manifest

    manifest = load_manifest(demo / "dataset.json")
    cases = [(c.id.replace("-", "_"), manifest.image_paths(c), manifest.label_path(c)) for c in manifest.cases]
    tests = sorted((demo / "imagesTs").glob("*.nii.gz"))
    print("MNI152 tissue: nnU-Net trains, both predict", flush=True)
    results["comparisons"].append({"direction": "nnU-Net model run by medseg", **nnunet_to_medseg(
        work, 502, "MNITissue", cases, ["T1"], {"background": 0, "grey_matter": 1, "white_matter": 2},
        args.iterations, tests)})
    print("MNI152 tissue: medseg trains and exports, both predict", flush=True)
    results["comparisons"].append({"direction": "medseg model exported and run by nnU-Net",
                                   **medseg_to_nnunet(work, demo, args.iterations)})
    everything = [c for comp in results["comparisons"] for c in comp["cases"].values()]
    results["summary"] = {
        "cases": len(everything),
        "min_identical_fraction": min(c["identical_fraction"] for c in everything),
        "min_dice": min(d for c in everything for d in c["dice"].values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
