"""Batch prediction over hospital scans: input discovery, prefetching, failure isolation, resumable ledger.

INPUT may be

- one image file (``.nii.gz``, ``.nrrd``, …): one case;
- a folder holding image files: one case per file (sorted by name);
- a manifest (``.json``): one case per manifest case (its channel files are stacked);
- a DICOM tree (a folder without image files): walked with :func:`medseg.io.scan_dicom`, one case per series
  (when a corrupt file stops the walk, every file is scanned on its own and the unreadable ones become failed
  cases).

:func:`run_batch` loads and preprocesses the next case in a background thread while the current one runs on the
device, records each case in the :class:`~medseg.inference.ledger.Ledger` (``running`` → ``done``/``failed``),
skips cases already done with the same input and settings, goes on after a failing case (unreadable, wrong
dimensionality, …), and ends with a summary. Progress is a rich bar with per-case timing on a terminal, plain lines
otherwise.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from medseg.errors import ImageReadError, InferenceError, MedsegError
from medseg.inference.ledger import Ledger, fingerprint_files, settings_hash
from medseg.inference.writers import (
    LABELS_FILE,
    dicom_seg_problem,
    instances_path,
    output_path,
    probabilities_path,
    rtstruct_problem,
    write_dicom_seg,
    write_instances,
    write_labels,
    write_probabilities,
    write_uncertainty,
)
from medseg.io.naming import case_id, case_id_of, image_suffix, unique_case_ids
from medseg.utils.files import FolderLock, atomic_json, is_disk_full


@dataclass
class CaseInput:
    """One case to predict.

    Attributes:
        case_id: Identifier (output file names derive from it).
        paths: Image files (one per channel), or the DICOM files of the series.
        kind: ``files`` or ``dicom``.
        series: The scanned series (``dicom``).
        error: A discovery error: the case fails with it without being loaded.
    """

    case_id: str
    paths: list[Path]
    kind: str = "files"
    series: Any = None
    error: str | None = None

    @property
    def stem(self) -> str:
        """The file name stem of the case's outputs.

        For a DICOM series with a SeriesInstanceUID: patient, series number and description
        (:func:`medseg.io.dicom_derived.series_file_stem`); otherwise the case id.
        """
        info = self.series
        if self.kind == "dicom" and info is not None and info.series_instance_uid:
            from medseg.io.dicom_derived import series_file_stem

            return series_file_stem(info.patient_id, info.series_description, info.series_instance_uid,
                                    info.series_number)
        return self.case_id

    @property
    def display(self) -> str:
        """The input as shown in the ledger: the file(s), or the series' folder."""
        if self.kind == "dicom" and self.paths:
            return str(Path(self.paths[0]).parent)
        return ";".join(str(p) for p in self.paths)

    def fingerprint(self) -> str:
        """Fingerprint of the input files (see :func:`~medseg.inference.ledger.fingerprint_files`)."""
        return fingerprint_files(sorted(self.paths))

    def load(self) -> Any:
        """Load the image (channels stacked), raising a :class:`~medseg.errors.MedsegError` on bad input."""
        if self.error is not None:
            raise ImageReadError(self.error, self.display)
        if self.kind == "dicom":
            from medseg.io.dicom import load_series

            return load_series(self.series)
        from medseg.io import load_image

        images = [load_image(p) for p in self.paths]
        if len(images) == 1:
            return images[0]
        import torch
        from monai.data import MetaTensor

        shapes = {tuple(i.shape[1:]) for i in images}
        if len(shapes) != 1:
            raise InferenceError(f"the channel images have different grids {sorted(shapes)}", self.display)
        stacked = torch.cat([i.as_tensor().float() for i in images])
        return MetaTensor(stacked, affine=images[0].affine, meta=dict(images[0].meta))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and image_suffix(p))


def _series_case_id(info: Any, root: Path) -> str:
    """A series' case id: its SeriesInstanceUID, or for an anonymised series without one, its folder."""
    if info.series_instance_uid:
        return case_id(info.series_instance_uid)
    folder = Path(info.files[0]).parent
    try:
        where = folder.relative_to(root).as_posix()
    except ValueError:
        where = folder.name
    return case_id(f"no_series_uid_{where if where != '.' else folder.name}")


