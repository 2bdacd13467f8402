"""``medseg predict``: segment files, folders, manifests or DICOM trees with trained runs (resumable batches)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def _part(num_parts: int | None, part_id: int | None) -> tuple[int, int] | None:
    """The part of a sharded batch this process predicts: ``--num-parts``/``--part-id``, or a torchrun rank.

    Under ``torchrun`` (its launcher variables ``RANK`` and ``WORLD_SIZE``) each rank is one part.
    """
    import os

    from medseg.errors import InferenceError

    if (num_parts is None) != (part_id is None):
        raise InferenceError("--num-parts and --part-id go together")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if num_parts is not None and part_id is not None:
        if world > 1:
            raise InferenceError("--num-parts/--part-id cannot be combined with torchrun's ranks (each rank is a part)")
        if part_id >= num_parts:
            raise InferenceError(f"--part-id {part_id} does not exist for --num-parts {num_parts} (0 … "
                                 f"{num_parts - 1})")
        return (part_id, num_parts) if num_parts > 1 else None
    if world > 1:
        return int(os.environ.get("RANK", "0") or 0), world
    return None


def _rank_device(device: str, part: tuple[int, int] | None) -> str:
    """Under torchrun, ``auto``/``cuda`` mean this rank's GPU (``LOCAL_RANK``) when there are GPUs."""
    import os

    if part is None or "WORLD_SIZE" not in os.environ or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu" if device == "auto" else device
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0) % torch.cuda.device_count()}"


