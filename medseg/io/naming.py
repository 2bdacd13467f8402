"""File endings and case ids: which files are images, and the one rule that turns a file or a name into a case id.

A case id names every output of a case (``<id>.nii.gz``, ``<id>_probabilities.npz``, the ledger row), and pairs
predictions with references in ``medseg evaluate``. The rule (:func:`case_id`): letters, digits, ``.``, ``_`` and
``-`` are kept, every other run of characters becomes one ``_``, and leading/trailing ``.``/``_`` are dropped
(``"a b.nii.gz"`` → ``a_b``). A file's case id is its name without its image ending (``.nii.gz`` counts as one
ending). Two inputs that map to one case id (``a b.nii.gz`` and ``a_b.nii.gz``; ``c.nii.gz`` and ``c.nrrd``) are an
error naming both files (:func:`unique_case_ids`): they would write one output.

This module imports nothing else of medseg (it is a leaf of :mod:`medseg.io`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

#: NIfTI endings (read and written with nibabel).
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: NRRD and MetaImage endings (read and written with SimpleITK).
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
#: 2D pictures that hold label maps losslessly (read and written).
PICTURE_WRITE_SUFFIXES = (".png", ".tif", ".tiff")
#: 2D pictures read only (JPEG is lossy, BMP is written by nothing here).
PICTURE_READ_ONLY_SUFFIXES = (".jpg", ".jpeg", ".bmp")
PICTURE_SUFFIXES = (*PICTURE_WRITE_SUFFIXES, *PICTURE_READ_ONLY_SUFFIXES)
#: Every image file ending :func:`medseg.io.load_image` reads (DICOM series are folders; single DICOM files end in
#: ``.dcm`` or nothing).
READ_SUFFIXES = (*NIFTI_SUFFIXES, *ITK_SUFFIXES, *PICTURE_SUFFIXES)
#: Every ending :func:`medseg.io.save_image` writes.
WRITE_SUFFIXES = (*NIFTI_SUFFIXES, *ITK_SUFFIXES, *PICTURE_WRITE_SUFFIXES)
#: Endings of files that can hold a label map exactly (JPEG cannot).
LABEL_SUFFIXES = tuple(s for s in READ_SUFFIXES if s not in (".jpg", ".jpeg"))
#: A single DICOM file (a DICOM Segmentation, or one slice).
DICOM_SUFFIX = ".dcm"
#: Label maps and DICOM Segmentations: what ``medseg evaluate`` and ``medseg volumes`` read from a folder.
SEGMENTATION_SUFFIXES = (*LABEL_SUFFIXES, DICOM_SUFFIX)

#: Sub-folders of a prediction folder for what ``medseg predict --samples`` adds beside the label maps: uncertainty
#: maps (``uncertainty/CASE_entropy.nii.gz``, …) and each draw's label map (``samples/CASE.nii.gz``, one channel per
#: draw, which ``medseg evaluate --metrics ged`` reads). They are not label maps of the cases, so commands that read a
#: folder's label maps (``evaluate``, ``volumes``) do not meet them.
UNCERTAINTY_FOLDER = "uncertainty"
SAMPLES_FOLDER = "samples"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def image_suffix(path: str | Path, endings: Iterable[str] = READ_SUFFIXES) -> str:
    """The lower-case ending of ``path`` among ``endings`` (``.nii.gz`` counts as one), or ``""``."""
    name = Path(path).name.lower()
    return next((s for s in endings if name.endswith(s) and len(name) > len(s)), "")


def case_id(text: str) -> str:
    """The case id of a name (see the module docstring): safe as a file name, never empty."""
    return _UNSAFE.sub("_", text).strip("._") or "case"


def case_id_of(path: str | Path, endings: Iterable[str] = READ_SUFFIXES) -> str | None:
    """The case id of an image file (its name without its ending), or ``None`` when no ending of ``endings`` fits."""
    name = Path(path).name
    suffix = image_suffix(name, endings)
    return case_id(name[: -len(suffix)]) if suffix else None


def unique_case_ids(items: Iterable[tuple[str, str]], what: str = "inputs") -> dict[str, str]:
    """Check that no two inputs share a case id.

    Args:
        items: ``(case id, what it came from)`` pairs, e.g. ``("a_b", "/data/a b.nii.gz")``.
        what: What the inputs are, for the message.

    Returns:
        Case id → source.

    Raises:
        ValueError: Two inputs map to one case id; the message names both (callers re-raise it as their own
            :class:`~medseg.errors.MedsegError` with the folder).
    """
    seen: dict[str, str] = {}
    for cid, source in items:
        if cid in seen:
            raise ValueError(f"two {what} map to case id {cid!r}: {seen[cid]} and {source} (each would write the "
                             f"same output; rename one)")
        seen[cid] = source
    return seen
