"""``medseg dataset``: import MSD / nnU-Net raw folders as manifests, and check every case of a manifest."""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path

import typer

app = typer.Typer(
    help="Dataset manifests: import an MSD task or nnU-Net raw folder, check every case of a dataset.",
    no_args_is_help=True,
)


class ImportFormat(str, Enum):
    """Source layouts ``medseg dataset import`` reads."""

    auto = "auto"
    msd = "msd"
    nnunet = "nnunet"


def _shown(path: str | Path) -> str:
    """A path relative to the working folder when it lies inside it, else absolute."""
    absolute = os.path.abspath(path)
    try:
        relative = os.path.relpath(absolute)
    except ValueError:  # another drive (Windows)
        return absolute
    return absolute if relative.startswith("..") else relative


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@app.command("import")
def import_command(
    source: Path = typer.Argument(..., help="MSD task folder or nnU-Net raw dataset folder (or its dataset.json)."),
    output: Path = typer.Option(..., "-o", "--output", help="Manifest file to write (paths become relative to it)."),
    fmt: ImportFormat = typer.Option(
        ImportFormat.auto, "--format", help="Source layout; auto reads the keys of dataset.json."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite the output manifest if it exists."),
) -> int:
    """Write a manifest for an MSD task folder or an nnU-Net v2 raw dataset folder.

    Every referenced file must exist; missing channel or label files are all listed in one error.
    Files no case uses are reported as warnings; macOS ._* files are ignored.
    """
    from medseg.data.importers import import_dataset

    result = import_dataset(source, output, fmt=fmt.value, overwrite=force)
    for warning in result.warnings:
        typer.echo(f"medseg: warning: {warning}", err=True)
    manifest = result.manifest
    labelled = len(manifest.labelled_cases)
    unlabelled = len(manifest.unlabelled_cases)
    channels = ", ".join(f"{c.name} ({c.modality})" if c.name != c.modality else c.name for c in manifest.channels)
    labels = ", ".join(f"{v} {k}" for k, v in manifest.labels.items())
    typer.echo(
        f"wrote {_shown(result.path)}: {_count(len(manifest.cases), 'case')} "
        f"({labelled} labelled, {unlabelled} unlabelled); "
        f"channels: {channels}; labels: {labels}"
    )
    typer.echo(f"next: medseg dataset check {_shown(result.path)}")
    return 0


@app.command("check")
def check_command(
    manifest: Path = typer.Argument(..., help="Manifest file (or an MSD dataset.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable JSON report instead of lines."),
) -> int:
    """Check every case: files readable, 3D volumes, channel and label grids equal, finite values, label values.

    Prints one line per problem, "case_id: path: what is wrong", then a summary.
    Exit code 1 when any problem is found.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from medseg.data.check import check_dataset
    from medseg.data.manifest import load_manifest

    loaded = load_manifest(manifest)
    console = Console(stderr=True)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("checking", total=len(loaded.cases))

        def on_case(done: int, total: int, case_id: str) -> None:
            bar.update(task, completed=done, total=total, description=f"checked {case_id}")

        report = check_dataset(loaded, progress=on_case)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for note in report.notes:
            typer.echo(f"note: {note.case_id}: {_shown(note.path)}: {note.message}")
        for problem in report.problems:
            typer.echo(f"{problem.case_id}: {_shown(problem.path)}: {problem.message}")
        typer.echo(report.summary)
    if not report.ok:
        raise typer.Exit(code=1)  # works whether or not the entry point runs typer in standalone mode
    return 0


@app.command("demo")
def demo_command(
    out: Path = typer.Argument(..., help="Folder for the subjects (imagesTr/, labelsTr/, imagesTs/, labelsTs/)."),
    n_train: int = typer.Option(8, "--n-train", min=2, help="Training subjects."),
    n_test: int = typer.Option(4, "--n-test", min=1, help="Test subjects (an independent random stream)."),
    spacing: float = typer.Option(2.0, "--spacing", min=0.5, help="Isotropic voxel size in mm."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice."),
    manifest_dir: Path = typer.Option(
        None, "--manifest-dir", help="Also write the manifests here (e.g. data_manifests/), paths relative to it."
    ),
) -> None:
    """Make a real-MRI grey/white-matter dataset from nilearn's MNI152 template (random deformation, bias, noise)."""
    from medseg.data.demo import make_tissue_dataset
    from medseg.data.manifest import load_manifest, save_manifest

    train_path = make_tissue_dataset(out, n_train=n_train, n_test=n_test, spacing_mm=spacing, seed=seed)
    written = [train_path, train_path.parent / "test.json"]
    if manifest_dir is not None:
        written += [
            save_manifest(load_manifest(train_path), manifest_dir / "mni152_tissue.json"),
            save_manifest(load_manifest(train_path.parent / "test.json"), manifest_dir / "mni152_tissue_test.json"),
        ]
    typer.echo(f"wrote {n_train} training and {n_test} test subjects to {_shown(out)} ({spacing:g} mm)")
    for path in written:
        typer.echo(f"wrote {_shown(path)}")


@app.command("demo-instances")
def demo_instances_command(
    out: Path = typer.Argument(..., help="Folder for the cases (images/, labels/, dataset.json, test.json)."),
    held_out: int = typer.Option(3, "--held-out", min=0, max=3,
                                 help="The quadrant of each photograph kept for test.json (0-3, row-major)."),
) -> None:
    """Make a real instance dataset from scikit-image's coins and Hubble deep field photographs.

    One object per coin or galaxy; each photograph is cut into four quadrant cases (needs scikit-image).
    """
    from medseg.data.instance_demo import make_instance_dataset

    result = make_instance_dataset(out, held_out=held_out)
    n = len(result["labels"])
    typer.echo(f"wrote {n} cases ({n - 2} training, 2 held out: fold 0's validation and test.json) to {_shown(out)}")
    for key in ("train", "test"):
        typer.echo(f"wrote {_shown(result[key])}")