def _dicom_cases(root: Path) -> list[CaseInput]:
    from medseg.io import scan_dicom
    from medseg.io.dicom import SeriesInfo, _is_dicom_file, _walk_files

    base = root if root.is_dir() else root.parent
    try:
        series = scan_dicom(root)
        failures: list[CaseInput] = []
    except ImageReadError:
        merged: dict[str, SeriesInfo] = {}
        failures = []
        for file in _walk_files(root):
            if not _is_dicom_file(file):
                continue
            try:
                found = scan_dicom(file)
            except MedsegError as exc:
                failures.append(CaseInput(case_id(f"unreadable_{file.relative_to(root)}"), [file], "dicom",
                                          error=exc.problem))
                continue
            for info in found:
                key = info.series_instance_uid or f"(no SeriesInstanceUID) {file.parent}"
                target = merged.setdefault(key, SeriesInfo(
                    info.series_instance_uid, [], info.study_instance_uid, info.patient_id, info.modality,
                    info.series_description, info.series_number))
                target.files.extend(info.files)
                target.frames += info.frames
        series = list(merged.values())
    cases = [CaseInput(_series_case_id(info, base), list(info.files), "dicom", info) for info in series]
    return cases + failures


def _checked(cases: list[CaseInput], where: Path) -> list[CaseInput]:
    """``cases`` when no two share a case id (they would write one output), else an error naming both inputs."""
    try:
        unique_case_ids(((c.case_id, c.display) for c in cases), "inputs")
    except ValueError as exc:
        raise InferenceError(str(exc), where) from None
    return cases


def discover_cases(input_path: str | Path) -> tuple[list[CaseInput], Any]:
    """The cases of INPUT (see the module docstring) and the manifest when INPUT is one.

    Case ids follow :func:`medseg.io.naming.case_id`; two inputs that would get one id are refused up front.

    Raises:
        InferenceError: INPUT does not exist, holds nothing to predict, or two of its inputs share a case id.
    """
    path = Path(input_path)
    if not path.exists():
        raise InferenceError("no such input file or folder", path)
    if path.is_file() and path.suffix.lower() == ".json":
        from medseg.data import load_manifest

        manifest = load_manifest(path)
        cases = [CaseInput(case_id(c.id), manifest.image_paths(c)) for c in manifest.cases]
        if not cases:
            raise InferenceError("the manifest has no cases", path)
        return _checked(cases, path), manifest
    if path.is_file():
        from medseg.io.image import image_format

        if image_format(path) == "dicom":
            return _checked(_dicom_cases(path), path), None
        return [CaseInput(case_id_of(path) or case_id(path.name), [path])], None
    files = _image_files(path)
    if files:
        return _checked([CaseInput(case_id_of(p) or case_id(p.name), [p]) for p in files], path), None
    try:
        return _checked(_dicom_cases(path), path), None
    except InferenceError:
        raise
    except MedsegError as exc:
        raise InferenceError(f"no image files and no DICOM series found ({exc.problem})", path) from exc


@dataclass
class BatchSummary:
    """The outcome of :func:`run_batch`.

    Attributes:
        done: Case ids predicted in this run.
        skipped: Case ids already done (same input and settings).
        failed: ``(case id, error)`` of the cases that failed (a case whose requested formats were only partly
            written counts as failed, with the formats it lacks named).
        not_attempted: Case ids left when the batch stopped early.
        stopped: Why the batch stopped early (a full disk), else empty.
        interrupted_before: Case ids a killed earlier run left unfinished (redone in this run).
        seconds: Wall time.
        timings: Case id → seconds per stage.
    """

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    not_attempted: list[str] = field(default_factory=list)
    stopped: str = ""
    interrupted_before: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, dict[str, float]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        out = []
        if self.interrupted_before:
            out.append(f"note: {len(self.interrupted_before)} case(s) left unfinished by an interrupted run were "
                       f"redone: {', '.join(self.interrupted_before[:10])}")
        out.append(f"{len(self.done)} predicted, {len(self.skipped)} already done, {len(self.failed)} failed "
                   f"in {self.seconds:.1f} s")
        out += [f"failed: {cid}: {error}" for cid, error in self.failed]
        if self.stopped:
            out.append(f"stopped: {self.stopped}; {len(self.not_attempted)} case(s) not attempted (free space and "
                       "run the same command again to resume)")
        return out


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, MedsegError):
        return str(exc)
    return f"{type(exc).__name__}: {' '.join(str(exc).split()) or 'no message'}"


