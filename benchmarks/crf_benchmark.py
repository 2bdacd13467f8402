"""Benchmark: runtime of CRF post-processing, fully connected (permutohedral lattice) and ConvCRF (not a test).

Input: the real MRI nilearn ships (MNI152 2009 T1 and its grey-matter and white-matter maps), cut to each size
(``--sizes``, 2D sizes are one axial slice), with a three-class prediction made from the tissue maps (other, GM,
WM), blurred (σ = 1.5 voxels) so that the CRF has work to do. For every size the methods run alternately,
``--repeats`` times each (after one warm-up run each): the dense CRF (5 mean-field iterations), the ConvCRF with
windows 5 and 7 (5 iterations; for sizes up to ``--conv-max-voxels``), and, for sizes up to 4096 voxels, the
dense CRF computed exactly with an N×N kernel matrix. Reported per method: the median seconds, the ratio to the
dense CRF's median, and (dense) the time spent building the lattice; plus the agreement of the label maps with the
dense CRF's, the device, threads and versions.

    python benchmarks/crf_benchmark.py                                   # CPU, default sizes
    python benchmarks/crf_benchmark.py --device cuda --sizes 192x224 128x128x128 160x192x160
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def mni(name: str) -> np.ndarray:
    import nibabel as nib

    file = f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"
    return np.asarray(nib.load(str(importlib.resources.files("nilearn.datasets") / "data" / file)).dataobj,
                      dtype=np.float32)


def case(size: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Image ``(1, *size)``, blurred three-class probabilities ``(3, *size)`` and 1 mm spacing, from the MNI152."""
    from scipy.ndimage import gaussian_filter

    t1, gm, wm = mni("t1"), mni("gm"), mni("wm")
    centre = [s // 2 for s in t1.shape]
    if len(size) == 2:
        view = (slice(centre[0] - size[0] // 2, centre[0] - size[0] // 2 + size[0]),
                slice(centre[1] - size[1] // 2, centre[1] - size[1] // 2 + size[1]), centre[2])
    else:
        view = tuple(slice(c - s // 2, c - s // 2 + s) for c, s in zip(centre, size, strict=True))
    tissue = np.stack([m[view] for m in (gm, wm)]) / 255.0
    probabilities = np.concatenate([np.clip(1 - tissue.sum(0, keepdims=True), 0, 1), tissue])
    probabilities = np.stack([gaussian_filter(p, 1.5) for p in probabilities]) + 1e-3
    probabilities /= probabilities.sum(0, keepdims=True)
    image = t1[view]
    image = (image - image.mean()) / image.std()
    return torch.from_numpy(image[None]), torch.from_numpy(probabilities.astype(np.float32)), [1.0] * len(size)


def exact_dense(unary: torch.Tensor, image: torch.Tensor, spacing: list[float], config: Any) -> torch.Tensor:
    """The fully connected CRF with dense N×N kernels (symmetric normalisation, as the lattice version)."""
    k, shape = unary.shape[0], unary.shape[1:]
    axes = [torch.arange(s, dtype=torch.float32, device=unary.device) * p for s, p in zip(shape, spacing, strict=True)]
    positions = torch.stack(torch.meshgrid(*axes, indexing="ij")).reshape(len(shape), -1).T
    features = image.reshape(image.shape[0], -1).T
    d2 = torch.cdist(positions, positions) ** 2
    appearance = torch.exp(-0.5 * d2 / config.appearance_sigma_mm**2
                           - 0.5 * torch.cdist(features, features) ** 2 / config.intensity_sigma**2)
    smooth = torch.exp(-0.5 * d2 / config.smoothness_sigma_mm**2)
    na, ns = appearance.sum(1).rsqrt(), smooth.sum(1).rsqrt()
    u = unary.reshape(k, -1)
    z = u
    for _ in range(config.iterations):
        q = torch.softmax(z, 0)
        z = u + config.appearance_weight * na * ((q * na) @ appearance) + config.smoothness_weight * ns * (
            (q * ns) @ smooth)
    return z.reshape(unary.shape)


def main() -> None:
    from medseg.inference.crf import CRFConfig, conv_crf, dense_crf
    from medseg.inference.permutohedral import PermutohedralLattice
    from medseg.utils.devices import resolve_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", default=["48x48", "192x224", "48x48x48", "96x96x96"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conv-max-voxels", type=int, default=200_000,
                        help="run the ConvCRF only up to this many voxels (its 3D cost grows with window^3)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_grad_enabled(False)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows = []
    for text in args.sizes:
        size = [int(s) for s in text.split("x")]
        image, probabilities, spacing = case(size)
        image, unary = image.to(device), torch.log(probabilities).to(device)
        voxels = int(np.prod(size))
        config = CRFConfig()
        methods: dict[str, Any] = {"dense": (dense_crf, config)}
        if voxels <= args.conv_max_voxels:
            methods["conv_window5"] = (conv_crf, CRFConfig(method="conv", window=5))
            methods["conv_window7"] = (conv_crf, CRFConfig(method="conv", window=7))
        if voxels <= 4096:
            methods["dense_exact"] = (exact_dense, config)
        # warm-up, and the label maps
        labels = {name: fn(unary, image, spacing, c).argmax(0) for name, (fn, c) in methods.items()}
        sync()
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, (fn, c) in methods.items():  # alternating
                sync()
                start = time.perf_counter()
                fn(unary, image, spacing, c)
                sync()
                times[name].append(time.perf_counter() - start)
        features = torch.cat([torch.stack(torch.meshgrid(
            *[torch.arange(s, dtype=torch.float32, device=device) * p / config.appearance_sigma_mm
              for s, p in zip(size, spacing, strict=True)], indexing="ij")).reshape(len(size), -1).T,
            image.reshape(1, -1).T / config.intensity_sigma], 1)
        build = []
        for _ in range(args.repeats):
            sync()
            start = time.perf_counter()
            lattice = PermutohedralLattice(features)
            sync()
            build.append(time.perf_counter() - start)
        dense_median = statistics.median(times["dense"])
        result = {"size": size, "voxels": voxels, "classes": int(probabilities.shape[0]),
                  "iterations": config.iterations,
                  "lattice_vertices": lattice.m, "lattice_build_s": statistics.median(build), "methods": {}}
        for name in methods:
            median = statistics.median(times[name])
            result["methods"][name] = {
                "median_s": median, "runs_s": times[name], "ratio_to_dense": median / dense_median,
                "voxels_per_s": voxels / median,
                "labels_agree_with_dense": float((labels[name] == labels["dense"]).float().mean()),
            }
        rows.append(result)
        print(json.dumps({"size": text, **{n: round(v["median_s"], 4) for n, v in result["methods"].items()}}))

    import monai

    import medseg

    report = {
        "benchmark": "crf_benchmark.py",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (
            platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "monai": monai.__version__, "medseg": medseg.__version__,
                     "python": platform.python_version()},
        "crf_config": {k: getattr(CRFConfig(), k) for k in ("iterations", "appearance_weight", "appearance_sigma_mm",
                                                            "intensity_sigma", "smoothness_weight",
                                                            "smoothness_sigma_mm")},
        "repeats": args.repeats,
        "conv_max_voxels": args.conv_max_voxels,
        "results": rows,
    }
    out = args.out or RESULTS / f"crf_{device.type}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
