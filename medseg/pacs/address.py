"""Where DICOM comes from and goes to: a DIMSE node ``AET@HOST:PORT`` or a DICOMweb URL.

A DIMSE node is named by its application entity title (1–16 characters of the default repertoire, no backslash),
host and TCP port, written ``AET@HOST:PORT`` (an IPv6 host in brackets: ``PACS@[::1]:104``). A DICOMweb service is
an ``http://`` or ``https://`` URL: its base (``https://pacs/dicom-web``) as a destination (STOW-RS), a study
(``…/studies/UID``) or series (``…/studies/UID/series/UID``) as a source (QIDO-RS and WADO-RS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from medseg.errors import PacsError, quote

_NODE = re.compile(r"^(?P<aet>[^@]+)@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class RemoteNode:
    """A DICOM application entity reached over DIMSE.

    Attributes:
        aet: Its application entity title.
        host: Host name or address (IPv6 without brackets).
        port: TCP port.
    """

    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.aet}@{host}:{self.port}"


@dataclass(frozen=True)
class DicomWebTarget:
    """A DICOMweb service and, as a source, what to fetch from it.

    Attributes:
        base: The service root (QIDO/WADO/STOW prefix), e.g. ``http://pacs:8042/dicom-web``.
        study_uid: StudyInstanceUID from a ``…/studies/UID`` URL.
        series_uid: SeriesInstanceUID from a ``…/series/UID`` URL.
        accession: AccessionNumber from a ``…/studies?AccessionNumber=N`` URL.
    """

    base: str
    study_uid: str | None = None
    series_uid: str | None = None
    accession: str | None = None

    def __str__(self) -> str:
        return self.base


def require_pacs_extra(what: str = "DICOM networking") -> None:
    """Raise a one-line error naming the extra to install when pynetdicom or dicomweb-client is missing.

    Raises:
        PacsError: A library of the ``pacs`` extra is not installed.
    """
    import importlib.util

    missing = [name for name in ("pynetdicom", "dicomweb_client") if importlib.util.find_spec(name) is None]
    if missing:
        raise PacsError(f"{what} needs {', '.join(missing)}: pip install 'medseg[pacs]'")


def check_aet(aet: str, what: str = "AE title") -> str:
    """``aet`` when it is a valid application entity title (1–16 characters, printable, no backslash).

    Raises:
        PacsError: It is not.
    """
    text = aet.strip()
    if not 1 <= len(text) <= 16 or "\\" in text or not text.isprintable() or not text.isascii():
        raise PacsError(f"{what} {quote(aet)} is not valid (1 to 16 printable ASCII characters, no backslash)")
    return text


def parse_node(text: str) -> RemoteNode | None:
    """``AET@HOST:PORT`` as a :class:`RemoteNode`, or ``None`` when ``text`` is not of that form.

    Raises:
        PacsError: The form fits but the AE title or port is invalid.
    """
    match = _NODE.match(text.strip())
    if not match:
        return None
    port = int(match["port"])
    if not 0 < port < 65536:
        raise PacsError(f"port {port} of {quote(text)} is not a TCP port (1 to 65535)")
    return RemoteNode(check_aet(match["aet"]), match["host"].strip("[]"), port)


def parse_dicomweb(text: str) -> DicomWebTarget | None:
    """A DICOMweb URL as a :class:`DicomWebTarget`, or ``None`` when ``text`` is not an http(s) URL.

    ``…/studies/S`` names a study, ``…/studies/S/series/R`` a series, ``…/studies?AccessionNumber=N`` the studies
    of an accession number; anything else is a base URL.
    """
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    segments = [s for s in parts.path.split("/") if s]
    study = series = None
    base_segments = segments
    if "studies" in segments:
        at = segments.index("studies")
        base_segments = segments[:at]
        rest = segments[at + 1:]
        if rest:
            study = rest[0]
            if len(rest) >= 3 and rest[1] == "series":
                series = rest[2]
    query = parse_qs(parts.query)
    accession = (query.get("AccessionNumber") or query.get("00080050") or [None])[0]
    base = f"{parts.scheme}://{parts.netloc}/{'/'.join(base_segments)}".rstrip("/")
    return DicomWebTarget(base, study, series, accession)


def parse_destination(text: str) -> RemoteNode | DicomWebTarget:
    """A ``--send-to`` value: ``AET@HOST:PORT`` (C-STORE) or a DICOMweb base URL (STOW-RS).

    Raises:
        PacsError: Neither form.
    """
    node = parse_node(text)
    if node is not None:
        return node
    web = parse_dicomweb(text)
    if web is not None:
        return DicomWebTarget(web.base)
    raise PacsError(f"--send-to {quote(text)} is neither AET@HOST:PORT nor an http(s):// DICOMweb URL")


def parse_source(text: str) -> RemoteNode | DicomWebTarget | None:
    """A PACS ``--input``: ``AET@HOST:PORT`` or a DICOMweb URL; ``None`` for anything else (a local path)."""
    return parse_node(text) or parse_dicomweb(text)
