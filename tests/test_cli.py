"""The ``medseg`` command line: help, version, info, convert, and one-line errors for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_series import write_series

from medseg import __version__
from medseg.cli.main import main
from medseg.errors import ImageReadError


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_version() -> None:
    done = subprocess.run([sys.executable, "-m", "medseg", "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == f"medseg {__version__}"


COMMANDS = [
    [], ["info"], ["convert"], ["dataset"], ["dataset", "import"], ["dataset", "check"], ["models"],
    ["fingerprint"], ["plan"], ["evaluate"],
]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(capsys, command: list[str]) -> None:
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0 and "Usage: medseg" in out


def test_usage_error_exit_code(capsys) -> None:
    code, _, err = run(capsys, "convert")
    assert code == 2 and "Missing argument" in err


def test_info_json(capsys) -> None:
    code, out, _ = run(capsys, "info", "--json")
    report = json.loads(out)
    assert code == 0 and report["medseg"] == __version__
    assert report["libraries"]["torch"] and report["libraries"]["monai"] and report["libraries"]["SimpleITK"]
    assert report["libraries"]["nibabel"] and report["libraries"]["pydicom"]
    assert report["devices"][0]["device"] == "cpu"
    code, out, _ = run(capsys, "info")
    assert code == 0 and "monai" in out and "cpu" in out


def test_convert_dicom_to_every_format(tmp_path: Path, capsys, mni_crop) -> None:
    data, affine = mni_crop
    write_series(data, affine, tmp_path / "dicom")
    for ending in (".nii.gz", ".nrrd", ".mha"):
        code, out, _ = run(capsys, "convert", str(tmp_path / "dicom"), str(tmp_path / f"ct{ending}"))
        assert code == 0 and out.startswith(f"wrote {tmp_path / f'ct{ending}'}: 40 × 48 × 12 voxels")
    code, _, _ = run(capsys, "convert", str(tmp_path / "ct.nrrd"), str(tmp_path / "back.nii"))
    back = nib.load(str(tmp_path / "back.nii"))
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)


def _bad_inputs(root: Path, data: np.ndarray, affine: np.ndarray, mni_t1_path: Path) -> dict[str, tuple[Path, str]]:
    """Every failure a user can cause with an input path, and the words its error must contain."""
    cases: dict[str, tuple[Path, str]] = {}
    raw = mni_t1_path.read_bytes()
    (root / "truncated.nii.gz").write_bytes(raw[: len(raw) // 3])
    cases["truncated"] = (root / "truncated.nii.gz", "truncated")
    (root / "text.nii").write_text("subject,age\n1,42\n" * 40)
    cases["text"] = (root / "text.nii", "not a readable NIfTI file")
    (root / "empty").mkdir()
    cases["empty"] = (root / "empty", "no DICOM files found in this folder")
    corrupt = write_series(data, affine, root / "corrupt")
    corrupt[4].write_bytes(corrupt[4].read_bytes()[:150])
    cases["corrupt"] = (root / "corrupt", f"{corrupt[4].name}: corrupt DICOM file")
    write_series(data, affine, root / "mixed" / "a")
    write_series(data, affine, root / "mixed" / "b")
    cases["mixed"] = (root / "mixed", "2 series found, choose one by SeriesInstanceUID")
    write_series(data, affine, root / "missing", skip=(3,))
    cases["missing"] = (root / "missing", "missing slice(s)")
    cases["absent"] = (root / "absent.nii.gz", "no such file or folder")
    return cases


def test_every_bad_input_is_one_line_and_nonzero(tmp_path: Path, capsys, mni_crop, mni_t1_path: Path) -> None:
    data, affine = mni_crop
    for name, (path, words) in _bad_inputs(tmp_path, data, affine, mni_t1_path).items():
        code, out, err = run(capsys, "convert", str(path), str(tmp_path / "out.nii.gz"))
        assert code == 1, name
        lines = err.strip().splitlines()
        assert len(lines) == 1, (name, err)
        assert lines[0].startswith("medseg: error: ") and str(path) in lines[0] and words in lines[0], (name, err)
        assert "Traceback" not in err + out
    assert not (tmp_path / "out.nii.gz").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError):
        main(["--debug", "convert", str(tmp_path / "none.nii.gz"), str(tmp_path / "o.nii.gz")])
    args = ["convert", str(tmp_path / "none.nii.gz"), str(tmp_path / "o.nii.gz"), "--debug"]
    done = subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "Traceback" in done.stderr and "no such file or folder" in done.stderr


def test_info_lists_cuda_devices_with_name_and_memory(monkeypatch, capsys) -> None:
    """Where CUDA is present, `medseg info` names each GPU with its memory (simulated here: CI has no GPU)."""
    import types

    import torch

    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    code, out, _ = run(capsys, "info", "--json")
    cuda = json.loads(out)["devices"][1]
    assert code == 0 and cuda == {"device": "cuda:0", "name": props.name, "memory_gb": 80.0, "capability": "9.0"}
    code, out, _ = run(capsys, "info")
    assert "NVIDIA H100 80GB HBM3" in out and "80.0 GiB" in out
