"""``medseg fingerprint`` and ``medseg plan``: nnU-Net-style auto-configuration of a dataset."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer


@contextmanager
def _progress(description: str) -> Iterator[Any]:
    """A transient rich progress bar on stderr (silent when stderr is not a terminal); yields the callback."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[case]}"),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=None, case="")

        def update(done: int, total: int, case_id: str) -> None:
            bar.update(task, completed=done, total=total, case=case_id)

        yield update


def _fmt(values: Any, digits: int = 4) -> str:
    return " × ".join(f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in values)


def _fingerprint_summary(fingerprint: Mapping[str, Any]) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    cases = fingerprint["cases"]
    table = Table(title=f"fingerprint of {fingerprint.get('dataset_name') or 'dataset'} ({len(cases)} labelled cases)")
    table.add_column("property")
    table.add_column("value")
    spacings = np.asarray([c["spacing"] for c in cases])
    shapes = np.asarray([c["shape_after_crop"] for c in cases])
    table.add_row("median spacing (mm)", _fmt([float(s) for s in np.median(spacings, 0)]))
    table.add_row("median shape after crop", _fmt([float(s) for s in np.median(shapes, 0)], 5))
    table.add_row("median relative size after crop", f"{fingerprint['median_relative_size_after_cropping']:.3f}")
    for index, channel in enumerate(fingerprint["channels"]):
        stats = fingerprint["foreground_intensity_properties_per_channel"].get(str(index), {})
        if stats.get("mean") is None:
            text = "no foreground"
        else:
            text = (f"mean {stats['mean']:.4g}, std {stats['std']:.4g}, p0.5 {stats['percentile_00_5']:.4g}, "
                    f"p99.5 {stats['percentile_99_5']:.4g}")
        table.add_row(f"channel {index} {channel['name']} ({channel['modality']})", text)
    if "class_voxel_counts" in fingerprint:
        names = {v: k for k, v in fingerprint["labels"].items()}
        counts = ", ".join(f"{names.get(int(v), v)} {n}" for v, n in fingerprint["class_voxel_counts"].items())
        table.add_row("voxels per class", counts)
    Console(soft_wrap=False).print(table)


