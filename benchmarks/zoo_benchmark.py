"""Benchmark the model zoo: parameters, GFLOPs of one forward pass and images per second, written to JSON.

Every model is built at its paper configuration (``PaperConfig``: in/out channels and options, e.g. the paper's
backbone) in evaluation mode and run on one input of ``--size`` (default 512x1024, rounded up to the model's input
divisor). FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on one forward pass (a
multiply-add counts 2 FLOPs; papers that quote "FLOPs" often mean multiply-adds, i.e. half this figure); the pass
runs on the ``meta`` device (shapes only, no arithmetic), falling back to a real pass for a model that cannot run
there, so counting costs nothing next to the timing. Images per second: ``batch · iters / seconds`` over ``--iters``
timed forward passes after ``--warmup`` untimed ones (CUDA synchronised). A model that fails (e.g. out of memory)
gets an ``error`` entry and the run goes on; one the kernel kills for memory ends the run, the JSON written after
every model keeps the others (``complete: false``).

Examples::

    python benchmarks/zoo_benchmark.py                                   # family natural, CPU, 512x1024
    python benchmarks/zoo_benchmark.py --device cuda --models danet,ccnet
    python benchmarks/zoo_benchmark.py --size 256 512 --iters 2 --out benchmarks/results/zoo_natural_small.json
    python benchmarks/zoo_benchmark.py --all --size3d 64 64 64           # every family, each in its paper's dims
    python benchmarks/zoo_benchmark.py --family dense --dims both --size 512 512 --size3d 128 128 128

``--dims`` picks the dimensionality: each paper's own (default), ``2``, ``3``, or ``both`` where the model supports
them; 3D runs use ``--size3d``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from medseg.models import count_parameters, create_model, get_model_info, list_models


def _round_up(size: list[int], divisor: int) -> list[int]:
    return [int(math.ceil(s / divisor) * divisor) for s in size]


def _first_tensor(out: Any) -> torch.Tensor:
    while not isinstance(out, torch.Tensor):
        out = out[0]
    return out


def benchmark_dims(name: str, which: str) -> list[int]:
    """The dims to benchmark ``name`` in: its paper's (``paper``), ``2``, ``3``, or every one it supports (``both``)."""
    info = get_model_info(name)
    if which == "paper":
        return [info.paper.spatial_dims]
    if which == "both":
        return [d for d in (2, 3) if d in info.spatial_dims]
    return [int(which)] if int(which) in info.spatial_dims else []


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, list[int]]:
    """FLOPs and output shape of one forward pass of ``model`` on ``x`` (on the meta device: shapes only)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = _first_tensor(model(x))
    return float(counter.get_total_flops()), list(out.shape)


def benchmark_model(name: str, size2d: list[int], size3d: list[int], device: torch.device, batch: int,
                    warmup: int, iters: int, dims: int | None = None) -> dict[str, Any]:
    """Parameters, GFLOPs and images/s of model ``name`` at its paper configuration, in ``dims`` (default: the
    paper's)."""
    info = get_model_info(name)
    cfg = info.paper
    dims = cfg.spatial_dims if dims is None else dims
    entry: dict[str, Any] = {"model": name, "family": info.family, "spatial_dims": dims,
                             "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
                             "kwargs": {k: v for k, v in cfg.kwargs.items() if k != "deep_supervision"}}
    try:
        torch.manual_seed(0)
        model = create_model(name, dims, cfg.in_channels, cfg.out_channels, **entry["kwargs"]).to(device).eval()
        divisor = max(getattr(model, "input_divisor", (info.divisor[dims],)))
        size = _round_up(size2d if dims == 2 else size3d, divisor)
        entry.update(params=count_parameters(model), paper_params=cfg.params, input_size=size, batch=batch)
        x = torch.randn(batch, cfg.in_channels, *size, device=device)
        try:  # on the meta device: no arithmetic, so counting adds no forward pass to the run
            with torch.device("meta"):
                meta_model = create_model(name, dims, cfg.in_channels, cfg.out_channels, **entry["kwargs"]).eval()
                flops, output_shape = count_flops(meta_model, torch.empty(x.shape))
            entry["flops_counted_on"] = "meta"
        except Exception:  # data-dependent operations (.item(), nonzero()) cannot run there: count on a real pass
            flops, output_shape = count_flops(model, x)
            entry["flops_counted_on"] = "real pass"
        entry["gflops"] = flops / 1e9 / batch
        entry["output_shape"] = output_shape
        with torch.no_grad():
            for _ in range(warmup):
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(iters):
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
        entry["images_per_second"] = batch * iters / seconds
        entry["seconds_per_image"] = seconds / (batch * iters)
        if device.type == "cuda":
            entry["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except Exception as err:  # one failing model must not stop the benchmark
        entry["error"] = f"{type(err).__name__}: {err}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    return entry


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code (1 when any model failed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="natural", help="model family to benchmark (default: natural)")
    parser.add_argument("--all", action="store_true", help="benchmark every registered model")
    parser.add_argument("--models", default="", help="comma-separated registry keys (overrides --family/--all)")
    parser.add_argument("--size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    parser.add_argument("--size3d", type=int, nargs=3, default=[64, 64, 64], metavar=("D", "H", "W"),
                        help="input size of 3D runs")
    parser.add_argument("--dims", default="paper", choices=["paper", "2", "3", "both"],
                        help="dimensionality: each paper's (default), 2, 3, or both where supported")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="benchmarks/results/zoo_natural.json")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    if args.models:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
    else:
        names = list_models() if args.all else list_models(args.family)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, int]] = []

    def write(results: list[dict[str, Any]]) -> None:  # after every model: a run killed by the OS keeps the rest
        report = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "device_type": device.type,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "size": args.size,
            "size3d": args.size3d,
            "batch": args.batch,
            "warmup": args.warmup,
            "iters": args.iters,
            "flops_note": "FlopCounterMode total of one forward pass per image; a multiply-add counts 2 FLOPs",
            "dims": args.dims,
            "complete": len(results) == len(jobs),
            "results": results,
        }
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(out)

    jobs.extend((name, dims) for name in names for dims in benchmark_dims(name, args.dims))
    results: list[dict[str, Any]] = []
    for name, dims in jobs:
        entry = benchmark_model(name, args.size, args.size3d, device, args.batch, args.warmup, args.iters, dims)
        results.append(entry)
        write(results)
        if "error" in entry:
            print(f"{name:>20s} {dims}D: ERROR {entry['error']}", flush=True)
        else:
            print(f"{name:>20s} {dims}D: {entry['params'] / 1e6:8.2f} M params  {entry['gflops']:9.1f} GFLOPs  "
                  f"{entry['images_per_second']:8.3f} img/s  input {entry['input_size']}", flush=True)
    print(f"wrote {out}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
