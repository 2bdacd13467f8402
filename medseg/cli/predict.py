"""``medseg predict``: segment files, folders, manifests or DICOM trees with trained runs (resumable batches)."""

from __future__ import annotations

from pathlib import Path

import typer

#: Exit code of a batch that finished with some failed cases (1 means an error stopped the command).
PARTIAL_FAILURE_EXIT = 3


def parse_folds(text: str | None, option: str = "--folds") -> list[int | str] | None:
    """Folds from the command line: ``0``, ``0,2``, ``0-4`` (a range), ``all`` (the model trained on every case).

    ``None`` or empty gives ``None`` (the default choice of the caller).
    """
    from medseg.errors import InferenceError, quote

    if text is None or not text.strip():
        return None
    out: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if part.lower() == "all":
                out.append("all")
            elif "-" in part[1:]:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo or lo < 0:
                    raise ValueError
                out += list(range(lo, hi + 1))
            else:
                value = int(part)
                if value < 0:
                    raise ValueError
                out.append(value)
        except ValueError:
            raise InferenceError(f"{option} takes fold numbers, ranges (0-4) or 'all', comma-separated, not "
                                 f"{quote(text)}") from None
    return list(dict.fromkeys(out)) or None


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    from medseg.errors import InferenceError

    if value not in allowed:
        raise InferenceError(f"{option} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def load_models(models: list[Path], folds: list[int | str] | None, checkpoint: str) -> list:
    """Fold models of every ``-m``: medseg run folders and nnU-Net v2 results folders alike."""
    from medseg.inference import load_folds
    from medseg.interop.nnunet import is_nnunet_folder, load_nnunet_folds

    loaded = []
    for model in models:
        if is_nnunet_folder(model):
            loaded += load_nnunet_folds(model, folds, checkpoint)
        else:
            loaded += load_folds([model], folds, checkpoint)
    if len(loaded) > 1:
        from medseg.errors import InferenceError
        from medseg.inference.predictor import _preprocessing_key

        for other in loaded[1:]:
            if _preprocessing_key(other) != _preprocessing_key(loaded[0]):
                raise InferenceError(f"{other.run_dir} was trained with other plans, configuration or patch than "
                                     f"{loaded[0].run_dir}; an ensemble needs the same preprocessing", other.run_dir)
    return loaded


def register(app: typer.Typer) -> None:
    """Add the ``predict`` command to ``app``."""

    @app.command("predict")
    def predict(
        input_path: Path = typer.Option(..., "--input", "-i",
                                        help="Image file, folder of image files, manifest (.json) or DICOM tree."),
        out: Path = typer.Option(..., "--output", "-o", help="Output folder (also holds ledger.sqlite)."),
        models: list[Path] = typer.Option(..., "--model", "-m",
                                          help="Run folder of `medseg train` (RUN_DIR or RUN_DIR/fold_K), an nnU-Net "
                                               "v2 results folder, or an inference plan of `medseg select`; repeat "
                                               "for an ensemble of runs."),
        folds: str = typer.Option(None, "--folds", "-f",
                                  help="Folds: 0,1 or 0-4 (cross-validation models) or all (the model trained on "
                                       "every case); default: every numbered fold, else fold_all."),
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
    ) -> None:
        """Predict every case of INPUT with one or more trained runs; re-running resumes where it stopped.

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
        fold_list = parse_folds(folds)
        from medseg.inference import Predictor, discover_cases, load_folds, run_batch

        cases, input_manifest = discover_cases(input_path)
        from medseg.utils.files import FolderLock
        from medseg.workflows.select import is_inference_plan, load_inference_plan

        with FolderLock(out, "medseg predict", wait=wait):  # held from here on; run_batch takes it again at no cost
            options = {"tta": tta, "step": step, "device": device, "precision": precision,
                       "stitch_device": stitch_device, "lcc": lcc, "batch_size": batch_size}
            plans_given = [m for m in models if is_inference_plan(m)]
            if plans_given:
                from medseg.errors import InferenceError
                from medseg.inference.predictor import EnsemblePredictor

                if len(models) != 1:
                    raise InferenceError("an inference plan of `medseg select` is the only -m of its prediction",
                                         plans_given[0])
                plan = load_inference_plan(plans_given[0])
                parts = [load_folds([m["run"]], [int(f) for f in m["folds"]] or None, checkpoint)
                         for m in plan["models"]]
                loaded = [f for part in parts for f in part]
                if len(parts) == 1:
                    predictor = Predictor(parts[0], postprocessing=plan.get("postprocessing"),
                                          **options)  # type: ignore[arg-type]
                else:
                    predictor = EnsemblePredictor([Predictor(part, **options) for part in parts],  # type: ignore[arg-type]
                                                  plan.get("postprocessing"))
            else:
                loaded = load_models(models, fold_list, checkpoint)
                previous = None
                if loaded[0].previous_stage_run is not None:  # a cascade: its previous stage predicts first
                    earlier = load_models([loaded[0].previous_stage_run], None, checkpoint)
                    previous = Predictor(earlier, **options)  # type: ignore[arg-type]
                    loaded = loaded + earlier
                predictor = Predictor([f for f in loaded if f.previous_stage_run is not None] if previous else loaded,
                                      previous=previous, **options)  # type: ignore[arg-type]
            names = predictor.label_names
            if manifest is not None:
                from medseg.data import load_manifest

                names = load_manifest(manifest).label_names
            elif input_manifest is not None:
                names = input_manifest.label_names
            settings = {
                "checkpoints": [[str(f.checkpoint.resolve()), f.checkpoint.stat().st_mtime_ns] for f in loaded],
                "tta": tta, "step": step, "precision": precision, "lcc": lcc, "labels": names,
                "postprocessing": getattr(predictor, "postprocessing", {}),
            }
            typer.echo(f"{len(cases)} case(s), {len(loaded)} fold model(s), device {predictor.device}", err=True)
            summary = run_batch(predictor, cases, out, fmt=formats, save_probabilities=save_probabilities,
                                label_names=names, settings=settings, progress=progress, wait=wait)
        for line in summary.lines():
            typer.echo(line)
        raise typer.Exit(PARTIAL_FAILURE_EXIT if summary.failed or summary.stopped else 0)
