"""A real Orthanc PACS for tests: Debian's ``orthanc`` (+ ``orthanc-dicomweb``) on loopback ports.

Each :class:`Orthanc` gets a temporary configuration and storage folder, listens on free loopback ports (HTTP only
to this machine, ``RemoteAccessAllowed`` false) and is stopped (SIGTERM, then SIGKILL) when the test ends. Tests
skip, saying so, where the binary or the DICOMweb plugin is missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ALTERNATIVES = (DICOMWEB_PLUGIN, Path("/usr/lib/orthanc/libOrthancDicomWeb.so"))


def free_port() -> int:
    """A TCP port free on the loopback address right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_orthanc(dicomweb: bool = False) -> None:
    """Skip the test when Orthanc (or its DICOMweb plugin) is not installed."""
    if not os.access(ORTHANC, os.X_OK):
        pytest.skip("Orthanc not installed (Debian: apt-get install orthanc orthanc-dicomweb; .ci/run installs it)")
    if dicomweb and not any(p.is_file() for p in DICOMWEB_ALTERNATIVES):
        pytest.skip("Orthanc's DICOMweb plugin not installed (Debian: apt-get install orthanc-dicomweb)")


class Orthanc:
    """One Orthanc process (see the module docstring).

    Args:
        folder: Where its configuration, storage and log go.
        aet: Its AE title.
        modalities: Name → ``(AET, port)`` of DICOM nodes on 127.0.0.1 it may send to (C-STORE, C-MOVE).
        dicomweb: Load the DICOMweb plugin (``/dicom-web``).
    """

    def __init__(self, folder: Path, aet: str = "ORTHANC", modalities: dict[str, tuple[str, int]] | None = None,
                 dicomweb: bool = True) -> None:
        self.folder = folder
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        plugin = next((str(p) for p in DICOMWEB_ALTERNATIVES if p.is_file()), None)
        self.config = {
            "Name": f"medseg-test-{aet}",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "SaveJobs": False,
            "HttpTimeout": 60,
            "DicomScuTimeout": 30,
            "Plugins": [plugin] if dicomweb and plugin else [],
            "DicomWeb": {"Enable": bool(dicomweb), "Root": "/dicom-web/"},
            "DicomModalities": {
                name: {"AET": ae, "Host": "127.0.0.1", "Port": port, "AllowFind": True, "AllowGet": True,
                       "AllowMove": True, "AllowStore": True, "AllowEcho": True}
                for name, (ae, port) in (modalities or {}).items()
            },
        }

    @property
    def url(self) -> str:
        """The REST root."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root."""
        return f"{self.url}/dicom-web"

    @property
    def node(self) -> str:
        """``AET@127.0.0.1:PORT``."""
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def start(self) -> Orthanc:
        """Start and wait until the REST API answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config))
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen([ORTHANC, str(config)], stdout=log, stderr=log, cwd=self.folder)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not answer within 30 s")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """A REST call; JSON in, JSON (or bytes) out."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=120) as response:
            payload = response.read()
        try:
            return json.loads(payload)
        except ValueError:
            return payload

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def upload(self, files: list[Path]) -> None:
        """Store files through the REST API."""
        for f in files:
            self.post("/instances", f.read_bytes())

    def instances_by_modality(self) -> dict[str, int]:
        """Modality → number of instances stored."""
        out: dict[str, int] = {}
        for series_id in self.get("/series"):
            series = self.get(f"/series/{series_id}")
            modality = series["MainDicomTags"].get("Modality", "")
            out[modality] = out.get(modality, 0) + len(series["Instances"])
        return out

    def instances(self, modality: str) -> list[dict[str, Any]]:
        """The tags (``/instances/ID/simplified-tags``) of every instance of a modality."""
        found = []
        for series_id in self.get("/series"):
            series = self.get(f"/series/{series_id}")
            if series["MainDicomTags"].get("Modality") == modality:
                found += [self.get(f"/instances/{i}/simplified-tags") for i in series["Instances"]]
        return found

    def file(self, instance_id: str) -> bytes:
        """The DICOM file of an instance."""
        return self.request("GET", f"/instances/{instance_id}/file")

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(condition: Any, timeout: float, what: str, poll: float = 0.5) -> Any:
    """Poll ``condition()`` until it is truthy (returned) or ``timeout`` seconds pass (fail naming ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)

