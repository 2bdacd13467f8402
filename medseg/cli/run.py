"""``medseg run``: run a declarative pipeline (``pipelines/*.yaml``), resuming step by step."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``run`` command to ``app``."""

    @app.command("run")
    def run(
        pipeline: Path = typer.Argument(..., help="Pipeline YAML file (see pipelines/)."),
        overrides: list[str] = typer.Option(
            None, "--set", help="Set a pipeline variable: name=value (repeatable)."
        ),
        step: list[str] = typer.Option(None, "--step", help="Run only this step (repeatable)."),
        force: bool = typer.Option(False, "--force", help="Run the selected steps even when up to date."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved commands and stop."),
    ) -> None:
        """Run each step's medseg command in order; finished steps with unchanged inputs are skipped."""
        from medseg.cli.main import main
        from medseg.workflows import load_pipeline, run_pipeline

        resolved = load_pipeline(pipeline, overrides or [])
        typer.echo(f"pipeline {resolved.name}: {len(resolved.steps)} steps, state {resolved.state_path}")
        if dry_run:
            for item in resolved.steps:
                typer.echo(f"  {item.name}: medseg {' '.join(item.run)}")
            return
        results = run_pipeline(resolved, main, only=step or None, force=force, echo=typer.echo)
        ran = sum(1 for _, status, _ in results if status == "ran")
        total = sum(seconds for _, _, seconds in results)
        typer.echo(f"pipeline {resolved.name}: {ran} steps ran, {len(results) - ran} up to date, {total:.1f} s")
