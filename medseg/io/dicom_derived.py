"""What DICOM objects derived from a series (Segmentation, RT Structure Set) share: source headers, UIDs, names.

- :func:`read_sources`: the source slices' headers with the Type 2 patient/study attributes a derived object copies;
- :func:`derived_uid`: reproducible UIDs, so the same input with the same settings yields the same SOP instance (an
  archive that receives it twice keeps one copy);
- :func:`series_file_stem`: a file name from the patient and the series description (with a short hash of the
  SeriesInstanceUID, since one patient's follow-up studies often repeat a series' description), never a bare UID;
- :func:`derived_problem`: why a loaded series cannot be referenced at all (anonymised without UIDs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Patient/study attributes a derived object must carry (Type 2: present, possibly empty), copied from the source.
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "AccessionNumber", "StudyID")


def read_sources(source_files: Sequence[str | Path], *, pixels: bool = True) -> list[Any]:
    """The source slices as pydicom datasets (one per file, in order), with the Type 2 attributes present.

    Archives often omit them (a derived object needs them present, empty is valid); an empty SpecificCharacterSet
    means the default repertoire and is dropped.

    Args:
        source_files: The files; a file listed several times (frames of one multi-frame file) is read once.
        pixels: Read the pixel data too (highdicom checks it); ``False`` reads headers only.
    """
    import pydicom

    cache: dict[str, Any] = {}
    sources = []
    for f in source_files:
        key = str(f)
        if key not in cache:
            ds = pydicom.dcmread(key, stop_before_pixels=not pixels)
            for keyword in TYPE2_PATIENT_STUDY:
                if keyword not in ds:
                    setattr(ds, keyword, "")
            if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
                del ds.SpecificCharacterSet
            cache[key] = ds
        sources.append(cache[key])
    return sources


def derived_uid(seed: str | None, kind: str) -> str:
    """A UID for a derived object: reproducible from ``seed`` (same input and settings, same UID), random without.

    Args:
        seed: Text identifying the input and the settings, or ``None``.
        kind: What the UID is for (``seg-series``, ``rtstruct-instance``, …): one seed gives each kind its own UID.
    """
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[seed, kind]) if seed else generate_uid())


def series_file_stem(patient_id: str, series_description: str, series_uid: str, series_number: str = "") -> str:
    """A file name stem for the outputs of one series: ``PATIENT_sNUMBER_DESCRIPTION_HASH``.

    ``HASH`` is the first 8 hex digits of the SHA-1 of the SeriesInstanceUID (follow-up studies often repeat a
    patient's series number and description); parts that are empty are left out.
    """
    from medseg.io.naming import case_id

    digest = hashlib.sha1(series_uid.encode()).hexdigest()[:8] if series_uid else ""
    number = f"s{series_number.strip()}" if series_number.strip() else ""
    parts = [p for p in (patient_id.strip(), number, series_description.strip()[:48], digest) if p]
    return case_id("_".join(parts)) if parts else "series"


def derived_problem(meta: Mapping[str, Any], what: str) -> str | None:
    """Why a DICOM series (the ``meta`` of its loaded image) cannot be referenced by a derived object, or ``None``.

    A derived object references its source by StudyInstanceUID, SeriesInstanceUID, SOPClassUID, each slice's
    SOPInstanceUID and the FrameOfReferenceUID; anonymisation that empties them leaves nothing to reference.

    Args:
        meta: The image's meta (from :func:`medseg.io.load_image` of a DICOM series).
        what: The format, for the message (``DICOM SEG``, ``RTSTRUCT``).
    """
    missing = [name for name, key in (("StudyInstanceUID", "study_instance_uid"),
                                      ("SeriesInstanceUID", "series_instance_uid"),
                                      ("SOPClassUID", "sop_class_uid"))
               if not str(meta.get(key) or "").strip()]
    uids = list(meta.get("sop_instance_uids") or [])
    if not uids or any(not str(u).strip() for u in uids):
        missing.append("SOPInstanceUID")
    if what == "RTSTRUCT" and not str(meta.get("frame_of_reference_uid") or "").strip():
        missing.append("FrameOfReferenceUID")
    if not meta.get("source_files"):
        missing.append("source files")
    if missing:
        return (f"cannot be written as {what}: the source series has no {', '.join(missing)} (anonymised "
                "without new UIDs?)")
    return None