def _plans_summary(plans: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from medseg.preprocessing import configuration_of

    console = Console()
    console.print(
        f"plans for {plans.get('dataset_name') or 'dataset'}: preset {plans.get('preset', 'default')} "
        f"({plans.get('plans_identifier', 'medsegPlans')}), GPU memory target {plans['gpu_memory_gb']:g} GB, "
        f"transpose {plans['transpose_forward']}"
    )
    for name in plans["configurations"]:
        cfg = configuration_of(plans, name)
        topo = cfg.topology
        table = Table(title=name, show_header=False)
        table.add_column("property")
        table.add_column("value")
        table.add_row("spacing (mm)", _fmt(cfg.spacing))
        table.add_row("median shape", _fmt([round(v) for v in cfg.median_image_size_in_voxels]))
        table.add_row("patch size", _fmt(cfg.patch_size))
        table.add_row("batch size", str(cfg.batch_size))
        table.add_row("stages", str(topo.n_stages))
        table.add_row("poolings per axis", _fmt(topo.num_pool_per_axis))
        table.add_row("kernel sizes", " ".join("×".join(map(str, k)) for k in topo.kernel_sizes))
        table.add_row("features", " ".join(map(str, topo.features_per_stage)))
        if topo.n_blocks_per_stage is not None:
            table.add_row("residual blocks", " ".join(map(str, topo.n_blocks_per_stage)))
        table.add_row("data identifier", cfg.data_identifier)
        norm = ", ".join(
            f"{n['name']}: {n['scheme']}"
            + (" (nonzero mask)" if n.get("use_mask_for_norm") else "")
            + (f" (clip {n['clip_lower']:.4g}..{n['clip_upper']:.4g})" if "clip_lower" in n else "")
            for n in cfg.normalization
        )
        table.add_row("normalisation", norm)
        table.add_row("model", cfg.model.name)
        links = [f"{k.replace('_', ' ')} {v}" for k, v in (("previous_stage", cfg.previous_stage),
                                                           ("next_stage", cfg.next_stage)) if v]
        if links:
            table.add_row("cascade", ", ".join(links))
        console.print(table)
    for note in plans.get("notes", []):
        console.print(f"note: {note}")


def _compute(manifest_path: Path, workers: int | None, max_samples: int) -> dict[str, Any]:
    from medseg.data import load_manifest
    from medseg.planning import compute_fingerprint

    manifest = load_manifest(manifest_path)
    with _progress("fingerprint") as update:
        return compute_fingerprint(manifest, workers=workers, progress=update, max_samples=max_samples)


def register(app: typer.Typer) -> None:
    """Add the ``fingerprint`` and ``plan`` commands to ``app``."""
    from medseg.planning.presets import DEFAULT_MAX_SAMPLES, DEFAULT_PRESET, PRESETS

    @app.command("fingerprint")
    def fingerprint(
        manifest: Path = typer.Argument(..., help="Dataset manifest (medseg JSON or MSD dataset.json)."),
        output: Path = typer.Option(..., "-o", "--output", help="Where to write fingerprint.json."),
        workers: int = typer.Option(None, "--workers", "-j", min=1, help="Worker processes (default: CPU count)."),
        max_samples: int = typer.Option(
            DEFAULT_MAX_SAMPLES, "--max-samples", min=1, help="Foreground voxels sampled for intensity statistics."
        ),
    ) -> None:
        """Summarise a dataset for planning: spacings, cropped shapes, foreground intensities, class sizes."""
        from medseg.planning import save_fingerprint

        result = _compute(manifest, workers, max_samples)
        save_fingerprint(result, output)
        _fingerprint_summary(result)
        typer.echo(f"wrote {output}")

    @app.command("plan")
    def plan(
        manifest: Path = typer.Argument(..., help="Dataset manifest (medseg JSON or MSD dataset.json)."),
        output: Path = typer.Option(..., "-o", "--output", help="Where to write plans.json."),
        fingerprint_path: Path = typer.Option(
            None, "--fingerprint", help="Fingerprint to use or write (default: fingerprint.json next to the plans)."
        ),
        preset: str = typer.Option(
            DEFAULT_PRESET, "--preset",
            help=f"Planner preset: {', '.join(PRESETS)} (nnU-Net's default planner or ResEnc M/L/XL)."
        ),
        gpu_memory_gb: float = typer.Option(
            None, "--gpu-memory-gb", min=0.1,
            help="GPU memory target in GB (default: the preset's: default 8, resenc_m 8, resenc_l 24, resenc_xl 40)."
        ),
        configs: str = typer.Option(
            "2d,3d_fullres,3d_lowres", "--configs", help="Configurations to plan (comma-separated)."
        ),
        model: str = typer.Option(
            None, "--model",
            help="Registry key of the model the plans name (default: the preset's, nnunet or nnunet_resenc; "
                 "mask_rcnn for instance datasets)."
        ),
        workers: int = typer.Option(None, "--workers", "-j", min=1, help="Worker processes for the fingerprint."),
        max_samples: int = typer.Option(
            DEFAULT_MAX_SAMPLES, "--max-samples", min=1, help="Foreground voxels sampled for intensity statistics."
        ),
    ) -> None:
        """Plan training configurations by nnU-Net's rules; computes the fingerprint when it is missing or stale."""
        from medseg.data import load_manifest
        from medseg.planning import (
            fingerprint_matches,
            is_fresh,
            load_fingerprint,
            parse_configs,
            plan_experiment,
            resolve_model,
            resolve_preset,
            save_fingerprint,
            save_plans,
        )

        wanted = parse_configs(configs)  # fail on a typo before reading any image
        loaded = load_manifest(manifest)
        from medseg.planning import DEFAULT_INSTANCE_MODEL

        default = DEFAULT_INSTANCE_MODEL if loaded.is_instance and model is None and preset == DEFAULT_PRESET else None
        _, _, planned_model, _ = resolve_preset(preset, gpu_memory_gb, model or default)
        resolve_model(planned_model, (), loaded.task)
        fp_path = fingerprint_path if fingerprint_path is not None else output.parent / "fingerprint.json"
        fp = None
        if is_fresh(fp_path, manifest):
            fp = load_fingerprint(fp_path)
            if fingerprint_matches(fp, loaded):
                typer.echo(f"using fingerprint {fp_path}")
            else:
                fp = None
        if fp is None:
            fp = _compute(manifest, workers, max_samples)
            save_fingerprint(fp, fp_path)
            typer.echo(f"wrote {fp_path}")
        plans = plan_experiment(fp, gpu_memory_gb=gpu_memory_gb, configs=wanted, model=model,
                                dataset_name=loaded.name, preset=preset)
        save_plans(plans, output)
        _plans_summary(plans)
        typer.echo(f"wrote {output}")