class _Progress:
    """A rich progress bar on a terminal, otherwise one plain line per case."""

    def __init__(self, total: int, mode: str, stream: TextIO) -> None:
        self.stream = stream
        self.mode = mode
        self.bar: Any = None
        self.start(total)

    def start(self, total: int) -> None:
        self.total = total
        self.count = 0
        use_rich = self.mode == "rich" or (self.mode == "auto" and getattr(self.stream, "isatty", lambda: False)())
        if use_rich and total and self.bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(file=self.stream))
            self.bar.start()
            self.task = self.bar.add_task("predict", total=total)

    def case(self, case_id: str, status: str, timings: Mapping[str, float]) -> None:
        self.count += 1
        stages = ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if k != "total")
        line = f"[{self.count}/{self.total}] {case_id}: {status} in {timings.get('total', 0.0):.2f} s ({stages})"
        if self.bar is not None:
            self.bar.console.print(line)
            self.bar.update(self.task, advance=1, description=case_id)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_batch(
    predictor: Any,
    cases: Sequence[CaseInput],
    out_dir: str | Path,
    *,
    fmt: str | Sequence[str] = "nifti",
    save_probabilities: bool = False,
    label_names: Mapping[int, str] | None = None,
    settings: Mapping[str, Any] | None = None,
    progress: str = "auto",
    stream: TextIO | None = None,
    after_case: Callable[[str, str], None] | None = None,
    wait: bool = False,
    label_info: Mapping[int, Mapping[str, Any]] | None = None,
    preview: bool = False,
    part: tuple[int, int] | None = None,
) -> BatchSummary:
    """Predict every case, resumably (see the module docstring).

    Args:
        predictor: A :class:`~medseg.inference.predictor.Predictor`.
        cases: From :func:`discover_cases`.
        out_dir: Output folder (also holds ``ledger.sqlite``); locked for the duration of the batch.
        fmt: Output format(s): ``nifti``, ``nrrd``, ``png`` (one-slice images), ``dicom-seg`` and
            ``dicom-rtstruct`` (DICOM input). What a format needs is checked before a case is predicted; a case that
            cannot get one format still gets the others and is recorded as failed, naming what is missing. Files are
            named by the case's :attr:`CaseInput.stem` (patient and series description for DICOM series).
        save_probabilities: Also write ``CASE_probabilities.npz``.
            A predictor drawing samples also writes ``uncertainty/CASE_{mean_probabilities,entropy,
            mutual_information}`` and, when it keeps them, ``samples/CASE`` (:func:`~medseg.inference.writers.
            write_uncertainty`; NRRD when ``nrrd`` is among the formats and ``nifti`` is not, else NIfTI).
        label_names: Label value → name (segment labels of DICOM SEG, probability class names).
        settings: What defines the results (hashed; a change redoes the cases).
        progress: ``auto``, ``rich`` or ``plain``.
        stream: Where progress goes (default stderr).
        after_case: Called as ``after_case(case_id, status)`` after each case is recorded.
        wait: When another batch holds the output folder, wait for it instead of refusing.
        label_info: Label value → the manifest's ``code``/``category``/``color`` (DICOM coding of segments and
            ROIs, :mod:`medseg.io.segment_codes`).
        preview: Also write ``previews/STEM.png``: the prediction over the image in three planes
            (:func:`medseg.io.overlay.write_preview`).
        part: ``(I, K)``: predict only part I (0-based) of the batch split into K parts — the cases ``I, I + K,
            I + 2K, …`` of ``cases`` — side by side with the other parts in the same output folder and ledger
            (``torchrun`` ranks or scheduler array jobs); ``None``: every case.

    Returns:
        The summary. A full disk stops the batch (``summary.stopped``); ``KeyboardInterrupt`` is re-raised after the
        ledger records the interrupted run.

    Raises:
        OutputError: The output folder is in use by another batch, or cannot be written at all.
    """
    formats = [fmt] if isinstance(fmt, str) else list(dict.fromkeys(fmt))
    if preview:
        formats.append("preview")
    out = Path(out_dir)
    if part is not None:
        index, parts = part
        if not 0 <= index < parts:
            raise InferenceError(f"part {index} of {parts} does not exist (part ids run from 0 to {parts - 1})")
        cases = list(cases)[index::parts]
    with FolderLock(out, "medseg predict", wait=wait, part=part):
        names = dict(label_names or predictor.label_names)
        settings = {**dict(settings or {}), "format": ",".join(formats), "save_probabilities": save_probabilities}
        try:
            _write_label_names(out / LABELS_FILE, names)
            with Ledger(out) as ledger:
                return _run_cases(predictor, cases, out, ledger, formats, names, settings, save_probabilities,
                                  _Progress(0, progress, stream or sys.stderr), after_case, label_info or {}, part)
        except MedsegError as exc:  # a full disk before the first case (a full disk later stops inside the loop)
            if not is_disk_full(exc):
                raise
            return BatchSummary(not_attempted=[c.case_id for c in cases], stopped=str(exc))


