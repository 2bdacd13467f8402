"""Checking every case of a dataset: readable files, 3D volumes, matching grids, finite intensities, valid labels.

:func:`check_dataset` loads one case at a time (at most two volumes in memory at once), never stops at a bad case,
and turns every problem into a :class:`Problem` line ``case_id: path: what is wrong``.

Grid comparisons use :func:`medseg.io.grid_differences`: shape must be equal; spacing and origin must agree within
``medseg.io.geometry.SPACING_ATOL_MM`` / ``ORIGIN_ATOL_MM`` (1e-3 mm); direction cosines within
``medseg.io.geometry.DIRECTION_ATOL`` (1e-4).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.data.manifest import Case, Manifest, load_manifest
from medseg.errors import MedsegError

if TYPE_CHECKING:
    import torch

#: Called after each case with (cases done, cases in total, id of the case just checked).
ProgressCallback = Callable[[int, int, str], None]

_MAX_VALUES_SHOWN = 10


@dataclass(frozen=True)
class Problem:
    """One problem found in one file of one case.

    Attributes:
        case_id: The case.
        path: Absolute path of the file (or DICOM folder) the problem is in.
        message: What is wrong, one line.
    """

    case_id: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.case_id}: {self.path}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"case_id": self.case_id, "path": self.path, "message": self.message}


@dataclass
class CheckReport:
    """The result of :func:`check_dataset`.

    Attributes:
        manifest: Path of the manifest checked (``None`` for a manifest built in code).
        cases_checked: Number of cases checked.
        problems: Every problem found, in case order.
        notes: Things handled that the user should know of (a label reoriented onto its image's grid).
    """

    manifest: str | None
    cases_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not self.problems

    @property
    def cases_with_problems(self) -> list[str]:
        """Ids of the cases with at least one problem, in order."""
        return list(dict.fromkeys(p.case_id for p in self.problems))

    @property
    def summary(self) -> str:
        """One line, e.g. ``checked 12 cases: 3 problems in 2 cases`` or ``checked 12 cases: no problems``."""
        head = f"checked {_count(self.cases_checked, 'case')}"
        if self.ok:
            return f"{head}: no problems"
        return f"{head}: {_count(len(self.problems), 'problem')} in {_count(len(self.cases_with_problems), 'case')}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: manifest, cases_checked, cases_with_problems, problems, summary, ok."""
        return {
            "manifest": self.manifest,
            "cases_checked": self.cases_checked,
            "cases_with_problems": self.cases_with_problems,
            "problems": [p.to_dict() for p in self.problems],
            "notes": [p.to_dict() for p in self.notes],
            "summary": self.summary,
            "ok": self.ok,
        }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def check_dataset(
    manifest: Manifest | str | os.PathLike[str], *, progress: ProgressCallback | None = None
) -> CheckReport:
    """Check every case of a dataset and report all problems.

    Args:
        manifest: A :class:`Manifest`, or the path of a manifest file to load.
        progress: Called after each case with (cases done, total, case id).

    Returns:
        The :class:`CheckReport`; ``report.ok`` is ``False`` when any problem was found.

    Raises:
        ManifestError: ``manifest`` is a path and the manifest itself cannot be loaded.
    """
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    report = CheckReport(manifest=None if manifest.source is None else str(manifest.source))
    total = len(manifest.cases)
    for done, case in enumerate(manifest.cases, start=1):
        try:
            report.problems.extend(check_case(manifest, case, report.notes))
        except Exception as exc:  # a bug or an unforeseen file: report it and go on with the next case
            path = str(manifest.image_paths(case)[0])
            report.problems.append(Problem(case.id, path, f"unexpected error while checking: {_describe(exc)}"))
        report.cases_checked = done
        if progress is not None:
            progress(done, total, case.id)
    return report


def check_case(manifest: Manifest, case: Case, notes: list[Problem] | None = None) -> list[Problem]:
    """Check one case's images and label; return its problems (empty when it is fine).

    Images must be 3D scalar volumes, one per channel, or one file holding all channels (``C`` equal to the number
    of channels); all channels must share one grid; intensities must be finite. The label must be a 3D scalar
    volume on the image grid (or on the same world grid with its axes permuted or flipped: reported in ``notes``),
    with integer values from the manifest's ``labels`` — or, in an instance manifest, object ids that fit its class
    table (:func:`medseg.data.instances.instance_problems`).
    """
    from medseg.io.align import REORIENTED_NOTE, match_grid
    from medseg.io.geometry import as_geometry, grid_differences

    problems: list[Problem] = []

    def add(path: Path, message: str) -> None:
        problems.append(Problem(case.id, str(path), message))

    multi = manifest.is_multichannel_file(case)
    n = manifest.num_channels
    reference = None
    reference_desc = label_desc = ""
    for index, path in enumerate(manifest.image_paths(case)):
        channel = manifest.channels[index]
        image = _load(path, add)
        if image is None:
            continue
        try:
            if not _spatial_3d(image, path, add):
                continue
            channels = int(image.shape[0])
            if multi and channels != n:
                names = ", ".join(c.name for c in manifest.channels)
                what = "a 3D volume (1 channel)" if channels == 1 else f"{channels} channels"
                add(path, f"holds {what}; the manifest declares {n} channels ({names}) in this one file")
            elif not multi and channels != 1:
                add(path, f"holds {channels} channels (a 4D image); expected one 3D volume for {channel.name!r}")
            _check_finite(image, path, add, [c.name for c in manifest.channels] if multi else [channel.name])
            geometry = as_geometry(image)
        finally:
            del image
        if reference is None:
            reference = geometry
            reference_desc = f"channel {channel.name!r} ({path.name})"
            label_desc = f"the image ({path.name})" if n == 1 or multi else f"the image of {reference_desc}"
            continue
        differences = grid_differences(reference, geometry)
        if differences:
            add(path, f"grid differs from {reference_desc}; that channel vs this one: {'; '.join(differences)}")
    label_path = manifest.label_path(case)
    if label_path is None:
        return problems
    label = _load(label_path, add)
    if label is None:
        return problems
    try:
        if not _spatial_3d(label, label_path, add):
            return problems
        if label.shape[0] != 1:
            add(label_path, f"label holds {label.shape[0]} channels (a 4D image); expected one 3D label map")
        if reference is not None:
            match = match_grid(label, reference)
            if match.image is None:
                add(label_path, f"label grid differs from {label_desc}; image vs label: "
                                f"{'; '.join(match.differences)}")
            elif match.reoriented and notes is not None:
                notes.append(Problem(case.id, str(label_path), f"label {REORIENTED_NOTE}"))
        _check_label_values(label, label_path, add, manifest, case)
    finally:
        del label
    return problems


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:400] if text else type(exc).__name__


