"""Benchmark: medseg's and nnU-Net's accuracy with the same plan, budget and data (not a test).

One dataset for both tools: the grey/white-matter task made from the MNI152 MRI that nilearn ships (``medseg dataset
demo``: training subjects, held-out test subjects). nnU-Net v2 (in its own environment, ``benchmarks/nnunet_env.py``)
plans it with ``nnUNetv2_plan_and_preprocess``; medseg plans it too, and trains with nnU-Net's patch and batch size
(``--set patch_size=… batch_size=…``; the topology is the same by the same rules, checked and recorded). Both train
``3d_fullres`` on every training case (fold ``all``) for the same number of iterations on the CPU, predict the test
subjects with mirroring, and **one evaluator** (``medseg evaluate``) scores both prediction folders against the same
references. Each repetition (``--runs``) trains both again.

Writes ``benchmarks/results/accuracy_vs_nnunet.json``: per run and tool the Dice per class (mean over test subjects)
and the training time, the plans of both, the budget and the machine.

    python benchmarks/accuracy_vs_nnunet.py --iterations 15 --runs 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nnunet_env as env
from nnunet_interop import medseg

RESULTS = env.HERE / "results"
LABELS = {"background": 0, "grey_matter": 1, "white_matter": 2}


def evaluate(pred: Path, reference: Path, out: Path) -> dict[str, float]:
    medseg("evaluate", "--pred", str(pred), "--ref", str(reference), "-o", str(out), "--metrics", "dice")
    summary = json.loads((out / "summary.json").read_text())
    return {name: float(summary["mean"][str(value)]["Dice"]) for name, value in LABELS.items() if value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=15, help="Training iterations (one epoch; default 15).")
    parser.add_argument("--runs", type=int, default=1, help="Repetitions (each trains both tools).")
    parser.add_argument("--n-train", type=int, default=6)
    parser.add_argument("--n-test", type=int, default=4)
    parser.add_argument("--spacing", type=float, default=3.0)
    parser.add_argument("--work", type=Path, default=env.HERE / ".work" / "accuracy")
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy_vs_nnunet.json")
    args = parser.parse_args()
    env.ensure_venv()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    demo = work / "demo"
    medseg("dataset", "demo", str(demo), "--n-train", str(args.n_train), "--n-test", str(args.n_test), "--spacing",
           f"{args.spacing:g}")
    from medseg.data import load_manifest

    manifest = load_manifest(demo / "dataset.json")
    cases = [(c.id.replace("-", "_"), manifest.image_paths(c), manifest.label_path(c)) for c in manifest.cases]
    raw = env.write_raw_dataset(work, 503, "MNITissue", cases, ["T1"], LABELS)
    env.run_nnunet(work, command=["nnUNetv2_plan_and_preprocess", "-d", "503", "-c", "3d_fullres", "-np", "1",
                                  "-npfp", "1"])
    nn_plans = json.loads((work / "nnUNet_preprocessed" / raw.name / "nnUNetPlans.json").read_text())
    nn_cfg = nn_plans["configurations"]["3d_fullres"]
    medseg("plan", str(demo / "dataset.json"), "-o", str(demo / "plans.json"), "--configs", "3d_fullres")
    ms_cfg = json.loads((demo / "plans.json").read_text())["configurations"]["3d_fullres"]
    test = load_manifest(demo / "test.json")
    source = work / "test_images"
    source.mkdir()
    for case in test.cases:
        shutil.copyfile(test.image_paths(case)[0], source / f"{case.id}_0000.nii.gz")
    runs: list[dict[str, Any]] = []
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}: nnU-Net", flush=True)
        start = time.perf_counter()
        folder = env.train_nnunet(work, raw.name, "3d_fullres", "all", args.iterations)
        nn_train = time.perf_counter() - start
        nn_pred = work / f"run{run}_nnunet"
        env.predict_nnunet(work, folder, source, nn_pred, ["all"])
        nn_scores = evaluate(nn_pred, demo / "test.json", work / f"run{run}_nnunet_eval")
        shutil.rmtree(folder)
        print(f"run {run + 1}/{args.runs}: medseg", flush=True)
        ms_run = work / f"run{run}_medseg_model"
        start = time.perf_counter()
        medseg("train", str(demo / "plans.json"), "--config", "3d_fullres", "--fold", "all", "--out", str(ms_run),
               "--epochs", "1", "--iters-per-epoch", str(args.iterations), "--device", "cpu",
               "--set", f"patch_size={nn_cfg['patch_size']}", "--set", f"batch_size={nn_cfg['batch_size']}",
               "--set", "num_workers=0", "--set", "val_iterations=2", "--set", "final_validation=false",
               "--set", f"seed={12345 + run}", "--set", "progress=plain", "--set", "amp=false")
        ms_train = time.perf_counter() - start
        ms_pred = work / f"run{run}_medseg"
        medseg("predict", "-i", str(demo / "test.json"), "-o", str(ms_pred), "-m", str(ms_run), "--device", "cpu",
               "--progress", "plain")
        ms_scores = evaluate(ms_pred, demo / "test.json", work / f"run{run}_medseg_eval")
        runs.append({"run": run, "nnunet": {"dice": nn_scores, "train_seconds": round(nn_train, 1)},
                     "medseg": {"dice": ms_scores, "train_seconds": round(ms_train, 1)}})
        print(json.dumps(runs[-1]), flush=True)
    version = env.run_nnunet(work, "import importlib.metadata as m; print(m.version('nnunetv2'))").stdout.strip()
    same_topology = (ms_cfg["topology"]["kernel_sizes"] == nn_cfg["architecture"]["arch_kwargs"]["kernel_sizes"]
                     and ms_cfg["topology"]["strides"] == nn_cfg["architecture"]["arch_kwargs"]["strides"])
    mean = {tool: {name: sum(r[tool]["dice"][name] for r in runs) / len(runs) for name in LABELS if LABELS[name]}
            for tool in ("nnunet", "medseg")}
    results = {
        "dataset": {"name": "MNI152 grey/white matter (medseg dataset demo)", "n_train": args.n_train,
                    "n_test": args.n_test, "spacing_mm": args.spacing},
        "budget": {"configuration": "3d_fullres", "fold": "all", "epochs": 1, "iterations": args.iterations,
                   "patch_size": nn_cfg["patch_size"], "batch_size": nn_cfg["batch_size"], "device": "cpu",
                   "mirroring_at_test": True},
        "plans": {"nnunet": {"patch_size": nn_cfg["patch_size"], "spacing": nn_cfg["spacing"],
                             "kernel_sizes": nn_cfg["architecture"]["arch_kwargs"]["kernel_sizes"],
                             "strides": nn_cfg["architecture"]["arch_kwargs"]["strides"]},
                  "medseg": {"planned_patch_size": ms_cfg["patch_size"], "spacing": ms_cfg["spacing"],
                             "kernel_sizes": ms_cfg["topology"]["kernel_sizes"],
                             "strides": ms_cfg["topology"]["strides"]},
                  "same_topology": same_topology},
        "evaluator": "medseg evaluate (Dice per class, mean over the test subjects)",
        "runs": runs,
        "mean_dice": mean,
        "nnunet_version": version,
        "machine": env.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(mean))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