def _print_status(folder: Path) -> None:
    from medseg.errors import InferenceError
    from medseg.inference.ledger import LEDGER_NAME, Ledger

    if not (folder / LEDGER_NAME).is_file():
        raise InferenceError(f"no {LEDGER_NAME} here: not the output folder of a batch", folder)
    with Ledger(folder) as ledger:
        parts = ledger.status()
    columns = ("assigned", "done", "failed", "running", "interrupted", "pending")
    typer.echo("part " + " ".join(f"{c:>11}" for c in columns))
    totals = dict.fromkeys(columns, 0)
    for name, counts in parts.items():
        typer.echo(f"{name:<5}" + " ".join(f"{counts[c]:>11}" for c in columns))
        for c in columns:
            totals[c] += counts[c]
    if len(parts) > 1:
        typer.echo(f"{'all':<5}" + " ".join(f"{totals[c]:>11}" for c in columns))


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
        input_path: str = typer.Option(None, "--input", "-i",
                                       help="Image file, folder of image files, manifest (.json), DICOM tree, a "
                                            "DICOM node AET@HOST:PORT (with --study-uid, --series-uid or "
                                            "--accession) or a DICOMweb study/series URL."),
        out: Path = typer.Option(None, "--output", "-o", help="Output folder (also holds ledger.sqlite)."),
        models: list[Path] = typer.Option(None, "--model", "-m",
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
                                help="nifti, nrrd, png (2D pictures), dicom-seg or dicom-rtstruct (DICOM input); "
                                     "several comma-separated (nifti,dicom-seg,dicom-rtstruct) write each."),
        save_probabilities: bool = typer.Option(False, "--save-probabilities",
                                                help="Also write CASE_probabilities.npz (float16, native grid)."),
        lcc: bool = typer.Option(False, "--lcc", help="Keep the largest connected component of each class."),
        samples: int = typer.Option(0, "--samples", min=0,
                                    help="Draw N predictions per case from a stochastic network (latent samples of "
                                         "prob_unet/hprob_unet, or dropout masks of a network with dropout) and "
                                         "write the label map of their mean probability, plus "
                                         "uncertainty/CASE_{mean_probabilities,entropy,mutual_information}."),
        sample_seed: int = typer.Option(0, "--sample-seed", min=0, help="Seed of the first draw (draw s: seed + s)."),
        save_samples: bool = typer.Option(False, "--save-samples",
                                          help="With --samples, also write samples/CASE: each draw's label map, "
                                               "one channel per draw (what `evaluate --metrics ged` scores)."),
        crf: str = typer.Option(None, "--crf",
                                help="CRF post-processing before resampling: dense (fully connected, permutohedral "
                                     "lattice) or conv (ConvCRF)."),
        crf_settings: list[str] = typer.Option(None, "--crf-set",
                                               help="CRF setting key=value (repeatable), e.g. iterations=10, "
                                                    "appearance_sigma_mm=10."),
        manifest: Path = typer.Option(None, "--manifest",
                                      help="Manifest naming the labels (when INPUT is not a manifest)."),
        batch_size: int = typer.Option(None, "--batch-size", min=1, help="Windows per batch (default: automatic)."),
        progress: str = typer.Option("auto", "--progress", help="auto, rich or plain."),
        wait: bool = typer.Option(False, "--wait",
                                  help="When another batch is writing the output folder, wait for it to finish "
                                       "instead of refusing."),
        preview: bool = typer.Option(False, "--preview",
                                     help="Also write previews/CASE.png: the prediction over the image in three "
                                          "planes through each label's largest extent, with a legend."),
        statistics: bool = typer.Option(False, "--statistics",
                                        help="Also write statistics.csv/.json/.html: per label volume (mL) and the "
                                             "image under it (mean, std, median, p5/p95; HU for CT)."),
        send_to: list[str] = typer.Option([], "--send-to",
                                          help="Send the DICOM results (SEG, RTSTRUCT) to AET@HOST:PORT (C-STORE) or "
                                               "a DICOMweb base URL (STOW-RS); repeat for several. Each is sent "
                                               "once; failed sends are retried by the next run."),
        study_uid: str = typer.Option(None, "--study-uid", help="DIMSE source: the StudyInstanceUID to fetch."),
        series_uid: str = typer.Option(None, "--series-uid", help="DIMSE source: the SeriesInstanceUID to fetch."),
        accession: str = typer.Option(None, "--accession", help="DIMSE source: the AccessionNumber to fetch."),
        retrieve: str = typer.Option("get", "--retrieve", help="DIMSE source: get (C-GET) or move (C-MOVE)."),
        aet: str = typer.Option("MEDSEG", "--aet", help="Our AE title towards DICOM nodes."),
        move_port: int = typer.Option(None, "--move-port", min=1, max=65535,
                                      help="C-MOVE: the port the node sends the series to (it must know --aet at "
                                           "this host and port)."),
        num_parts: int = typer.Option(None, "--num-parts", min=1,
                                      help="Split the batch into this many parts run as separate jobs (e.g. a SLURM "
                                           "array) into one output folder; with --part-id."),
        part_id: int = typer.Option(None, "--part-id", min=0,
                                    help="Which part this job predicts: 0 … num-parts − 1."),
        status: Path = typer.Option(None, "--status",
                                    help="Print done / failed / running / pending cases per part of the batch in "
                                         "this output folder, and stop."),
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
        from medseg.errors import InferenceError
        from medseg.utils.devices import parse_device

        if status is not None:
            _print_status(status)
            return
        missing = [name for name, value in (("--input", input_path), ("--output", out), ("--model", models))
                   if not value]
        if missing:
            raise InferenceError(f"{', '.join(missing)} missing (or use --status OUTPUT to see a batch's progress)")
        device = parse_device(device)
        part = _part(num_parts, part_id)
        _choice(precision, ("auto", "fp32", "fp16", "bf16"), "--precision")
        _choice(stitch_device, ("auto", "cpu", "cuda"), "--stitch-device")
        formats = [f.strip() for f in fmt.split(",") if f.strip()] or ["nifti"]
        for item in formats:
            _choice(item, ("nifti", "nrrd", "png", "dicom-seg", "dicom-rtstruct"), "--format")
        _choice(progress, ("auto", "rich", "plain"), "--progress")
        _choice(checkpoint, ("final", "best", "latest"), "--checkpoint")
        fold_list = parse_folds(folds)
        if save_samples and not samples:
            raise InferenceError("--save-samples needs --samples N (N ≥ 1)")
        crf_config = None
        if crf is not None or crf_settings:
            from medseg.config import load_config
            from medseg.inference.crf import METHODS, CRFConfig

            _choice(crf or "dense", METHODS, "--crf")
            crf_config = load_config(CRFConfig, None, [f"method={crf or 'dense'}", *(crf_settings or [])])
        from medseg.inference import Predictor, load_folds, run_batch
        from medseg.utils.files import FolderLock
        from medseg.workflows.select import is_inference_plan, load_inference_plan

        if send_to:
            from medseg.pacs.address import parse_destination, require_pacs_extra

            require_pacs_extra("--send-to")
            for destination in send_to:
                parse_destination(destination)

        def inputs() -> tuple[list, object]:
            return _cases(input_path, out, study_uid=study_uid, series_uid=series_uid, accession=accession,
                          method=retrieve, aet=aet, move_port=move_port)

        remote = _is_remote(input_path)
        if not remote:  # a local input is checked before the output folder is made
            cases, input_manifest = inputs()
        with FolderLock(out, "medseg predict", wait=wait, part=part):  # run_batch takes it again at no cost
            if remote:  # fetched into the output folder, under its lock
                cases, input_manifest = inputs()
            options = {"tta": tta, "step": step, "device": _rank_device(device, part), "precision": precision,
                       "stitch_device": stitch_device, "lcc": lcc, "batch_size": batch_size}
            plans_given = [m for m in models if is_inference_plan(m)]
            points_digest = None
            predictor: Any
            if plans_given:
                from medseg.inference.predictor import EnsemblePredictor

                if samples or crf_config is not None or points is not None:
                    raise InferenceError("--samples, --crf and --points apply to one run's models, not to an "
                                         "inference plan of `medseg select`", plans_given[0])
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
                from medseg.models.instance.base import InstanceSegmentationModel

                loaded = load_models(models, fold_list, checkpoint)
                if isinstance(loaded[0].model, InstanceSegmentationModel):
                    from medseg.inference.instance import InstancePredictor, load_points
                    from medseg.preprocessing import configuration_of

                    if samples or crf_config is not None:
                        raise InferenceError("--samples and --crf apply to runs that segment classes, not to "
                                             "instance models", loaded[0].run_dir)
                    marked = None
                    if points is not None:
                        from medseg.utils.files import state_digest

                        cfg = configuration_of(loaded[0].plans, loaded[0].configuration)
                        marked = load_points(points, dict(cfg.labels))
                        points_digest = state_digest([points])
                    predictor = InstancePredictor(loaded, tta=tta, step=step, device=_rank_device(device, part),
                                                  precision=precision,  # type: ignore[arg-type]
                                                  batch_size=batch_size, points=marked)
                else:
                    if points is not None:
                        raise InferenceError("--points is for interactive instance models (dextr); these runs "
                                             "segment classes")
                    previous = None
                    if loaded[0].previous_stage_run is not None:  # a cascade: its previous stage predicts first
                        earlier = load_models([loaded[0].previous_stage_run], None, checkpoint)
                        previous = Predictor(earlier, **options)  # type: ignore[arg-type]
                        loaded = loaded + earlier
                    predictor = Predictor([f for f in loaded if f.previous_stage_run is not None] if previous
                                          else loaded, previous=previous, samples=samples, sample_seed=sample_seed,
                                          keep_samples=save_samples, crf=crf_config, **options)  # type: ignore[arg-type]
            names = predictor.label_names
            label_info: dict[int, dict[str, object]] = {}
            if manifest is not None:
                from medseg.data import load_manifest

                loaded_manifest = load_manifest(manifest)
                names, label_info = loaded_manifest.label_names, dict(loaded_manifest.label_info)
            elif input_manifest is not None:
                names, label_info = input_manifest.label_names, dict(input_manifest.label_info)
            settings = {
                "checkpoints": [[str(f.checkpoint.resolve()), f.checkpoint.stat().st_mtime_ns] for f in loaded],
                "tta": tta, "step": step, "precision": precision, "lcc": lcc, "labels": names,
                **({"label_info": {str(k): v for k, v in label_info.items()}} if label_info else {}),
                "postprocessing": getattr(predictor, "postprocessing", {}),
                **({"points": points_digest} if points_digest is not None else {}),
            }
            if samples:
                settings.update(samples=samples, sample_seed=sample_seed, save_samples=save_samples)
            if crf_config is not None:  # a CRF changes the outputs: cases predicted without it are redone
                from medseg.config import to_dict

                settings["crf"] = to_dict(crf_config)
            shard = "" if part is None else f" (part {part[0]} of 0…{part[1] - 1})"
            typer.echo(f"{len(cases)} case(s){shard}, {len(loaded)} fold model(s), device {predictor.device}",
                       err=True)
            summary = run_batch(predictor, cases, out, fmt=formats, save_probabilities=save_probabilities,
                                label_names=names, settings=settings, progress=progress, wait=wait, part=part,
                                label_info=label_info, preview=preview)
            unsent = _send(cases, out, send_to, aet) if send_to else 0
            if statistics:
                _statistics(cases, out, names)
        for line in summary.lines():
            typer.echo(line)
        if unsent:
            typer.echo(f"{unsent} result(s) not sent (see outbox.sqlite; run the same command again to retry)")
        raise typer.Exit(PARTIAL_FAILURE_EXIT if summary.failed or summary.stopped or unsent else 0)


