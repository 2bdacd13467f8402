"""``medseg convert``: any supported input (NIfTI, NRRD, MetaImage, DICOM series) to NIfTI, NRRD or MetaImage."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``convert`` command to ``app``."""

    @app.command("convert")
    def convert(
        source: Path = typer.Argument(..., help="Image file (.nii.gz, .nrrd, .mha, …) or DICOM series folder."),
        output: Path = typer.Argument(..., help="Output file; its ending picks the format (.nii.gz, .nrrd, .mha, …)."),
        series_uid: str = typer.Option(
            None, "--series-uid", help="SeriesInstanceUID to convert when a DICOM folder holds several series."
        ),
    ) -> None:
        """Convert an image, keeping its voxel values and geometry (affine, spacing, direction) exactly."""
        import numpy as np

        from medseg.io import orientation_code, read_image, save_image

        image = read_image(source, series_uid=series_uid)  # numpy only: converting needs neither torch nor MONAI
        save_image(image, output)
        spacing = " × ".join(f"{s:.4g}" for s in image.meta["spacing"])
        shape = " × ".join(str(s) for s in image.shape[1:])
        channels = f", {image.shape[0]} channels" if image.shape[0] > 1 else ""
        typer.echo(
            f"wrote {output}: {shape} voxels{channels}, {spacing} mm, "
            f"{orientation_code(image.meta['affine'])}, {np.dtype(image.meta['original_dtype']).name}"
        )

