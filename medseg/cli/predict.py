"""``medseg predict``: segment files, folders, manifests or DICOM trees with trained runs (resumable batches)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

#: Exit code of a batch that finished with some failed cases (1 means an error stopped the command).
PARTIAL_FAILURE_EXIT = 3


def _folds(text: str | None) -> list[int] | None:
    from medseg.errors import InferenceError

    if text is None or text.strip().lower() in ("", "all"):
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InferenceError(f"--folds must be comma-separated fold numbers or 'all', not {text!r}") from None


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    from medseg.errors import InferenceError

    if value not in allowed:
        raise InferenceError(f"{option} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def register(app: typer.Typer) -> None:
    """Add the ``predict`` command to ``app``."""

    @app.command("predict")
    def predict(
        input_path: Path = typer.Option(..., "--input", "-i",
                                        help="Image file, folder of image files, manifest (.json) or DICOM tree."),
        out: Path = typer.Option(..., "--output", "-o", help="Output folder (also holds ledger.sqlite)."),
        models: list[Path] = typer.Option(..., "--model", "-m",
                                          help="Run folder of `medseg train` (RUN_DIR or RUN_DIR/fold_K); repeat "
                                               "for an ensemble of runs."),
        folds: str = typer.Option(None, "--folds", "-f", help="Comma-separated folds (default: every fold_K)."),
        checkpoint: str = typer.Option("final", "--checkpoint", help="final, best or latest."),
        tta: bool = typer.Option(True, "--tta/--no-tta", help="Mirroring test-time augmentation (trained axes)."),
        step: float = typer.Option(0.5, "--step", min=0.05, max=1.0, help="Window step as a fraction of the patch."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
        precision: str = typer.Option("auto", "--precision", help="auto, fp32, fp16 or bf16 (autocast)."),
        stitch_device: str = typer.Option("auto", "--stitch-device",
                                          help="Where the stitched volume lives: auto (device when it fits), cpu "
                                               "or cuda."),
        fmt: str = typer.Option("nifti", "--format",
                                help="nifti, nrrd, png (2D pictures) or dicom-seg (DICOM input); several "
                                     "comma-separated (nifti,dicom-seg) write each."),
        save_probabilities: bool = typer.Option(False, "--save-probabilities",
                                                help="Also write CASE_probabilities.npz (float16, native grid)."),
        lcc: bool = typer.Option(False, "--lcc", help="Keep the largest connected component of each class."),
        manifest: Path = typer.Option(None, "--manifest",
                                      help="Manifest naming the labels (when INPUT is not a manifest)."),
        batch_size: int = typer.Option(None, "--batch-size", min=1, help="Windows per batch (default: automatic)."),
        progress: str = typer.Option("auto", "--progress", help="auto, rich or plain."),
        wait: bool = typer.Option(False, "--wait",
                                  help="When another batch is writing the output folder, wait for it to finish "
                                       "instead of refusing."),
        points: Path = typer.Option(None, "--points",
                                    help="Interactive models (dextr): JSON of the points marking each object, world "
                                         "mm: {\"coordinates\": \"RAS\", \"cases\": {CASE: [{\"points\": "
                                         "[[x, y, z], ...], \"class\": NAME}]}}."),
    ) -> None:
        """Predict every case of INPUT with one or more trained runs; re-running resumes where it stopped.

        Runs of instance models write each case's object map (ids 1..N) and CASE_instances.json (class, score,
        volume and centroid of every object); interactive models segment the objects the --points file marks.

        Exit code 0 when every case was predicted, 3 when some cases failed or a full disk stopped the batch (see the
        ledger; run the same command again to resume), 1 when an error stopped the command.
        """
        from medseg.utils.devices import parse_device

        device = parse_device(device)
        _choice(precision, ("auto", "fp32", "fp16", "bf16"), "--precision")
        _choice(stitch_device, ("auto", "cpu", "cuda"), "--stitch-device")
        formats = [f.strip() for f in fmt.split(",") if f.strip()] or ["nifti"]
        for item in formats:
            _choice(item, ("nifti", "nrrd", "png", "dicom-seg"), "--format")
        _choice(progress, ("auto", "rich", "plain"), "--progress")
        _choice(checkpoint, ("final", "best", "latest"), "--checkpoint")
        fold_list = _folds(folds)
        from medseg.inference import Predictor, discover_cases, load_folds, run_batch

        cases, input_manifest = discover_cases(input_path)
        from medseg.utils.files import FolderLock

        with FolderLock(out, "medseg predict", wait=wait):  # held from here on; run_batch takes it again at no cost
            loaded = load_folds(models, fold_list, checkpoint)
            from medseg.models.instance.base import InstanceSegmentationModel

            points_digest = None
            if isinstance(loaded[0].model, InstanceSegmentationModel):
                from medseg.inference.instance import InstancePredictor, load_points
                from medseg.preprocessing import configuration_of

                marked = None
                if points is not None:
                    cfg = configuration_of(loaded[0].plans, loaded[0].configuration)
                    marked = load_points(points, dict(cfg.labels))
                    from medseg.utils.files import state_digest

                    points_digest = state_digest([points])
                predictor: Any = InstancePredictor(loaded, tta=tta, step=step, device=device,
                                                   precision=precision,  # type: ignore[arg-type]
                                                   batch_size=batch_size, points=marked)
            else:
                if points is not None:
                    from medseg.errors import InferenceError

                    raise InferenceError("--points is for interactive instance models (dextr); these runs segment "
                                         "classes")
                predictor = Predictor(loaded, tta=tta, step=step, device=device, precision=precision,  # type: ignore[arg-type]
                                      stitch_device=stitch_device, lcc=lcc, batch_size=batch_size)
            names = predictor.label_names
            if manifest is not None:
                from medseg.data import load_manifest

                names = load_manifest(manifest).label_names
            elif input_manifest is not None:
                names = input_manifest.label_names
            settings = {
                "checkpoints": [[str(f.checkpoint.resolve()), f.checkpoint.stat().st_mtime_ns] for f in loaded],
                "tta": tta, "step": step, "precision": precision, "lcc": lcc, "labels": names,
                **({"points": points_digest} if points_digest is not None else {}),
            }
            typer.echo(f"{len(cases)} case(s), {len(loaded)} fold model(s), device {predictor.device}", err=True)
            summary = run_batch(predictor, cases, out, fmt=formats, save_probabilities=save_probabilities,
                                label_names=names, settings=settings, progress=progress, wait=wait)
        for line in summary.lines():
            typer.echo(line)
        raise typer.Exit(PARTIAL_FAILURE_EXIT if summary.failed or summary.stopped else 0)
