"""Benchmark: output-space domain adaptation on real MRI, source-only against AdaptSegNet and MADA (not a test).

Data: the cervical spinal cord of ``../shared/data/sct_spine`` (Spinal Cord Toolbox test data): the T2 image with its
manual cord mask is the labelled source, the T1 image (same subject, other contrast) the unlabelled target; the T1
mask is read only to score. Both are reoriented to R, P, S (the 2D plan slices isotropic data along the last stored
axis, as nnU-Net does: axial slices) and planned as ``2d`` from the source. For every seed (``--seeds``) three
trainings of equal budget run one after the other: the source alone, AdaptSegNet (one discriminator on the main
output) and MADA (discriminators on the main output pooled by 1, 2 and 4), each followed by a prediction of the whole
T1 and T2 volumes (no test-time augmentation). Reported: Dice of the cord on T1 (target) and T2 (source) per run,
their medians over the seeds, the training seconds, the settings, the machine and the versions.

    python benchmarks/domain_adaptation_benchmark.py --seeds 1 2 3
    python benchmarks/domain_adaptation_benchmark.py --epochs 4 --iterations 25   # the test's budget
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def prepare(folder: Path, root: Path) -> None:
    """Reoriented images, the source and target manifests and the source's ``2d`` plans under ``root``."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    from medseg.data import load_manifest
    from medseg.planning import compute_fingerprint, plan_experiment, save_fingerprint, save_plans

    root.mkdir(parents=True, exist_ok=True)
    for name, out in (("t2_t2", "t2"), ("t2_t2_seg-manual", "t2_cord"), ("t1_t1w", "t1"),
                      ("t1_t1w_seg-manual", "t1_cord")):
        image = nib.load(folder / f"{name}.nii.gz")
        moved = image.as_reoriented(ornt_transform(io_orientation(image.affine), axcodes2ornt(("R", "P", "S"))))
        nib.save(nib.Nifti1Image(np.asarray(moved.dataobj), moved.affine), root / f"{out}.nii.gz")
    common = {"format_version": 1, "channels": [{"name": "MR", "modality": "MR"}],
              "labels": {"background": 0, "cord": 1}}
    source = {**common, "name": "cord_t2", "splits": [{"train": ["t2"], "val": ["t2_copy"]}],
              "cases": [{"id": "t2", "images": ["t2.nii.gz"], "label": "t2_cord.nii.gz"},
                        {"id": "t2_copy", "images": ["t2.nii.gz"], "label": "t2_cord.nii.gz"}]}
    target = {**common, "name": "cord_t1", "cases": [{"id": "t1", "images": ["t1.nii.gz"]}]}
    (root / "source.json").write_text(json.dumps(source))
    (root / "target.json").write_text(json.dumps(target))
    fingerprint = compute_fingerprint(load_manifest(root / "source.json"), workers=1)
    save_fingerprint(fingerprint, root / "fingerprint.json")
    save_plans(plan_experiment(fingerprint, configs=("2d",), dataset_name="cord"), root / "plans.json")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def main() -> None:
    from medseg.config import load_config
    from medseg.inference import Predictor, load_folds
    from medseg.io import load_image
    from medseg.training import TrainConfig, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "sct_spine")
    parser.add_argument("--seeds", type=int, nargs="+", default=[12345])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=25, help="iterations per epoch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--features", default="[8, 16, 32, 64]")
    parser.add_argument("--weight", type=float, default=0.01, help="λ of every adversarial term")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: no such folder (the sct_spine test data)")

    work = Path(tempfile.mkdtemp(prefix="medseg_da_"))
    try:
        root = work / "data"
        prepare(args.data, root)
        t1_cord = np.asarray(nib.load(root / "t1_cord.nii.gz").dataobj) > 0
        t2_cord = np.asarray(nib.load(root / "t2_cord.nii.gz").dataobj) > 0
        settings = [f"epochs={args.epochs}", f"iterations_per_epoch={args.iterations}", "val_iterations=1",
                    "patch_size=[48, 48]", f"batch_size={args.batch_size}",
                    f"model_kwargs={{features_per_stage: {args.features}}}", "optimizer=adamw", "lr=0.003",
                    "num_workers=0", "device=cpu", "progress=plain", "final_validation=false",
                    "preprocess_workers=1", f"cache_dir={work / 'cache'}"]
        adapt = [f"domain_adaptation.target_manifest={root / 'target.json'}",
                 f"domain_adaptation.weights=[{args.weight}]", "domain_adaptation.levels=1",
                 "domain_adaptation.features=16"]
        methods = {"source_only": [], "adaptsegnet": adapt, "mada": [*adapt, "domain_adaptation.method=mada"]}
        runs: list[dict[str, Any]] = []
        for seed in args.seeds:
            for name, extra in methods.items():
                config = load_config(TrainConfig, None, [*settings, f"seed={seed}", *extra])
                out = work / f"{name}_{seed}"
                start = time.perf_counter()
                with open(work / f"{name}_{seed}.log", "w") as log:
                    train(root / "plans.json", "2d", [0], out, config, manifest_path=root / "source.json",
                          stream=log)
                seconds = time.perf_counter() - start
                predictor = Predictor(load_folds([out], [0]), tta=False, device="cpu")
                target = predictor.predict(load_image(root / "t1.nii.gz")).labels.numpy()[0] > 0
                source = predictor.predict(load_image(root / "t2.nii.gz")).labels.numpy()[0] > 0
                run = {"seed": seed, "method": name, "target_dice": dice(target, t1_cord),
                       "source_dice": dice(source, t2_cord), "train_s": seconds}
                runs.append(run)
                print(json.dumps(run), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = {}
    for name in methods:
        mine = [r for r in runs if r["method"] == name]
        summary[name] = {"target_dice_median": statistics.median(r["target_dice"] for r in mine),
                         "source_dice_median": statistics.median(r["source_dice"] for r in mine),
                         "train_s_median": statistics.median(r["train_s"] for r in mine)}
    import monai

    import medseg

    report = {
        "benchmark": "domain_adaptation_benchmark.py",
        "data": "sct_spine: T2 + manual cord mask (source), T1 (target, mask for scoring only)",
        "device": "cpu", "device_name": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "monai": monai.__version__, "medseg": medseg.__version__,
                     "python": platform.python_version()},
        "budget": {"epochs": args.epochs, "iterations_per_epoch": args.iterations, "batch_size": args.batch_size,
                   "features_per_stage": args.features, "patch_size": [48, 48], "adversarial_weight": args.weight},
        "seeds": args.seeds, "runs": runs, "summary": summary,
    }
    out = args.out or RESULTS / f"domain_adaptation_cpu_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
