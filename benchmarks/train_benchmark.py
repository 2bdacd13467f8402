"""Training step: medseg against nnU-Net v2, side by side, alternating (not a test).

Both run the same network (nnU-Net's plain-convolution U-Net of a 3d_fullres plan: kernels 3, strides from the
patch, features 32..320, deep supervision), the same loss (Dice + cross-entropy over the deep-supervision outputs,
nnU-Net's weights), the same optimiser (SGD, Nesterov, momentum 0.99, lr 1e-2, weight decay 3e-5, gradient clipping
at 12) on the same batch and patch. Each tool runs its own code for the step:

* medseg: :meth:`medseg.training.trainer.FoldTrainer.train_step` with the network, loss and optimiser the trainer
  builds (``build_model``, ``DeepSupervisionLoss(build_loss("dice_ce"))``), batches as medseg's loader yields them
  (``target`` one label map; the deep-supervision targets are made in the step);
* nnU-Net: ``nnUNetTrainer.train_step`` of ``nnunetv2`` with the network, loss and optimiser ``nnUNetTrainer``
  builds from a plans dictionary, batches as nnU-Net's loader yields them (one target per deep-supervision output,
  made in its augmentation workers, so not timed here).

Each tool runs in its own warm process (nnU-Net in ``benchmarks/.nnunet-venv``, see ``nnunet_env.py``); the
coordinator asks them in turn for ``--steps`` steps, ``--rounds`` times, so both see the same machine state, and
reports per round the median step time and the ratio medseg / nnU-Net, then the median over rounds. The data are a
fixed random image and a label map of spheres (the step's cost does not depend on the values). Data loading is left
out: medseg's trainer records its loader wait per epoch (``data_wait_fraction`` in ``progress.jsonl``).

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_benchmark.py --patch 64 64 64 --batch 2 --rounds 5
    # without nnU-Net's environment (built by ``benchmarks/nnunet_env.py``), only medseg is timed

Writes ``benchmarks/results/train_step_cpu.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NNUNET_PYTHON = HERE / ".nnunet-venv" / "bin" / "python"


def plan(patch: list[int]) -> dict[str, Any]:
    """nnU-Net's 3d_fullres topology for ``patch`` at isotropic spacing: halve every axis while it stays >= 8
    (at most 5 times), 3x3x3 kernels, features ``min(32 * 2**s, 320)``."""
    strides = [[1] * len(patch)]
    size = list(patch)
    while len(strides) < 6:
        step = [2 if s // 2 >= 4 and s % 2 == 0 else 1 for s in size]
        if not any(v == 2 for v in step):
            break
        strides.append(step)
        size = [s // v for s, v in zip(size, step, strict=True)]
    n = len(strides)
    return {"kernel_sizes": [[3] * len(patch)] * n, "strides": strides,
            "features_per_stage": [min(32 * 2**s, 320) for s in range(n)], "n_conv_per_stage": [2] * n,
            "n_conv_per_stage_decoder": [2] * (n - 1)}


def make_batch(patch: list[int], batch: int, classes: int, seed: int) -> tuple[Any, Any]:
    """A fixed random image and a label map of ``classes - 1`` spheres per sample."""
    import torch

    g = torch.Generator().manual_seed(seed)
    data = torch.randn((batch, 1, *patch), generator=g)
    grids = torch.meshgrid(*[torch.arange(p, dtype=torch.float32) for p in patch], indexing="ij")
    target = torch.zeros((batch, 1, *patch), dtype=torch.long)
    for b in range(batch):
        for c in range(1, classes):
            centre = [float(torch.randint(p // 4, 3 * p // 4, (1,), generator=g)) for p in patch]
            r2 = sum((x - m) ** 2 for x, m in zip(grids, centre, strict=True))
            target[b, 0][r2 <= (min(patch) / 5) ** 2] = c
    return data, target


# Workers --------------------------------------------------------------------------------------------------------


def medseg_worker(spec: dict[str, Any]) -> Any:
    """A step function running medseg's trainer step on medseg's network, loss and optimiser."""
    import torch

    from medseg.models import create_model_from_plans
    from medseg.training.config import TrainConfig
    from medseg.training.loss import DeepSupervisionLoss, build_loss
    from medseg.training.trainer import FoldTrainer

    config = TrainConfig()
    torch.manual_seed(0)
    entry = {"name": "nnunet", "spatial_dims": len(spec["patch"]), "in_channels": 1,
             "out_channels": spec["classes"], "kwargs": spec["plan"]}
    model = create_model_from_plans(entry, deep_supervision=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                                weight_decay=config.weight_decay)
    # the trainer's own train_step and training_loss, on the parts FoldTrainer.__init__ would build from plans
    trainer = FoldTrainer.__new__(FoldTrainer)
    trainer.__dict__.update(
        device=torch.device("cpu"), optimizer=optimizer, network=model, model=model, objective=None, hooks=[],
        loss=DeepSupervisionLoss(build_loss("dice_ce", batch_dice=False), getattr(model, "loss_weights", ())),
        scaler=torch.amp.GradScaler("cuda", enabled=False), config=config, amp_dtype=None)
    data, target = make_batch(spec["patch"], spec["batch"], spec["classes"], spec["seed"])
    batch = {"data": data, "target": target}
    return lambda: trainer.train_step(batch), sum(p.numel() for p in model.parameters())


def nnunet_plans(spec: dict[str, Any]) -> dict[str, Any]:
    """A minimal nnU-Net v2 plans dictionary with one 3d_fullres configuration of the benchmark's plan."""
    p = spec["plan"]
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": len(p["strides"]), "features_per_stage": p["features_per_stage"],
                            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": p["kernel_sizes"],
                            "strides": p["strides"], "n_conv_per_stage": p["n_conv_per_stage"],
                            "n_conv_per_stage_decoder": p["n_conv_per_stage_decoder"], "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": spec["batch"], "patch_size": spec["patch"], "median_image_size_in_voxels": spec["patch"],
        "spacing": [1.0] * len(spec["patch"]), "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
        "resampling_fn_seg_kwargs": dict(resampling, is_seg=True, order=1),
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": dict(resampling, order=1), "architecture": arch, "batch_dice": False}
    return {"dataset_name": "Dataset999_TrainBenchmark", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [1.0] * len(spec["patch"]),
            "original_median_shape_after_transp": spec["patch"], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": list(range(len(spec["patch"]))),
            "transpose_backward": list(range(len(spec["patch"]))), "configurations": {"3d_fullres": configuration},
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "std": 1.0, "median": 0.0,
                                                                  "min": -5.0, "max": 5.0,
                                                                  "percentile_00_5": -3.0,
                                                                  "percentile_99_5": 3.0}},
            "continue_training": False}