def _load(path: Path, add: Callable[[Path, str], None]) -> Any:
    from medseg.io import load_image

    if not path.exists():
        add(path, "file not found" if path.suffix else "file or folder not found")
        return None
    try:
        return load_image(path)
    except MedsegError as exc:
        add(path, exc.problem)
    except MemoryError:
        add(path, "not enough memory to load this image")
    except Exception as exc:
        add(path, f"cannot read: {_describe(exc)}")
    return None


def _spatial_3d(image: torch.Tensor, path: Path, add: Callable[[Path, str], None]) -> bool:
    spatial = tuple(int(s) for s in image.shape[1:])
    if len(spatial) != 3:
        add(path, f"{len(spatial)}D image of shape {spatial}; expected a 3D volume")
        return False
    if min(spatial) == 0:
        add(path, f"empty image of shape {spatial}")
        return False
    return True


def _check_finite(image: torch.Tensor, path: Path, add: Callable[[Path, str], None], names: list[str]) -> None:
    import torch

    if not image.is_floating_point():
        return
    tensor = image.as_tensor() if hasattr(image, "as_tensor") else image
    for c in range(int(tensor.shape[0])):
        data = tensor[c]
        nan = int(torch.isnan(data).sum())
        inf = int(torch.isinf(data).sum())
        if not nan and not inf:
            continue
        parts = [f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else ""]
        counts = " and ".join(p for p in parts if p)
        where = f"channel {c} ({names[c]}): " if len(names) > 1 and c < len(names) else ""
        add(path, f"{where}{counts} voxel{'s' if nan + inf != 1 else ''} in the image")


def _dtype_name(image: Any) -> str:
    original = getattr(image, "meta", {}).get("original_dtype") if hasattr(image, "meta") else None
    try:
        return np.dtype(original).name if original else str(image.dtype).replace("torch.", "")
    except TypeError:
        return str(original)


def _fmt_number(value: float) -> str:
    return f"{value:g}"


def _check_label_values(label: Any, path: Path, add: Callable[[Path, str], None], manifest: Manifest,
                        case: Case | None = None) -> None:
    import torch

    data = label.as_tensor() if hasattr(label, "as_tensor") else label
    if data.is_floating_point():
        finite = torch.isfinite(data)
        nonfinite = int((~finite).sum())
        if nonfinite:
            add(path, f"label has {nonfinite} NaN/Inf voxel{'s' if nonfinite != 1 else ''}")
        fractional = finite & (data != torch.round(data))
        n_fractional = int(fractional.sum())
        if n_fractional:
            examples = torch.unique(data[fractional])[:3].tolist()
            shown = ", ".join(_fmt_number(v) for v in examples)
            add(
                path,
                f"label is {_dtype_name(label)} with {n_fractional} non-integer voxel"
                f"{'s' if n_fractional != 1 else ''} (e.g. {shown}); label values must be integers",
            )
        keep = finite & ~fractional
        values, counts = torch.unique(torch.round(data[keep]).to(torch.int64), return_counts=True)
        del finite, fractional, keep
    else:
        values, counts = torch.unique(data, return_counts=True)
    if manifest.is_instance and case is not None:
        from medseg.data.instances import instance_problems

        for problem in instance_problems(values.numpy(), counts.numpy(), manifest, case):
            add(path, problem)
        return
    declared = set(manifest.label_values)
    bad = [(int(v), int(c)) for v, c in zip(values.tolist(), counts.tolist(), strict=True) if int(v) not in declared]
    if not bad:
        return
    shown = ", ".join(f"{v} ({c} voxel{'s' if c != 1 else ''})" for v, c in bad[:_MAX_VALUES_SHOWN])
    more = f" and {len(bad) - _MAX_VALUES_SHOWN} more" if len(bad) > _MAX_VALUES_SHOWN else ""
    allowed = ", ".join(str(v) for v in sorted(declared))
    add(path, f"label values outside the declared set {{{allowed}}}: {shown}{more}")
