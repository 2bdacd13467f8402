"""Errors a user can cause and fix.

Every problem that comes from the user's input (a file, a folder, a manifest, a config) is raised as a
:class:`MedsegError` subclass. Its text is one line naming the file and the problem, so that the command line can
print it as is, without a traceback (``medseg --debug`` shows the traceback).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Longest quotation of a user's value inside an error message.
QUOTE_LIMIT = 200
#: Longest problem text; longer texts (a value that slipped through unquoted) are cut, saying by how much.
PROBLEM_LIMIT = 2000


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for quoting user input in one-line errors."""
    text = value if isinstance(value, str) and value.startswith(("'", '"')) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


class MedsegError(Exception):
    """Base class: a problem with the user's input, printed as ``PATH: PROBLEM`` on one line.

    Args:
        problem: What is wrong, in words a user understands (no trailing full stop needed).
        path: The file or folder the problem is about, when there is one.
    """

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        text = " ".join(str(problem).split())  # always one line
        if len(text) > PROBLEM_LIMIT:
            text = f"{text[:PROBLEM_LIMIT]}… ({len(text) - PROBLEM_LIMIT} more characters)"
        self.problem = text
        self.path = None if path is None else str(path)
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem


class ImageReadError(MedsegError):
    """A file or folder cannot be read as an image (missing, truncated, corrupt, unknown format)."""


class ImageWriteError(MedsegError):
    """An image cannot be written (unsupported format, geometry the format cannot store)."""


class OutputError(MedsegError):
    """A result cannot be written: a read-only folder, a full disk, no permission, an output folder in use."""


class DicomSeriesError(MedsegError):
    """A DICOM folder does not hold exactly one usable series (none, several, unsupported kind)."""


class GeometryError(MedsegError):
    """Geometry that cannot be trusted: missing slices, uneven spacing, gantry tilt, mixed orientations."""


class ImageContentError(MedsegError):
    """Voxel content a step cannot use: NaN/Inf, the wrong number of dimensions, unexpected label values."""


class ManifestError(MedsegError):
    """A dataset manifest (or a folder being imported as one) is malformed."""


class ConfigError(MedsegError):
    """A configuration file or ``--set key=value`` override is malformed."""


class ModelError(MedsegError):
    """A model cannot be built or run as asked: unknown name, unsupported dims or option, an input it cannot take."""


class PlanningError(MedsegError):
    """A dataset fingerprint or experiment plan cannot be computed or read: no labelled cases, bad or outdated file."""


class EvaluationError(MedsegError):
    """Predictions cannot be evaluated as asked: unpaired cases, mismatched grids, unknown labels or metrics."""


class TrainingError(MedsegError):
    """Training cannot run as asked: no dataset, a bad fold, a run folder whose config or plans differ on resume."""


class InferenceError(MedsegError):
    """Prediction cannot run as asked: a missing run folder or checkpoint, folds that differ, an unusable input."""


class PacsError(MedsegError):
    """A DICOM node or DICOMweb server cannot be reached, refuses a request, or answers with a failure."""
