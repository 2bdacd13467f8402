"""``medseg predict -i`` from a PACS: fetch the series a DIMSE query or a DICOMweb URL names, then predict as usual.

Instances land in ``OUT/retrieved/STUDY/SERIES/`` (:func:`medseg.pacs.dimse.store_instance`: fetching again keeps the
files as they are, so the prediction ledger sees the same input and skips what is done).
"""

from __future__ import annotations

from pathlib import Path

from medseg.errors import PacsError
from medseg.pacs.address import DicomWebTarget, RemoteNode, parse_source, require_pacs_extra

RETRIEVED = "retrieved"


def fetch_source(text: str, out_dir: str | Path, *, study_uid: str | None = None, series_uid: str | None = None,
                 accession: str | None = None, method: str = "get", calling_aet: str = "MEDSEG",
                 move_port: int | None = None) -> dict[str, list[Path]] | None:
    """Fetch the series of a PACS source into ``out_dir/retrieved``; ``None`` when ``text`` is a local path.

    Args:
        text: ``AET@HOST:PORT`` (DIMSE: C-FIND then C-GET or C-MOVE) or a DICOMweb study/series URL.
        out_dir: The prediction's output folder.
        study_uid: StudyInstanceUID to fetch (DIMSE).
        series_uid: SeriesInstanceUID to fetch (DIMSE).
        accession: AccessionNumber to fetch (DIMSE).
        method: ``get`` (C-GET) or ``move`` (C-MOVE to ``calling_aet`` on ``move_port``).
        calling_aet: Our AE title.
        move_port: Where a C-MOVE delivers.

    Returns:
        SeriesInstanceUID → files, or ``None``.

    Raises:
        PacsError: The node or server fails, or nothing matches.
    """
    source = parse_source(text)
    if source is None:
        return None
    require_pacs_extra("a PACS source")
    root = Path(out_dir) / RETRIEVED
    if isinstance(source, DicomWebTarget):
        if study_uid or series_uid or accession:
            raise PacsError("a DICOMweb source names what to fetch in its URL (…/studies/UID[/series/UID] or "
                            "…/studies?AccessionNumber=N), not with --study-uid/--series-uid/--accession")
        from medseg.pacs import dicomweb

        fetched = dicomweb.retrieve(source, root)
    else:
        assert isinstance(source, RemoteNode)
        from medseg.pacs import dimse

        fetched = dimse.retrieve(source, root, study_uid=study_uid, series_uid=series_uid, accession=accession,
                                 method=method, calling_aet=calling_aet, move_port=move_port)
    empty = [uid for uid, files in fetched.items() if not files]
    if empty:
        raise PacsError(f"{source} sent no instance of series {', '.join(empty)}")
    return fetched
