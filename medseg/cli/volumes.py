"""``medseg volumes``: the volume of every label of every segmentation in a folder (CSV, JSON, HTML)."""

from __future__ import annotations

from pathlib import Path

import typer

#: Cases printed in the terminal table (all of them are in the files).
MAX_PRINTED_CASES = 40


def register(app: typer.Typer) -> None:
    """Add the ``volumes`` command to ``app``."""

    @app.command("volumes")
    def volumes(
        segmentations: Path = typer.Argument(
            ..., help="A folder of segmentations (.nii.gz, .nii, .nrrd, .mha, DICOM SEG .dcm) or one file."
        ),
        output: Path = typer.Option(
            None, "-o", "--output", help="Folder for volumes.csv, volumes.json, volumes.html (default: beside them)."
        ),
        manifest: Path = typer.Option(
            None, "--manifest", help="Name the labels from a dataset manifest (default: labels.json in the folder, "
            "the DICOM SEG segment labels, or the values)."
        ),
    ) -> None:
        """Report label volumes in millilitres; labels absent from a case count 0 mL. Unreadable files are listed."""
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        from medseg.evaluation.volumes import measure_volumes, write_volume_report

        names = None
        if manifest is not None:
            from medseg.data import load_manifest

            names = load_manifest(manifest).label_names
        out_dir = output if output is not None else (segmentations if segmentations.is_dir()
                                                     else segmentations.parent)
        err = Console(stderr=True)

        def on_case(case_id: str, status: str) -> None:
            if status != "done":
                err.print(f"{case_id}: {status}", markup=False, highlight=False)

        report = measure_volumes(segmentations, names, on_case=on_case)
        paths = write_volume_report(report, out_dir)
        console = Console(width=None if Console().is_terminal else 160)
        table = Table(title=f"{len(report.cases)} segmentation(s): volume per label (mL)")
        table.add_column("case")
        dicom = any(c.patient_id or c.description for c in report.cases)
        if dicom:
            table.add_column("patient")
            table.add_column("series")
        for name in report.labels.values():
            table.add_column(escape(name), justify="right")
        for case in report.cases[:MAX_PRINTED_CASES]:
            ids = [escape(case.case_id), *((escape(case.patient_id), escape(case.description)) if dicom else ())]
            table.add_row(*ids, *(f"{case.volume_ml(v):.2f}" for v in report.labels))
        if len(report.cases) > MAX_PRINTED_CASES:
            more = [f"… {len(report.cases) - MAX_PRINTED_CASES} more", *([""] * (2 if dicom else 0))]
            table.add_row(*more, *([""] * len(report.labels)))
        console.print(table)
        for kind in ("csv", "json"):
            console.print(f"wrote {paths[kind]}", markup=False, highlight=False)
        console.print(f"report: {paths['html']}", markup=False, highlight=False)
        if report.failed:
            err.print(f"{len(report.failed)} file(s) could not be measured", markup=False, highlight=False)
            raise typer.Exit(1)
