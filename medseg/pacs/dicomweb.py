"""DICOMweb with dicomweb-client: QIDO-RS to find series, WADO-RS to fetch them, STOW-RS to store results.

A source URL names a study (every series of it), a series, or the studies of an accession number
(:func:`medseg.pacs.address.parse_dicomweb`); instances are stored by :func:`medseg.pacs.dimse.store_instance`, so
fetching again leaves the files as they were. HTTP errors and unreachable servers raise
:class:`~medseg.errors.PacsError` with the status and the URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.errors import PacsError
from medseg.pacs.address import DicomWebTarget

#: Seconds to wait for a DICOMweb response.
TIMEOUT_S = 60.0


def _client(base: str) -> Any:
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=base, timeout=TIMEOUT_S)


def _failure(exc: BaseException, what: str, base: str) -> PacsError:
    response = getattr(exc, "response", None)
    status = f"HTTP {response.status_code}" if response is not None else " ".join(str(exc).split())[:200]
    return PacsError(f"{what} failed: {status}", base)


def _value(item: dict[str, Any], tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def series_of(target: DicomWebTarget) -> list[tuple[str, str]]:
    """The ``(StudyInstanceUID, SeriesInstanceUID)`` pairs a source URL names (QIDO-RS where needed).

    Raises:
        PacsError: The URL names nothing, the server fails, or nothing matches.
    """
    if target.study_uid and target.series_uid:
        return [(target.study_uid, target.series_uid)]
    client = _client(target.base)
    studies = [target.study_uid] if target.study_uid else []
    try:
        if target.accession:
            found = client.search_for_studies(search_filters={"AccessionNumber": target.accession})
            studies = [_value(s, "0020000D") for s in found]
        if not studies:
            raise PacsError("a DICOMweb source names a study (…/studies/UID), a series (…/studies/UID/series/UID) "
                            "or an accession number (…/studies?AccessionNumber=N); nothing matches", target.base)
        pairs = []
        for study in studies:
            for item in client.search_for_series(study_instance_uid=study):
                pairs.append((study, _value(item, "0020000E")))
    except PacsError:
        raise
    except Exception as exc:
        raise _failure(exc, "QIDO-RS search", target.base) from None
    return [(s, r) for s, r in pairs if r]


def retrieve(target: DicomWebTarget, root: Path) -> dict[str, list[Path]]:
    """Fetch every series a source URL names into ``root`` (WADO-RS).

    Returns:
        SeriesInstanceUID → its files.
    """
    from medseg.pacs.dimse import store_instance

    client = _client(target.base)
    out: dict[str, list[Path]] = {}
    for study, series in series_of(target):
        try:
            datasets = client.retrieve_series(study, series)
        except Exception as exc:
            raise _failure(exc, f"WADO-RS retrieval of series {series}", target.base) from None
        out[series] = sorted({store_instance(ds, root)[0] for ds in datasets})
    return out


def store_files(files: Sequence[str | Path], base: str) -> None:
    """STOW-RS the files to the service at ``base``.

    Raises:
        PacsError: The server cannot be reached, answers with an HTTP error, or lists instances it failed to store.
    """
    import pydicom

    if not files:
        return
    datasets = [pydicom.dcmread(str(f)) for f in files]
    try:
        response = _client(base).store_instances(datasets)
    except Exception as exc:
        raise _failure(exc, "STOW-RS", base) from None
    failed = response.get("FailedSOPSequence") if response is not None else None
    if failed:
        reasons = ", ".join(f"{i.get('ReferencedSOPInstanceUID', '?')} (0x{int(i.get('FailureReason', 0)):04X})"
                            for i in failed)
        raise PacsError(f"STOW-RS refused {len(failed)} instance(s): {reasons}", base)