def _is_remote(input_path: str) -> bool:
    """Whether INPUT names a PACS source (``AET@HOST:PORT`` or an http(s) URL) rather than an existing path."""
    from medseg.pacs.address import parse_source

    return not Path(input_path).exists() and parse_source(input_path) is not None


def _cases(input_path: str, out: Path, *, study_uid: str | None, series_uid: str | None, accession: str | None,
           method: str, aet: str, move_port: int | None) -> tuple[list, object]:
    """The cases of INPUT: a local path as it is, a PACS source fetched into OUT/retrieved first."""
    from medseg.inference import discover_cases
    if not _is_remote(input_path):
        if study_uid or series_uid or accession:
            from medseg.errors import InferenceError

            raise InferenceError("--study-uid, --series-uid and --accession select from a DICOM node "
                                 "(-i AET@HOST:PORT)", input_path)
        return discover_cases(input_path)
    from medseg.pacs.sources import fetch_source

    fetched = fetch_source(input_path, out, study_uid=study_uid, series_uid=series_uid, accession=accession,
                           method=method, calling_aet=aet, move_port=move_port) or {}
    cases = []
    for files in fetched.values():
        cases.extend(discover_cases(files[0].parent)[0])
    typer.echo(f"fetched {len(fetched)} series from {input_path}", err=True)
    return cases, None


