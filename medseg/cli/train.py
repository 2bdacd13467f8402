"""``medseg train`` and ``medseg preprocess``: nnU-Net-style training on a planned dataset."""

from __future__ import annotations

from pathlib import Path

import typer


def _folds(text: str) -> list[int | str]:
    """``--fold``: fold numbers, ranges (``0-4``: the cross-validation folds) or ``all`` (every case, one model)."""
    from medseg.cli.predict import parse_folds
    from medseg.errors import MedsegError, TrainingError, quote

    try:
        folds = parse_folds(text, "--fold")
    except MedsegError:
        folds = None
    if not folds:
        raise TrainingError(f"--fold must be a fold number, a range such as 0-4, comma-separated folds, or 'all', "
                            f"not {quote(text)}")
    return folds


def register(app: typer.Typer) -> None:
    """Add the ``train`` and ``preprocess`` commands to ``app``."""

    @app.command("train")
    def train(
        plans: Path = typer.Argument(..., help="plans.json from `medseg plan`."),
        configuration: str = typer.Option("3d_fullres", "--config", "-c", help="Configuration of the plans to train."),
        fold: str = typer.Option("0", "--fold", "--folds", "-f",
                                 help="Cross-validation fold(s): 0, 0,1 or 0-4; 'all' trains one model on every case "
                                      "(nnU-Net's fold 'all', written to OUT/fold_all)."),
        model: str = typer.Option(None, "--model", help="Registry model instead of the plans' model."),
        epochs: int = typer.Option(None, "--epochs", min=1, help="Epochs (default 1000)."),
        iterations: int = typer.Option(None, "--iters-per-epoch", min=1, help="Iterations per epoch (default 250)."),
        out: Path = typer.Option(None, "--out", "-o",
                                 help="Run folder; fold K goes to OUT/fold_K (default: runs/CONFIG beside the plans)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from checkpoint_latest.pt where present."),
        device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps (default auto)."),
        manifest: Path = typer.Option(None, "--manifest", "-m",
                                      help="Dataset manifest (default: the one recorded in fingerprint.json)."),
        preset: str = typer.Option(None, "--preset",
                                   help="Training settings: a shipped preset (nnunet_default, cpu_small, demo_cpu, "
                                        "demo_cuda, demo_smoke) or a YAML file."),
        overrides: list[str] = typer.Option(None, "--set", help="Override a setting: key=value (repeatable)."),
        target_manifest: Path = typer.Option(None, "--target-manifest",
                                             help="Unlabelled target-domain images: output-space domain adaptation "
                                                  "(sets domain_adaptation.target_manifest)."),
    ) -> None:
        """Train a planned configuration with nnU-Net's recipe (single process, or under torchrun for DDP)."""
        from medseg.config import load_config
        from medseg.presets import resolve_preset
        from medseg.utils.devices import parse_device

        if device is not None:
            device = parse_device(device)
        preset_path = resolve_preset(preset) if preset is not None else None
        from medseg.training import TrainConfig
        from medseg.training import train as run_training

        sets = list(overrides or [])
        import json

        target = json.dumps(str(target_manifest.resolve())) if target_manifest is not None else None  # YAML-safe
        for key, value in (("model", model), ("epochs", epochs), ("iterations_per_epoch", iterations),
                           ("device", device), ("domain_adaptation.target_manifest", target)):
            if value is not None:
                sets.append(f"{key}={value}")
        config = load_config(TrainConfig, preset_path, sets)
        folds = _folds(fold)
        out_dir = out if out is not None else plans.parent / "runs" / configuration
        results = run_training(plans, configuration, folds, out_dir, config, manifest_path=manifest, resume=resume)
        for k, summary in results.items():
            if summary and summary.get("task") == "instance":
                typer.echo(f"fold {k}: validation pooled PQ {summary['pooled_pq']:.4f} ({out_dir / f'fold_{k}'})")
            elif summary:
                mean = summary.get("foreground_mean_dice")
                text = "n/a" if mean is None else f"{mean:.4f}"
                typer.echo(f"fold {k}: validation mean Dice {text} ({out_dir / f'fold_{k}'})")

    @app.command("preprocess")
    def preprocess(
        plans: Path = typer.Argument(..., help="plans.json from `medseg plan`."),
        configuration: str = typer.Option("3d_fullres", "--config", "-c", help="Configuration to preprocess."),
        manifest: Path = typer.Option(None, "--manifest", "-m",
                                      help="Dataset manifest (default: the one recorded in fingerprint.json)."),
        out: Path = typer.Option(None, "--out", "-o", help="Cache root (default: preprocessed/ beside the plans)."),
        workers: int = typer.Option(4, "--workers", "-j", min=1, help="Worker processes."),
    ) -> None:
        """Build (or validate) the preprocessed-data cache that `medseg train` reads."""
        from medseg.data import load_manifest
        from medseg.planning import load_plans
        from medseg.preprocessing import preprocess_dataset
        from medseg.training.trainer import resolve_manifest

        loaded = load_plans(plans)
        cases = load_manifest(resolve_manifest(plans, manifest))
        root = out if out is not None else plans.parent / "preprocessed"
        folder = preprocess_dataset(cases, loaded, configuration, root, workers)
        typer.echo(f"preprocessed {len(cases.labelled_cases)} cases into {folder}")
