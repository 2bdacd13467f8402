"""``medseg export-nnunet`` and ``medseg select``.

``export-nnunet`` writes a medseg run as an nnU-Net v2 results folder; ``select`` chooses the best configuration, pair
ensemble and postprocessing on cross-validation.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``export-nnunet`` and ``select`` commands to ``app``."""

    @app.command("export-nnunet")
    def export_nnunet(
        run: Path = typer.Argument(..., help="Run folder of `medseg train` (nnunet or nnunet_resenc network)."),
        out: Path = typer.Option(..., "--output", "-o", help="nnU-Net results folder to write."),
        folds: str = typer.Option(None, "--folds", "-f", help="Folds to export: 0,1, 0-4 or all (default: every "
                                                              "fold folder)."),
        checkpoint: str = typer.Option("final", "--checkpoint", help="final, best or latest."),
    ) -> None:
        """Write plans.json, dataset.json and fold_K/checkpoint_final.pth that nnU-Net v2's predictor loads."""
        from medseg.cli.predict import _choice, parse_folds

        _choice(checkpoint, ("final", "best", "latest"), "--checkpoint")
        fold_list = parse_folds(folds)
        from medseg.interop.nnunet_export import export_nnunet as run_export

        written = run_export(run, out, fold_list, checkpoint)
        folds_written = sorted(p.parent.name for p in written if p.name == "checkpoint_final.pth")
        typer.echo(f"wrote {out}: plans.json, dataset.json, {', '.join(folds_written)}")
        typer.echo(f"nnU-Net: nnUNetv2_predict_from_modelfolder -i IN -o OUT -m {out}")

    @app.command("select")
    def select(
        runs: list[Path] = typer.Argument(..., help="Run folders of `medseg train` with cross-validation folds "
                                                     "(one per configuration)."),
        manifest: Path = typer.Option(..., "--manifest", "-m", help="The manifest the runs were trained on."),
        out: Path = typer.Option(..., "--output", "-o", help="Folder of the inference plan (and the cached "
                                                             "cross-validation probabilities)."),
        folds: str = typer.Option(None, "--folds", "-f", help="Folds to use, e.g. 0-4 (default: every numbered "
                                                              "fold)."),
        tta: bool = typer.Option(True, "--tta/--no-tta", help="Mirroring when predicting the validation cases."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    ) -> None:
        """Score every run and pair ensemble on cross-validation, pick the best and its postprocessing.

        nnU-Net's find_best_configuration; writes OUT/inference_plan.json, which `medseg predict -m OUT` runs.
        """
        from medseg.cli.predict import parse_folds
        from medseg.errors import InferenceError
        from medseg.utils.devices import parse_device

        device = parse_device(device)
        fold_list = parse_folds(folds)
        if fold_list is not None and any(f == "all" for f in fold_list):
            raise InferenceError("select scores cross-validation folds (0-4), not the fold 'all' model")
        from medseg.workflows.select import select as run_select

        plan = run_select(runs, manifest, out, folds=[int(f) for f in fold_list] if fold_list else None, tta=tta,
                          device=device, log=lambda line: typer.echo(line, err=True))
        for name, entry in plan["candidates"].items():
            score = entry["foreground_mean_dice"]
            typer.echo(f"{name}: {'n/a' if score is None else f'{score:.4f}'}")
        pp = plan["postprocessing"]
        steps = (["largest component of all foreground"] if pp["largest_component_all_foreground"] else []) + [
            f"largest component of class {c}" for c in pp["largest_component_classes"]]
        typer.echo(f"selected {plan['selected']}; postprocessing: {', '.join(steps) or 'none'}")
        typer.echo(f"wrote {out / 'inference_plan.json'}")