def _send(cases: list, out: Path, destinations: list[str], aet: str) -> int:
    """Queue the DICOM results of the cases for each destination, send what is due; returns how many are unsent."""
    from medseg.inference.ledger import Ledger
    from medseg.pacs.outbox import Outbox, send_due

    with Ledger(out) as ledger, Outbox(out) as outbox:
        outbox.retry_failed()
        for case in cases:
            record = ledger.get(case.case_id)
            if record is None or record.status != "done":
                continue
            files = [p for p in record.outputs if p.endswith(".dcm")]
            uid = getattr(case.series, "series_instance_uid", "") or ""
            for destination in destinations:
                outbox.enqueue(files, destination, uid)
        sent, _ = send_due(outbox, calling_aet=aet, retry_after=0.0, max_attempts=1,
                           report=lambda line: typer.echo(line, err=True))
        if sent:
            typer.echo(f"sent {sent} result(s) to {', '.join(destinations)}", err=True)
        return len(outbox.rows("failed")) + len(outbox.rows("pending"))


def _statistics(cases: list, out: Path, names: dict[int, str]) -> None:
    """Write statistics.csv/.json/.html: volumes and the image under each label of every case done."""
    from medseg.evaluation.volumes import ImageSource, measure_volumes, write_volume_report
    from medseg.inference.ledger import Ledger

    files: dict[str, Path] = {}
    images: dict[str, ImageSource] = {}
    with Ledger(out) as ledger:
        for case in cases:
            record = ledger.get(case.case_id)
            if record is None or record.status != "done":
                continue
            label_maps = [p for p in record.outputs if p.endswith((".nii.gz", ".nii", ".nrrd"))] + \
                [p for p in record.outputs if p.endswith("_seg.dcm")]
            if not label_maps:
                continue
            files[case.stem] = Path(label_maps[0])
            if case.kind == "dicom":
                info = case.series
                images[case.stem] = ImageSource((Path(case.paths[0]).parent,), info.series_instance_uid or None,
                                                (), info.modality)
            else:
                images[case.stem] = ImageSource(tuple(Path(p) for p in case.paths))
    if not files:
        typer.echo("statistics: no label map among the outputs (add nifti or dicom-seg to --format)", err=True)
        return
    report = measure_volumes(out, names, images=images, files=files)
    paths = write_volume_report(report, out, name="statistics")
    typer.echo(f"statistics: {paths['html']}", err=True)