def _write_label_names(path: Path, names: Mapping[int, str]) -> None:
    """Write ``labels.json`` unless it already says the same (a re-run writes nothing it need not)."""
    data = {str(k): v for k, v in sorted(names.items())}
    try:
        if path.is_file() and json.loads(path.read_text()) == data:
            return
    except (OSError, ValueError):
        pass
    atomic_json(path, data)


def _format_problems(formats: Sequence[str], case: CaseInput, image: Any) -> dict[str, str]:
    """Per requested format, why this case cannot be written in it (checked before predicting)."""
    meta = getattr(image, "meta", {}) or {}
    problems: dict[str, str] = {}
    for name in formats:
        if name in ("dicom-seg", "dicom-rtstruct"):
            what = "DICOM SEG" if name == "dicom-seg" else "RTSTRUCT"
            check = dicom_seg_problem if name == "dicom-seg" else rtstruct_problem
            problem = f"{what} needs a DICOM series as input" if case.kind != "dicom" else check(meta)
        elif name == "png":
            spatial = tuple(image.shape[1:])
            problem = None if spatial[-1:] == (1,) else f"PNG holds one slice, not a {spatial} volume"
        else:
            problem = None
        if problem:
            problems[name] = problem
    return problems


def _run_cases(predictor: Any, cases: Sequence[CaseInput], out: Path, ledger: Ledger, formats: Sequence[str],
               names: Mapping[int, str], settings: Mapping[str, Any], save_probabilities: bool,
               bar: _Progress, after_case: Callable[[str, str], None] | None,
               label_info: Mapping[int, Mapping[str, Any]], part: tuple[int, int] | None = None) -> BatchSummary:
    from medseg import __version__
    from medseg.io.segment_codes import describe_labels

    digest = settings_hash(settings)
    summary = BatchSummary()
    start_all = time.perf_counter()
    owner = "" if part is None else f"{part[0]}/{part[1]}"
    summary.interrupted_before = ledger.close_interrupted(owner or None)
    if part is not None:
        ledger.assign(((c.case_id, c.display) for c in cases), owner)
    ledger.begin_run(settings, owner or None)
    pending: list[tuple[CaseInput, str]] = []
    for case in cases:
        fingerprint = case.fingerprint()
        if ledger.is_done(case.case_id, fingerprint, digest):
            summary.skipped.append(case.case_id)
        else:
            pending.append((case, fingerprint))
    bar.start(len(pending))
    interrupted = False

    def load_and_prepare(case: CaseInput) -> Any:
        t0 = time.perf_counter()
        image = case.load()
        loaded = time.perf_counter() - t0
        prepared = predictor.prepare(case.case_id, image)
        prepared.seconds = {"load": loaded, **prepared.seconds}
        return prepared

    descriptions = describe_labels(names, label_info)

    def write(name: str, prediction: Any, case: CaseInput, image: Any) -> Path:
        if name == "preview":
            from medseg.io.overlay import write_preview

            return write_preview(image, prediction.labels, out / "previews" / f"{case.stem}.png", names,
                                 descriptions, title=case.stem)
        target = output_path(out, case.stem, name)
        if name in ("dicom-seg", "dicom-rtstruct"):
            source = prediction.labels.meta
            # the same instances with the same settings give the same UIDs: a result sent twice replaces itself
            seed = "|".join([digest, *map(str, source.get("sop_instance_uids") or [])])
            labels = prediction.labels[0].numpy()
            if name == "dicom-seg":
                description = f"medseg {source.get('series_description') or ''}".strip()[:64]
                write_dicom_seg(labels, source["source_files"], target, names, descriptions=descriptions,
                                software_version=__version__, series_description=description, uid_seed=seed)
            else:
                from medseg.io.rtstruct import write_rtstruct

                description = f"medseg RT {source.get('series_description') or ''}".strip()[:64]
                write_rtstruct(labels, source["source_files"], target, names,
                               affine=np.asarray(prediction.labels.affine),
                               sop_instance_uids=source["sop_instance_uids"],
                               frame_numbers=source.get("frame_numbers"), descriptions=descriptions,
                               software_version=__version__, series_description=description, uid_seed=seed)
        else:
            write_labels(prediction.labels, target)
        return target

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medseg-prefetch")
    try:
        futures: dict[int, Future[Any]] = {}
        if pending:
            futures[0] = executor.submit(load_and_prepare, pending[0][0])
        for index, (case, fingerprint) in enumerate(pending):
            started = time.perf_counter()
            timings: dict[str, float] = {}
            written: list[str] = []
            try:
                if not ledger.claim(case.case_id, case.display, fingerprint, digest, owner):
                    summary.skipped.append(case.case_id)  # done or being done by another part meanwhile
                    if index + 1 < len(pending) and index + 1 not in futures:
                        futures[index + 1] = executor.submit(load_and_prepare, pending[index + 1][0])
                    futures.pop(index).cancel()
                    continue
                prepared = futures.pop(index).result()
                if index + 1 < len(pending):
                    futures[index + 1] = executor.submit(load_and_prepare, pending[index + 1][0])
                problems = _format_problems(formats, case, prepared.image)
                if len(problems) == len(formats):
                    raise InferenceError("; ".join(problems.values()), case.display)
                prediction = predictor.predict_prepared(prepared, probabilities=save_probabilities)
                timings.update(prediction.seconds)
                t0 = time.perf_counter()
                for name in formats:
                    if name in problems:
                        continue
                    try:
                        written.append(str(write(name, prediction, case, prepared.image)))
                    except MedsegError as exc:
                        if is_disk_full(exc):
                            raise
                        problems[name] = exc.problem
                if save_probabilities and prediction.probabilities is not None:
                    written.append(str(write_probabilities(prediction.probabilities,
                                                           probabilities_path(out, case.stem), names)))
                if getattr(prediction, "uncertainty", None) is not None:
                    ending = ".nrrd" if "nrrd" in formats and "nifti" not in formats else ".nii.gz"
                    affine = np.asarray(prediction.labels.affine, dtype=np.float64)
                    written += [str(p) for p in write_uncertainty(prediction.uncertainty, affine, out, case.stem,
                                                                  ending)]
                if getattr(prediction, "instances", None) is not None:  # an instance prediction's object table
                    written.append(str(write_instances(prediction.instances, instances_path(out, case.stem),
                                                       case.case_id)))
                timings["write"] = time.perf_counter() - t0
                timings["total"] = time.perf_counter() - started
                if problems:
                    wrote = ", ".join(f for f in formats if f not in problems)
                    why = "; ".join(problems.values())
                    raise InferenceError(f"wrote {wrote}, not {', '.join(problems)}: {why}" if wrote else why,
                                         case.display)
                ledger.finish(case.case_id, written, timings)
                summary.done.append(case.case_id)
                status = "done"
            except Exception as exc:
                if index + 1 < len(pending) and index + 1 not in futures and not is_disk_full(exc):
                    futures[index + 1] = executor.submit(load_and_prepare, pending[index + 1][0])
                timings["total"] = time.perf_counter() - started
                error = _error_text(exc)
                summary.failed.append((case.case_id, error))
                status = f"failed ({error})"
                if is_disk_full(exc):
                    summary.stopped = error
                    summary.not_attempted = [c.case_id for c, _ in pending[index + 1:]]
                    with contextlib.suppress(MedsegError):  # the ledger may be on the full disk too
                        ledger.fail(case.case_id, error, timings, written)
                    bar.case(case.case_id, status, timings)
                    break
                ledger.fail(case.case_id, error, timings, written)
            summary.timings[case.case_id] = timings
            bar.case(case.case_id, status, timings)
            if after_case is not None:
                after_case(case.case_id, "done" if status == "done" else "failed")
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        bar.close()
        summary.seconds = time.perf_counter() - start_all
        with contextlib.suppress(MedsegError):
            ledger.end_run(len(summary.done), len(summary.skipped), len(summary.failed), interrupted)
    return summary
