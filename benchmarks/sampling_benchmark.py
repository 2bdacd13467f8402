"""Benchmark drawing samples through the sliding window: seconds of one draw against one deterministic prediction.

For each stochastic network — the Probabilistic U-Net and the Hierarchical Probabilistic U-Net at their paper
configurations (2D, LIDC: 1 channel, 2 classes) and a U-Net with dropout (Monte-Carlo dropout; ``--unet-features``)
— a random picture of ``--size`` is predicted by :class:`medseg.inference.SlidingWindowPredictor` (patch
``--patch``, step 0.5, no mirroring; 2D networks run as one-slice 3D windows, as ``medseg predict`` runs them),
alternating a deterministic pass and a draw (``predict(..., sample=s)``), ``--repeats`` times each. Reported per
network: the median seconds of each, and their ratio (what one of the N draws of ``medseg predict --samples N``
costs relative to one ordinary prediction). Written to JSON with the device, threads and versions.

Example::

    python benchmarks/sampling_benchmark.py --size 256 256 --patch 128 128 --repeats 3 \\
        --out benchmarks/results/sampling_cpu_256x256.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from medseg.inference import SlidingWindowPredictor
from medseg.models import count_parameters, create_model, get_model_info
from medseg.models.adapters import volume_windows


def _networks(unet_features: list[int]) -> list[tuple[str, dict[str, Any]]]:
    paper = {name: dict(get_model_info(name).paper.kwargs) for name in ("prob_unet", "hprob_unet")}
    return [("prob_unet", paper["prob_unet"]), ("hprob_unet", paper["hprob_unet"]),
            ("unet", {"features": tuple(unet_features), "dropout": 0.5})]


def _seconds(window: SlidingWindowPredictor, data: torch.Tensor, sample: int | None, device: torch.device) -> float:
    start = time.perf_counter()
    window.predict(data, sample=sample)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def benchmark(name: str, kwargs: dict[str, Any], size: list[int], patch: list[int], repeats: int,
              device: torch.device) -> dict[str, Any]:
    """Median seconds of a deterministic pass and of a draw of one network, and their ratio."""
    torch.manual_seed(0)
    model = create_model(name, 2, 1, 2, **kwargs)
    network, window_patch, _ = volume_windows(model, patch, [])
    window = SlidingWindowPredictor([network], window_patch, step=0.5, device=device, precision="fp32")
    data = torch.randn(1, 1, *size)
    _seconds(window, data, None, device)  # warm-up
    plain, drawn = [], []
    for r in range(repeats):
        plain.append(_seconds(window, data, None, device))
        drawn.append(_seconds(window, data, r, device))
    deterministic, draw = statistics.median(plain), statistics.median(drawn)
    return {"model": name, "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
            "params": count_parameters(model), "windows": window.stats.windows,
            "deterministic_seconds": plain, "draw_seconds": drawn, "median_deterministic_seconds": deterministic,
            "median_draw_seconds": draw, "draw_over_deterministic": draw / deterministic}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    parser.add_argument("--patch", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    parser.add_argument("--unet-features", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="benchmarks/results/sampling_cpu.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    results = []
    for name, kwargs in _networks(args.unet_features):
        entry = benchmark(name, kwargs, args.size, args.patch, args.repeats, device)
        results.append(entry)
        print(f"{name:>12s}: deterministic {entry['median_deterministic_seconds']:.3f} s, one draw "
              f"{entry['median_draw_seconds']:.3f} s, ratio {entry['draw_over_deterministic']:.3f}", flush=True)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "size": args.size, "patch": args.patch,
        "repeats": args.repeats, "note": "medians over alternating repeats; one warm-up pass first",
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
