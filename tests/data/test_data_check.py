"""check_dataset and the ``medseg dataset`` command line: every bad case reported in one run."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from medseg.cli.main import main
from medseg.data import Case, Channel, Manifest, check_dataset, load_manifest

SHAPE = (16, 16, 8)


def _manifest(root: Path, cases: list[Case], channels: int = 1) -> Manifest:
    chans = [Channel("CT", "CT")] if channels == 1 else [Channel(f"c{i}", "MR") for i in range(channels)]
    return Manifest(name="t", channels=chans, labels={"background": 0, "liver": 1, "tumour": 2}, cases=cases, root=root)


def _messages(report) -> list[str]:
    return [str(p) for p in report.problems]


def _one_problem(root: Path, case: Case, channels: int = 1) -> str:
    report = check_dataset(_manifest(root, [case], channels))
    assert len(report.problems) == 1, _messages(report)
    problem = report.problems[0]
    assert problem.case_id == case.id
    return problem.message


@pytest.fixture
def good(tmp_path: Path, write_nifti, image_data, label_data) -> Path:
    write_nifti(tmp_path / "img.nii.gz", image_data(0))
    write_nifti(tmp_path / "lab.nii.gz", label_data())
    return tmp_path


def test_good_case(good: Path) -> None:
    report = check_dataset(_manifest(good, [Case("ok", ["img.nii.gz"], "lab.nii.gz")]))
    assert report.ok
    assert report.cases_checked == 1
    assert report.summary == "checked 1 case: no problems"


def test_missing_files(good: Path) -> None:
    report = check_dataset(_manifest(good, [Case("m", ["nope.nii.gz"], "gone.nii.gz")]))
    assert _messages(report) == [
        f"m: {good / 'nope.nii.gz'}: file not found",
        f"m: {good / 'gone.nii.gz'}: file not found",
    ]


def test_text_file_named_nii(good: Path) -> None:
    (good / "text.nii").write_text("this is not an image\n")
    message = _one_problem(good, Case("t", ["text.nii"], "lab.nii.gz"))
    assert "NIfTI" in message


def test_truncated_nii_gz(good: Path) -> None:
    data = (good / "img.nii.gz").read_bytes()
    (good / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    message = _one_problem(good, Case("t", ["cut.nii.gz"], "lab.nii.gz"))
    assert "truncated" in message or "cannot read" in message


def test_not_gzip(good: Path) -> None:
    raw = gzip.decompress((good / "img.nii.gz").read_bytes())
    (good / "plain.nii.gz").write_bytes(raw)
    message = _one_problem(good, Case("t", ["plain.nii.gz"], "lab.nii.gz"))
    assert "gzip" in message


def test_label_grid_differs(good: Path, write_nifti, label_data) -> None:
    write_nifti(good / "shape.nii.gz", label_data(shape=(16, 16, 9)))
    assert "label grid differs from the image" in _one_problem(good, Case("a", ["img.nii.gz"], "shape.nii.gz"))
    write_nifti(good / "spacing.nii.gz", label_data(), np.diag([1.0, 1.0, 2.5, 1.0]))
    message = _one_problem(good, Case("b", ["img.nii.gz"], "spacing.nii.gz"))
    assert "spacing (1, 1, 2) vs (1, 1, 2.5) mm" in message
    shifted = np.diag([1.0, 1.0, 2.0, 1.0])
    shifted[:3, 3] = [0.0, 0.0, 0.01]
    write_nifti(good / "origin.nii.gz", label_data(), shifted)
    assert "origin" in _one_problem(good, Case("c", ["img.nii.gz"], "origin.nii.gz"))
    flipped = np.diag([-1.0, 1.0, 2.0, 1.0])
    write_nifti(good / "direction.nii.gz", label_data(), flipped)
    assert "direction" in _one_problem(good, Case("d", ["img.nii.gz"], "direction.nii.gz"))


def test_label_grid_within_tolerance(good: Path, write_nifti, label_data) -> None:
    nudged = np.diag([1.0, 1.0, 2.0, 1.0])
    nudged[:3, 3] = [0.0, 0.0, 1e-5]
    write_nifti(good / "nudged.nii.gz", label_data(), nudged)
    assert check_dataset(_manifest(good, [Case("a", ["img.nii.gz"], "nudged.nii.gz")])).ok


def test_channel_grids_differ(good: Path, write_nifti, image_data) -> None:
    write_nifti(good / "c1.nii.gz", image_data(1, shape=(16, 16, 7)))
    message = _one_problem(good, Case("a", ["img.nii.gz", "c1.nii.gz"], "lab.nii.gz"), channels=2)
    assert message.startswith("grid differs from channel 'c0' (img.nii.gz); that channel vs this one: "
                              "shape (16, 16, 8) vs (16, 16, 7)")


def test_label_values_outside_set(good: Path, write_nifti, label_data) -> None:
    write_nifti(good / "bad.nii.gz", label_data(values=(0, 1, 3, 7)))
    message = _one_problem(good, Case("a", ["img.nii.gz"], "bad.nii.gz"))
    assert message == "label values outside the declared set {0, 1, 2}: 3 (16 voxels), 7 (16 voxels)"


def test_float_label_with_fractions(good: Path, write_nifti, label_data) -> None:
    lab = label_data().astype(np.float32)
    lab[0, 0, 0] = 0.5
    write_nifti(good / "frac.nii.gz", lab)
    message = _one_problem(good, Case("a", ["img.nii.gz"], "frac.nii.gz"))
    assert message.startswith("label is float32 with 1 non-integer voxel (e.g. 0.5)")


def test_float_label_with_integer_values_is_fine(good: Path, write_nifti, label_data) -> None:
    write_nifti(good / "f.nii.gz", label_data().astype(np.float32))
    assert check_dataset(_manifest(good, [Case("a", ["img.nii.gz"], "f.nii.gz")])).ok


def test_nan_and_inf_counted(good: Path, write_nifti, image_data) -> None:
    img = image_data(0)
    img[0, 0, :3] = np.nan
    img[1, 1, 1] = np.inf
    write_nifti(good / "nan.nii.gz", img)
    assert _one_problem(good, Case("a", ["nan.nii.gz"], "lab.nii.gz")) == "3 NaN and 1 Inf voxels in the image"


def test_4d_where_3d_expected(good: Path, write_nifti, image_data) -> None:
    write_nifti(good / "4d.nii.gz", image_data(0, shape=(*SHAPE, 3)))
    message = _one_problem(good, Case("a", ["4d.nii.gz"], "lab.nii.gz"))
    assert message == "holds 3 channels (a 4D image); expected one 3D volume for 'CT'"
    write_nifti(good / "4dlab.nii.gz", np.zeros((*SHAPE, 2), dtype=np.uint8))
    message = _one_problem(good, Case("b", ["img.nii.gz"], "4dlab.nii.gz"))
    assert message == "label holds 2 channels (a 4D image); expected one 3D label map"


def test_2d_image(good: Path, write_nifti) -> None:
    write_nifti(good / "2d.nii.gz", np.zeros((16, 16), dtype=np.float32))
    message = _one_problem(good, Case("a", ["2d.nii.gz"], "lab.nii.gz"))
    assert message == "2D image of shape (16, 16); expected a 3D volume"


def test_multichannel_single_file(good: Path, write_nifti, image_data) -> None:
    write_nifti(good / "both.nii.gz", image_data(0, shape=(*SHAPE, 2)))
    assert check_dataset(_manifest(good, [Case("a", ["both.nii.gz"], "lab.nii.gz")], channels=2)).ok
    message = _one_problem(good, Case("b", ["img.nii.gz"], "lab.nii.gz"), channels=2)
    assert message == "holds a 3D volume (1 channel); the manifest declares 2 channels (c0, c1) in this one file"
    img = image_data(0, shape=(*SHAPE, 2))
    img[0, 0, 0, 1] = np.nan
    write_nifti(good / "nan2.nii.gz", img)
    message = _one_problem(good, Case("c", ["nan2.nii.gz"], "lab.nii.gz"), channels=2)
    assert message == "channel 1 (c1): 1 NaN voxel in the image"


def test_unlabelled_case_checks_images_only(good: Path) -> None:
    assert check_dataset(_manifest(good, [Case("a", ["img.nii.gz"])])).ok


def _bad_dataset(root: Path, write_nifti, image_data, label_data) -> Path:
    """Five cases: one good, four bad in different ways (six problems)."""
    write_nifti(root / "imagesTr" / "good.nii.gz", image_data(0))
    write_nifti(root / "labelsTr" / "good.nii.gz", label_data())
    (root / "imagesTr" / "text.nii").write_text("not an image")
    write_nifti(root / "labelsTr" / "text.nii.gz", label_data())
    img = image_data(2)
    img[0, 0, 0] = np.nan
    write_nifti(root / "imagesTr" / "nan.nii.gz", img)
    write_nifti(root / "labelsTr" / "nan.nii.gz", label_data(values=(0, 5)))
    write_nifti(root / "imagesTr" / "grid.nii.gz", image_data(3))
    write_nifti(root / "labelsTr" / "grid.nii.gz", label_data(shape=(16, 16, 4)))
    manifest = {
        "format_version": 1,
        "name": "bad",
        "channels": [{"name": "CT", "modality": "CT"}],
        "labels": {"background": 0, "liver": 1, "tumour": 2},
        "cases": [
            {"id": "good", "images": ["imagesTr/good.nii.gz"], "label": "labelsTr/good.nii.gz"},
            {"id": "missing", "images": ["imagesTr/missing.nii.gz"], "label": "labelsTr/good2.nii.gz"},
            {"id": "text", "images": ["imagesTr/text.nii"], "label": "labelsTr/text.nii.gz"},
            {"id": "nan", "images": ["imagesTr/nan.nii.gz"], "label": "labelsTr/nan.nii.gz"},
            {"id": "grid", "images": ["imagesTr/grid.nii.gz"], "label": "labelsTr/grid.nii.gz"},
        ],
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def test_all_bad_cases_reported_in_one_run(tmp_path: Path, write_nifti, image_data, label_data) -> None:
    path = _bad_dataset(tmp_path, write_nifti, image_data, label_data)
    seen: list[tuple[int, int, str]] = []
    report = check_dataset(path, progress=lambda done, total, case_id: seen.append((done, total, case_id)))
    assert report.cases_checked == 5
    assert [s[2] for s in seen] == ["good", "missing", "text", "nan", "grid"]
    assert seen[-1][:2] == (5, 5)
    assert report.cases_with_problems == ["missing", "text", "nan", "grid"]
    assert report.summary == "checked 5 cases: 6 problems in 4 cases"
    by_case = {}
    for problem in report.problems:
        by_case.setdefault(problem.case_id, []).append(problem.message)
    assert by_case["missing"] == ["file not found", "file not found"]
    assert len(by_case["text"]) == 1
    assert by_case["nan"] == [
        "1 NaN voxel in the image",
        "label values outside the declared set {0, 1, 2}: 5 (16 voxels)",
    ]
    assert by_case["grid"][0].startswith("label grid differs from the image (grid.nii.gz); image vs label: shape")


def test_cli_check_lines_summary_and_exit_code(tmp_path: Path, write_nifti, image_data, label_data, capsys) -> None:
    path = _bad_dataset(tmp_path, write_nifti, image_data, label_data)
    rc = main(["dataset", "check", str(path)])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 1
    assert out[-1] == "checked 5 cases: 6 problems in 4 cases"
    assert len(out) == 7
    assert out[0].startswith("missing: ") and out[0].endswith("imagesTr/missing.nii.gz: file not found")
    for line in out[:-1]:
        case_id, path_text, message = line.split(": ", 2)
        assert case_id in {"missing", "text", "nan", "grid"}
        assert path_text.endswith(".nii.gz") or path_text.endswith(".nii")
        assert message


def test_cli_check_json(tmp_path: Path, write_nifti, image_data, label_data, capsys) -> None:
    path = _bad_dataset(tmp_path, write_nifti, image_data, label_data)
    rc = main(["dataset", "check", str(path), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert data["ok"] is False
    assert data["cases_checked"] == 5
    assert data["manifest"] == str(path)
    assert len(data["problems"]) == 6
    assert set(data["problems"][0]) == {"case_id", "path", "message"}
    assert Path(data["problems"][0]["path"]).is_absolute()


def test_cli_check_clean_dataset(msd_task: Path, capsys) -> None:
    rc = main(["dataset", "check", str(msd_task / "dataset.json")])
    assert rc == 0
    assert capsys.readouterr().out.strip() == "checked 4 cases: no problems"


def test_cli_manifest_error_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "m.json"
    bad.write_text('{"cases": [}')
    rc = main(["dataset", "check", str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err == f"medseg: error: {bad}: the manifest is not valid JSON: Expecting value at line 1, column 12"


def test_cli_import_then_check(nnunet_raw: Path, tmp_path: Path, capsys) -> None:
    (nnunet_raw / "imagesTr" / "._prostate_00_0000.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    out = tmp_path / "prostate.json"
    rc = main(["dataset", "import", str(nnunet_raw), "-o", str(out)])
    captured = capsys.readouterr()
    assert rc == 0
    assert "4 cases (3 labelled, 1 unlabelled)" in captured.out
    assert "medseg: warning: ignored 1 hidden or macOS ._* file" in captured.err
    assert load_manifest(out).num_channels == 2
    assert main(["dataset", "check", str(out)]) == 0
    rc = main(["dataset", "import", str(nnunet_raw), "-o", str(out)])
    assert rc == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["dataset", "import", str(nnunet_raw), "-o", str(out), "--force", "--format", "nnunet"]) == 0


def test_cli_import_error_is_one_line(nnunet_raw: Path, tmp_path: Path, capsys) -> None:
    (nnunet_raw / "imagesTr" / "prostate_01_0001.nii.gz").unlink()
    rc = main(["dataset", "import", str(nnunet_raw), "-o", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1
    assert err.startswith(f"medseg: error: {nnunet_raw}: 1 problem: imagesTr/prostate_01_0001.nii.gz missing")


def test_cli_import_bad_format_is_usage_error(msd_task: Path, tmp_path: Path, capsys) -> None:
    rc = main(["dataset", "import", str(msd_task), "-o", str(tmp_path / "m.json"), "--format", "bogus"])
    assert rc == 2


def test_label_grid_vs_separate_channel_files(good: Path, write_nifti, image_data, label_data) -> None:
    write_nifti(good / "c1.nii.gz", image_data(1))
    write_nifti(good / "small.nii.gz", label_data(shape=(8, 16, 8)))
    message = _one_problem(good, Case("a", ["img.nii.gz", "c1.nii.gz"], "small.nii.gz"), channels=2)
    assert message == ("label grid differs from the image of channel 'c0' (img.nii.gz); image vs label: "
                       "shape (16, 16, 8) vs (8, 16, 8)")


def test_empty_dicom_folder(good: Path) -> None:
    (good / "dicom").mkdir()
    (good / "dicom" / "readme.txt").write_text("no DICOM here")
    report = check_dataset(_manifest(good, [Case("a", ["dicom"], "lab.nii.gz")]))
    assert len(report.problems) == 1
    assert report.problems[0].path == str(good / "dicom")


def test_unexpected_errors_do_not_stop_the_run(good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medseg.io

    real = medseg.io.load_image

    def flaky(path, **kwargs):
        if Path(path).name == "boom.nii.gz":
            raise RuntimeError("decoder exploded")
        return real(path, **kwargs)

    monkeypatch.setattr(medseg.io, "load_image", flaky)
    (good / "boom.nii.gz").write_bytes((good / "img.nii.gz").read_bytes())
    report = check_dataset(
        _manifest(good, [Case("a", ["boom.nii.gz"], "lab.nii.gz"), Case("b", ["img.nii.gz"], "lab.nii.gz")])
    )
    assert report.cases_checked == 2
    assert [str(p) for p in report.problems] == [
        f"a: {good / 'boom.nii.gz'}: cannot read: RuntimeError: decoder exploded"
    ]
