"""Benchmark: medseg's sliding-window predictor vs MONAI's ``sliding_window_inference`` (not a test).

Same model (an nnU-Net-size dynamic U-Net with random weights by default) and the same random volume, three ways:

1. ``medseg``: :class:`medseg.inference.SlidingWindowPredictor` (step 0.5, gaussian, batched windows, autocast per
   ``--precision``, stitching buffer on the device when it fits);
2. ``monai_default``: ``monai.inferers.sliding_window_inference`` with MONAI's defaults (overlap 0.25, constant
   blending, one window a batch), fp32;
3. ``monai_nnunet_style``: the same with nnU-Net's windowing (overlap 0.5, gaussian σ = patch/8), fp32, windows
   batched like medseg's.

No test-time augmentation in any of them. Each method runs ``--repeats`` times, the methods alternating, and the
JSON holds the median seconds, every run, the ratio to medseg's median, windows, peak GPU memory (CUDA) or peak
resident memory (CPU), the device and the library versions.

    python benchmarks/predict_benchmark.py                                   # GPU defaults: 512×512×256, 128³
    python benchmarks/predict_benchmark.py --device cpu --shape 128 128 96 --patch 64 64 64 \\
        --features 8 16 32 64 80 --out benchmarks/results/cpu_small.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def build_model(classes: int, features: list[int], patch: list[int]) -> torch.nn.Module:
    """nnU-Net's dynamic U-Net (``PlainConvUNet``): 2 convs per stage, stride 2 from the second stage."""
    from medseg.models import create_model

    stages = len(features)
    if any(p % 2 ** (stages - 1) for p in patch):
        raise SystemExit(f"the patch {patch} must be divisible by {2 ** (stages - 1)} for {stages} stages")
    return create_model("nnunet", 3, 1, classes, features_per_stage=features, kernel_sizes=[[3, 3, 3]] * stages,
                        strides=[[1, 1, 1]] + [[2, 2, 2]] * (stages - 1), n_conv_per_stage=[2] * stages,
                        n_conv_per_stage_decoder=[2] * (stages - 1), deep_supervision=False)


class PeakRSS:
    """Samples the resident set size of this process every 10 ms (Linux ``/proc/self/statm``)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._page = 4096
        try:
            import os

            self._page = os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * self._page
        except OSError:
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.01)

    def __enter__(self) -> PeakRSS:
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def monai_windows(shape: list[int], patch: list[int], overlap: float) -> int:
    """Windows MONAI's ``sliding_window_inference`` runs (``_get_scan_interval`` and ``dense_patch_slices``)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval(shape, patch, len(shape), [overlap] * len(shape))
    return len(dense_patch_slices(shape, patch, interval))


def timed(device: torch.device, fn: Callable[[], torch.Tensor]) -> tuple[float, int, torch.Tensor]:
    """Seconds, peak memory (GPU bytes or process RSS) and the result of ``fn()``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        return seconds, int(torch.cuda.max_memory_allocated(device)), out
    with PeakRSS() as rss:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return seconds, rss.peak, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 256])
    parser.add_argument("--patch", type=int, nargs=3, default=[128, 128, 128])
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--features", type=int, nargs="+", default=[32, 64, 128, 256, 320, 320])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                        help="medseg's autocast precision (MONAI runs fp32).")
    parser.add_argument("--batch-size", type=int, default=None, help="medseg's windows per batch (default auto).")
    parser.add_argument("--skip-monai-default", action="store_true")
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs of each method, alternating (median).")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/*.json).")
    args = parser.parse_args()

    import monai
    from monai.inferers import sliding_window_inference

    import medseg
    from medseg.inference.sliding_window import SlidingWindowPredictor, resolve_device

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(args.classes, args.features, args.patch).to(device).eval()
    volume = torch.randn((1, *args.shape))
    ours = SlidingWindowPredictor([model], args.patch, step=0.5, device=device, precision=args.precision,
                                  batch_size=args.batch_size)
    with torch.no_grad():  # warm-up: one window (cuDNN autotuning, allocator)
        ours.predict_windows(torch.zeros((1, 1, *args.patch), device=device))

    x = volume[None].to(device)
    methods: list[tuple[str, Callable[[], Any], dict[str, Any]]] = [
        ("medseg", lambda: ours.predict(volume), {"precision": args.precision})]
    monai_runs = [("monai_nnunet_style", {"overlap": 0.5, "mode": "gaussian", "sigma_scale": 0.125})]
    if not args.skip_monai_default:
        monai_runs.insert(0, ("monai_default", {"overlap": 0.25, "mode": "constant"}))
    for name, kwargs in monai_runs:
        sw_batch = 1 if name == "monai_default" else ours.batch_size or 2

        def run(kwargs: dict[str, Any] = kwargs, sw_batch: int = sw_batch) -> Any:
            return sliding_window_inference(x, args.patch, sw_batch, model, **kwargs)

        methods.append((name, run, {"precision": "fp32", "batch_size": sw_batch,
                                    "windows": monai_windows(args.shape, args.patch, kwargs["overlap"]), **kwargs}))

    runs: dict[str, list[float]] = {name: [] for name, _, _ in methods}
    peaks: dict[str, int] = dict.fromkeys(runs, 0)
    agreement = None
    with torch.no_grad():
        for repeat in range(args.repeats):  # the methods alternate, so drifting load hits them alike
            for name, fn, _ in methods:
                seconds, peak, out = timed(device, fn)
                runs[name].append(seconds)
                peaks[name] = max(peaks[name], peak)
                if repeat == 0 and name == "medseg":
                    labels_ours = out.float().argmax(0).cpu()
                if repeat == 0 and name == "monai_nnunet_style":
                    agreement = float((torch.as_tensor(out)[0].argmax(0).cpu() == labels_ours).float().mean())
                del out
    stats = ours.stats
    base = statistics.median(runs["medseg"])
    results: list[dict[str, Any]] = []
    for name, _, extra in methods:
        median = statistics.median(runs[name])
        record: dict[str, Any] = {"method": name, "seconds": median, "runs_seconds": runs[name],
                                  "ratio_to_medseg": median / base, "peak_memory_bytes": peaks[name], **extra}
        if name == "medseg":
            record.update(windows=stats.windows, batch_size=stats.batch_size, stitch_device=stats.stitch_device,
                          stitch_dtype=stats.stitch_dtype)
        if name == "monai_nnunet_style":
            record["argmax_agreement_with_medseg"] = agreement
        results.append(record)

    memory_kind = "peak GPU memory allocated (torch)" if device.type == "cuda" else "peak process RSS"
    cpu_name = platform.processor() or platform.machine()
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpu_name})",
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__, "monai": monai.__version__, "medseg": medseg.__version__,
        "shape": args.shape, "patch": args.patch, "classes": args.classes, "features": args.features,
        "parameters": sum(p.numel() for p in model.parameters()),
        "memory": memory_kind,
        "repeats": args.repeats,
        "timing": "each method run --repeats times, the methods alternating; seconds = median; ratio to medseg",
        "results": results,
    }
    out = args.out
    if out is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        tag = "x".join(str(s) for s in args.shape)
        out = RESULTS / f"predict_{device.type}_{tag}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        gib = r["peak_memory_bytes"] / 2**30
        print(f"{r['method']:>20}: {r['seconds']:8.2f} s (×{r['ratio_to_medseg']:.2f})  {r['windows']:4d} windows  "
              f"{gib:6.2f} GiB {memory_kind}")
    print(f"wrote {out}")
    assert math.isfinite(results[0]["seconds"])


if __name__ == "__main__":
    main()
