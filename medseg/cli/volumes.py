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
        image: Path = typer.Option(
            None, "--image", help="Also measure the image under each label (mean, std, median, p5/p95, min, max; HU "
            "for CT): an image file, a folder of images (by case id), a manifest, or a DICOM tree (a SEG by the "
            "series it references, other files by the names medseg predict gives a series' outputs)."
        ),
    ) -> None:
        """Report label volumes in millilitres; labels absent from a case count 0 mL. Unreadable files are listed.

        With --image, also the intensity statistics of the image under every label, per channel.
        """
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        from medseg.evaluation.volumes import list_segmentations, measure_volumes, pair_images, write_volume_report

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

        images = None
        if image is not None:
            images, unpaired = pair_images(list_segmentations(segmentations), image)
            for case_id in unpaired:
                err.print(f"{case_id}: no image found in {image}; volumes only", markup=False, highlight=False)
        report = measure_volumes(segmentations, names, on_case=on_case, images=images)
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
        if report.with_intensity:
            stats = Table(title="image under each label: mean ± std [p5, p95]")
            for column in ("case", "label", "channel", "unit"):
                stats.add_column(column)
            stats.add_column("mean ± std [p5, p95]", justify="right")
            for row in [r for r in report.rows() if isinstance(r.get("mean"), float)][:MAX_PRINTED_CASES]:
                stats.add_row(escape(row["case_id"]), escape(row["name"]), escape(row["channel"]), row["unit"],
                              f"{row['mean']:.1f} ± {row['std']:.1f} [{row['p5']:.1f}, {row['p95']:.1f}]")
            console.print(stats)
        for kind in ("csv", "json"):
            console.print(f"wrote {paths[kind]}", markup=False, highlight=False)
        console.print(f"report: {paths['html']}", markup=False, highlight=False)
        if report.failed:
            err.print(f"{len(report.failed)} file(s) could not be measured", markup=False, highlight=False)
            raise typer.Exit(1)