def nnunet_worker(spec: dict[str, Any]) -> Any:
    """A step function running ``nnUNetTrainer.train_step`` on the network, loss and optimiser it builds."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    labels = {"background": 0, **{f"class{c}": c for c in range(1, spec["classes"])}}
    dataset_json = {"channel_names": {"0": "MR"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    trainer = nnUNetTrainer(nnunet_plans(spec), "3d_fullres", 0, dataset_json, device=torch.device("cpu"))
    torch.manual_seed(0)
    trainer.num_input_channels = 1
    trainer.network = trainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, trainer.label_manager.num_segmentation_heads,
        trainer.enable_deep_supervision).to(trainer.device)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    data, target = make_batch(spec["patch"], spec["batch"], spec["classes"], spec["seed"])
    # nnU-Net's loader delivers one target per deep-supervision output (nearest-neighbour downsampling, in its
    # augmentation workers)
    scales = trainer._get_deep_supervision_scales()
    targets = [target if all(s == 1 for s in scale) else
               torch.nn.functional.interpolate(target.float(), size=[round(p * s) for p, s in
                                                                     zip(spec["patch"], scale, strict=True)],
                                               mode="nearest").long()
               for scale in scales]
    batch = {"data": data, "target": targets}
    return lambda: trainer.train_step(batch), sum(p.numel() for p in trainer.network.parameters())


def serve(kind: str) -> None:
    """Worker loop: read the spec, then answer each ``steps N`` line with N step times (JSON, one line)."""
    import torch

    spec = json.loads(sys.stdin.readline())
    torch.set_num_threads(spec["threads"])
    step, parameters = (medseg_worker if kind == "medseg" else nnunet_worker)(spec)
    step()  # first step: allocations, lazy initialisation
    print(json.dumps({"ready": True, "parameters": parameters, "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        n = int(line.split()[1])
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        print(json.dumps({"times": times}), flush=True)


# Coordinator ----------------------------------------------------------------------------------------------------


class Worker:
    """One warm worker process."""

    def __init__(self, kind: str, python: Path, spec: dict[str, Any]) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]),
                   PYTHONWARNINGS="ignore", nnUNet_compile="false")
        if kind == "nnunet":  # nnU-Net warns about its three folders when unset; nothing is written there
            env.update({k: str(HERE / ".work" / "train_benchmark" / k)
                        for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
        self.kind = kind
        self.process = subprocess.Popen([str(python), str(Path(__file__).resolve()), "--worker", kind],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                        cwd=str(REPO))
        self.info = self._ask(json.dumps(spec))

    def _ask(self, line: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        while True:
            answer = self.process.stdout.readline()
            if not answer:
                raise RuntimeError(f"the {self.kind} worker stopped (exit {self.process.wait()})")
            if answer.startswith("{"):
                return json.loads(answer)

    def steps(self, n: int) -> list[float]:
        return list(self._ask(f"steps {n}")["times"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def machine() -> dict[str, Any]:
    """The machine the numbers come from."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg()), "platform": platform.platform()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["medseg", "nnunet"], help=argparse.SUPPRESS)
    parser.add_argument("--patch", type=int, nargs="+", default=[64, 64, 64], help="Patch size (default 64 64 64).")
    parser.add_argument("--batch", type=int, default=2, help="Batch size (default 2).")
    parser.add_argument("--classes", type=int, default=3, help="Classes with background (default 3).")
    parser.add_argument("--steps", type=int, default=5, help="Steps per round and tool (default 5).")
    parser.add_argument("--rounds", type=int, default=5, help="Alternating rounds (default 5).")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="Torch threads of each tool.")
    parser.add_argument("--nnunet-python", type=Path, default=NNUNET_PYTHON,
                        help="Python of nnU-Net's environment (default benchmarks/.nnunet-venv).")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "train_step_cpu.json")
    args = parser.parse_args()
    if args.worker:
        serve(args.worker)
        return

    spec = {"patch": args.patch, "batch": args.batch, "classes": args.classes, "seed": 0, "threads": args.threads,
            "plan": plan(args.patch)}
    result: dict[str, Any] = {"benchmark": "train_step", "machine": machine(), "spec": spec, "steps": args.steps,
                              "rounds": args.rounds, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    workers = {"medseg": Worker("medseg", Path(sys.executable), spec)}
    if args.nnunet_python.is_file():
        workers["nnunet"] = Worker("nnunet", args.nnunet_python, spec)
    else:
        print(f"nnU-Net's environment not found at {args.nnunet_python}: timing medseg only")
    result["parameters"] = {k: w.info["parameters"] for k, w in workers.items()}
    result["torch"] = {k: w.info["torch"] for k, w in workers.items()}
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = list(workers) if r % 2 == 0 else list(reversed(workers))
        times = {kind: workers[kind].steps(args.steps) for kind in order}
        record: dict[str, Any] = {"order": order, "times_s": times,
                                  "median_s": {k: statistics.median(v) for k, v in times.items()}}
        if "nnunet" in times:
            record["ratio_medseg_over_nnunet"] = record["median_s"]["medseg"] / record["median_s"]["nnunet"]
        rounds.append(record)
        shown = ", ".join(f"{k} {v:.3f} s" for k, v in record["median_s"].items())
        print(f"round {r + 1}/{args.rounds}: {shown}" + (f", ratio {record['ratio_medseg_over_nnunet']:.3f}"
                                                          if "nnunet" in times else ""), flush=True)
    for worker in workers.values():
        worker.close()
    result["rounds_detail"] = rounds
    result["median_step_s"] = {k: statistics.median(r["median_s"][k] for r in rounds) for k in workers}
    if "nnunet" in workers:
        result["median_ratio_medseg_over_nnunet"] = statistics.median(r["ratio_medseg_over_nnunet"] for r in rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("parameters", "median_step_s") if k in result}
                     | {"ratio": result.get("median_ratio_medseg_over_nnunet")}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
