"""``medseg evaluate``: score predicted label maps against references; write metrics.csv, summary.json, report.html."""

from __future__ import annotations

from pathlib import Path

import typer

from medseg.evaluation.metric_table import DEFAULT_METRICS, metric_help, metric_spec


def _floats(text: str, option: str) -> list[float]:
    from medseg.errors import EvaluationError

    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise EvaluationError(f"{option}: expected comma-separated numbers, got {text!r}") from None


def _cell(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def _instance_manifest(ref: Path) -> bool:
    """Whether ``ref`` is a manifest of instance label maps."""
    if not ref.is_file():
        return False
    from medseg.data import load_manifest

    return load_manifest(ref).is_instance


def _evaluate_instances(pred: Path, ref: Path, output: Path | None, resample_to_ref: bool, missing: str,
                        images: Path | None, worst: int, no_report: bool) -> None:
    """``medseg evaluate`` of instance label maps: the table of pooled PQ per class, the files written."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from medseg.evaluation.instance import evaluate_instances, summarize_instances, write_instance_evaluation
    from medseg.evaluation.report import REPORT_EXTRA_HINT, matplotlib_available

    result = evaluate_instances(pred, ref, resample_to_ref=resample_to_ref, missing=missing, images=images)
    html = None
    if not no_report and matplotlib_available():
        from medseg.evaluation.instance_report import render_instance_report

        html = render_instance_report(result, worst=worst)
    paths = write_instance_evaluation(result, output if output is not None else pred / "evaluation",
                                      report_html=html)
    summary = summarize_instances(result)
    console = Console(width=None if Console().is_terminal else 160)
    table = Table(title=f"{len(result.cases)} cases: objects matched at IoU > 0.5 (pooled over the cases)")
    for col in ("class", "PQ", "SQ", "RQ", "F1", "TP", "FP", "FN", "AJI (per-case mean)"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for value, name in result.row_classes.items():
        pooled = summary["pooled"][str(value)]
        aji = summary["mean"][str(value)].get("AJI")
        table.add_row(escape(name), *(f"{pooled[k]:.3f}" for k in ("PQ", "SQ", "RQ", "F1")),
                      *(str(pooled[k]) for k in ("TP", "FP", "FN")), "" if aji is None else f"{aji:.3f}")
    console.print(table)
    for kind in ("csv", "objects", "json"):
        console.print(f"wrote {paths[kind]}", markup=False, highlight=False)
    if no_report:
        return
    if html is None:
        Console(stderr=True).print(f"no report.html: {REPORT_EXTRA_HINT}", markup=False, highlight=False)
        return
    console.print(f"report: {paths['html']}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to ``app``."""

    @app.command("evaluate")
    def evaluate(
        pred: Path = typer.Option(..., "--pred", help="Folder of predicted label maps (.nii.gz, .nii, .nrrd, .mha)."),
        ref: Path = typer.Option(
            ..., "--ref", help="Folder of reference label maps (paired by case id), or a dataset manifest."
        ),
        labels: str = typer.Option(
            None,
            "--labels",
            help="Labels to evaluate: values (1,2), manifest names (liver,spleen) or name=value. "
            "Default: the manifest's foreground labels, or every non-zero value found.",
        ),
        metrics: str = typer.Option(",".join(DEFAULT_METRICS), "--metrics", help=metric_help()),
        annotations: list[Path] = typer.Option(
            None, "--annotations",
            help="Folder of further reference annotations (another rater), paired by case id; repeatable. With ged "
            "in --metrics, the samples in PRED/samples (medseg predict --samples N --save-samples) are scored against "
            "--ref and these.",
        ),
        nsd_tolerance_mm: str = typer.Option(
            "1,2", "--nsd-tolerance-mm", help="NSD tolerances in mm, comma-separated."
        ),
        output: Path = typer.Option(
            None,
            "-o",
            "--output",
            help="Report folder for metrics.csv, summary.json, report.html (default: PRED/evaluation).",
        ),
        workers: int = typer.Option(None, "--workers", min=1, help="Worker processes (default: the CPUs, at most 4)."),
        resample_to_ref: bool = typer.Option(
            False, "--resample-to-ref", help="Resample predictions on another grid onto the reference's (nearest)."
        ),
        missing: str = typer.Option(
            "error",
            "--missing",
            help="References without a prediction: error (list them and stop), empty (score them as empty "
            "predictions: misses, kept in the means) or skip (leave them out; listed in summary.json).",
        ),
        images: Path = typer.Option(
            None, "--images", help="Folder of images for the overlays, by case id (default: the manifest's images)."
        ),
        worst: int = typer.Option(5, "--worst", min=0, help="Cases with overlay thumbnails (lowest foreground Dice)."),
        no_report: bool = typer.Option(False, "--no-report", help="Write metrics.csv and summary.json only."),
        instances: bool = typer.Option(
            False, "--instances",
            help="The label maps hold objects (ids 1..N): evaluate PQ, SQ, RQ, F1 and AJI per object (automatic "
            "with an instance manifest as --ref).",
        ),
    ) -> None:
        """Evaluate predictions per case × class: Dice, IoU, Hausdorff (HD, HD95), ASSD, NSD (mm); GED of samples.

        Empty masks are never NaN and never dropped from means. Both empty: Dice 1, distance 0.

        Exactly one empty: Dice 0, distance = the image diagonal (mm), counted as a miss.

        Instance label maps (an instance manifest as --ref, or --instances): panoptic quality (PQ = SQ × RQ), instance
        F1 at IoU 0.5 and AJI per case and class, pooled PQ, every object's volume (instances.csv).
        """
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Table

        from medseg.errors import EvaluationError
        from medseg.evaluation.evaluate import default_workers, summarize, write_evaluation
        from medseg.evaluation.evaluate import evaluate as run_evaluation
        from medseg.evaluation.report import REPORT_EXTRA_HINT, matplotlib_available, render_report

        if missing not in ("error", "empty", "skip"):
            raise EvaluationError(f"--missing must be error, empty or skip, got {missing!r}")
        if instances or _instance_manifest(ref):
            _evaluate_instances(pred, ref, output, resample_to_ref, missing, images, worst, no_report)
            return
        metric_names = [m.strip().lower() for m in metrics.split(",") if m.strip()]
        tolerances = _floats(nsd_tolerance_mm, "--nsd-tolerance-mm")
        out_dir = output if output is not None else pred / "evaluation"
        err = Console(stderr=True)
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as bar:
            task = bar.add_task("evaluating", total=None)

            def on_case(done: int, total: int, case_id: str) -> None:
                bar.update(task, completed=done, total=total, description=f"evaluated {case_id}")

            result = run_evaluation(
                pred,
                ref,
                labels=labels,
                metrics=metric_names,
                nsd_tolerances_mm=tolerances,
                workers=workers if workers is not None else default_workers(),
                resample_to_ref=resample_to_ref,
                missing=missing,  # type: ignore[arg-type]
                images=images,
                progress=on_case,
                annotations=list(annotations or []),
            )
        pairing = result.pairing
        reoriented = [c.case_id for c in result.cases if c.reoriented]
        if reoriented:
            err.print(f"note: {len(reoriented)} prediction(s) stored in another axis order on the reference's grid "
                      f"were reoriented losslessly: {', '.join(reoriented[:10])}", markup=False, highlight=False)
        if pairing.unpaired_predictions:
            err.print(
                f"note: {len(pairing.unpaired_predictions)} predictions have no reference and were not evaluated: "
                + ", ".join(pairing.unpaired_predictions[:10])
                + (" …" if len(pairing.unpaired_predictions) > 10 else ""),
                markup=False, highlight=False,
            )
        if pairing.missing_predictions:
            what = "scored as empty predictions" if missing == "empty" else "left out"
            err.print(
                f"note: {len(pairing.missing_predictions)} references have no prediction ({what}): "
                + ", ".join(pairing.missing_predictions[:10]),
                markup=False, highlight=False,
            )
        html = None
        if not no_report and matplotlib_available():
            html = render_report(result, worst=worst)
        paths = write_evaluation(result, out_dir, report_html=html)

        summary = summarize(result)
        console = Console(width=None if Console().is_terminal else 160)
        table = Table(title=f"{len(result.cases)} cases: mean ± std per class", show_header=True)
        table.add_column("class")
        for key in result.metric_keys:
            unit = metric_spec(key).unit
            table.add_column(f"{key} ({unit})" if unit else key, justify="right")
        for col in ("missed", "false pos.", "both empty"):
            table.add_column(col, justify="right")
        for value, name in result.labels.items():
            stats, counts = summary["statistics"][str(value)], summary["counts"][str(value)]
            cells = [_cell(stats[k]) for k in result.metric_keys]
            cells += [str(counts[k]) for k in ("missed", "false_positive", "both_empty")]
            table.add_row(escape(name if name == str(value) else f"{value} {name}"), *cells)
        console.print(table)
        console.print(f"wrote {paths['csv']}", markup=False, highlight=False)
        console.print(f"wrote {paths['json']}", markup=False, highlight=False)
        if no_report:
            return
        if html is None:
            err.print(f"no report.html: {REPORT_EXTRA_HINT}", markup=False, highlight=False)
            return
        console.print(f"report: {paths['html']}", markup=False, highlight=False)
