"""``medseg export-nnunet``: a medseg run as an nnU-Net v2 results folder."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``export-nnunet`` command to ``app``."""

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
