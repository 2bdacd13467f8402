"""Helpers of the hostile-input corpus (tests/hostile/): run the command line, check what it printed and left.

Every case asserts the exit code, that stderr is a single ``medseg: error: …`` line naming the user's file (never a
temporary name, never a traceback), and — where files existed before — that nothing under a final name was
truncated or overwritten. Full-disk and read-only cases run on a small tmpfs mounted by the test when it runs as
root (CI does) and skip otherwise, saying so.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest


@dataclass
class Result:
    """What one command did."""

    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def assert_one_line_error(result: Result, code: int, *names: Any) -> str:
    """``result`` exited with ``code`` and printed exactly one ``medseg: error:`` line naming every one of ``names``.

    Returns the line.
    """
    assert result.code == code, (result.code, result.out, result.err)
    lines = result.error_lines
    assert len(lines) == 1, result.err
    line = lines[0]
    assert line.startswith("medseg: error: "), line
    assert "Traceback" not in result.err and ".tmp" not in line and "--debug" not in line, line
    for name in names:
        assert str(name) in line, (name, line)
    assert len(line) < 1500, len(line)
    return line


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder`` (hidden lock files aside), by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".medseg.lock"}


def assert_no_temporaries(folder: Path) -> None:
    leftovers = [str(p) for p in folder.rglob(".*") if ".tmp" in p.name or p.name.startswith(".medseg-write-")]
    assert not leftovers, leftovers


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def raw_nifti(path: Path, data: np.ndarray, pixdim: tuple[float, ...] = (1, 1, 1), srow: np.ndarray | None = None,
              sform_code: int = 0, qform_code: int = 0) -> Path:
    """An uncompressed NIfTI written byte by byte, so headers nibabel would refuse to write can be made."""
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header["pixdim"][1:4] = pixdim
    header["qform_code"], header["sform_code"] = qform_code, sform_code
    if srow is not None:
        header["srow_x"], header["srow_y"], header["srow_z"] = srow[0], srow[1], srow[2]
    header["vox_offset"] = 352
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.binaryblock + b"\0" * 4 + data.tobytes(order="F"))
    return path


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``folder`` (root only), yield it, unmount; skip the test where it cannot."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True,
                       capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"full-disk/read-only case needs root to mount a tmpfs ({exc}); skipped here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True, timeout=20)


def fill_disk(folder: Path) -> None:
    """Fill the file system of ``folder`` up to the last byte (unbuffered writes: nothing is left to flush)."""
    for size in (65536, 1):
        handle = open(folder / f"filler-{uuid.uuid4().hex}", "wb", buffering=0)  # noqa: SIM115
        try:
            while True:
                handle.write(b"\0" * size)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                handle.close()


def remount_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True, timeout=20)
