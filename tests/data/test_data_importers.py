"""Importers: MSD task folders and nnU-Net v2 raw folders to manifests, with every layout problem reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medseg.data import detect_format, import_dataset, import_msd, import_nnunet_raw, is_junk, load_manifest
from medseg.errors import ManifestError


def test_import_msd(msd_task: Path, tmp_path: Path) -> None:
    out = tmp_path / "manifests" / "liver.json"
    result = import_msd(msd_task, out)
    assert result.path == out
    assert result.warnings == ()
    manifest = load_manifest(out)
    assert manifest.source_format == "medseg"
    assert manifest.case_ids == ["liver_0", "liver_1", "liver_2", "liver_9"]
    assert manifest.image_paths("liver_0") == [msd_task / "imagesTr" / "liver_0.nii.gz"]
    data = json.loads(out.read_text())
    # outside the manifest's folder: written absolute (relative paths never climb out through '..')
    assert data["cases"][0]["images"] == [str(msd_task / "imagesTr" / "liver_0.nii.gz")]
    assert result.manifest.case_ids == manifest.case_ids


def test_import_msd_junk_stray_and_counts(msd_task: Path, tmp_path: Path) -> None:
    (msd_task / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble
    (msd_task / ".DS_Store").write_bytes(b"junk")
    shutil.copy(msd_task / "imagesTr" / "liver_0.nii.gz", msd_task / "imagesTr" / "liver_77.nii.gz")
    data = json.loads((msd_task / "dataset.json").read_text())
    data["numTraining"] = 5
    (msd_task / "dataset.json").write_text(json.dumps(data))
    result = import_msd(msd_task / "dataset.json", tmp_path / "m.json")
    text = " | ".join(result.warnings)
    assert "imagesTr: 1 file not listed in dataset.json (ignored): liver_77.nii.gz" in text
    assert "ignored 1 hidden or macOS ._* file" in text
    assert "numTraining 5 but lists 3" in text
    assert "._liver_0" not in json.dumps(json.loads((tmp_path / "m.json").read_text()))


def test_import_msd_missing_files_listed_together(msd_task: Path, tmp_path: Path) -> None:
    (msd_task / "imagesTr" / "liver_1.nii.gz").unlink()
    (msd_task / "labelsTr" / "liver_2.nii.gz").unlink()
    with pytest.raises(ManifestError) as info:
        import_msd(msd_task, tmp_path / "m.json")
    text = str(info.value)
    assert text.startswith(str(msd_task / "dataset.json"))
    assert "2 problems" in text
    assert "imagesTr/liver_1.nii.gz missing (image of case 'liver_1')" in text
    assert "labelsTr/liver_2.nii.gz missing (label of case 'liver_2')" in text
    assert not (tmp_path / "m.json").exists()


def test_import_nnunet_v1_layout_via_msd(tmp_path: Path, write_nifti, image_data, label_data, write_json) -> None:
    root = tmp_path / "Task005_Prostate"
    for c in range(2):
        write_nifti(root / "imagesTr" / f"p_1_{c:04d}.nii.gz", image_data(c))
    write_nifti(root / "labelsTr" / "p_1.nii.gz", label_data())
    write_json(
        root / "dataset.json",
        {
            "modality": {"0": "T2", "1": "ADC"},
            "labels": {"0": "background", "1": "PZ"},
            "training": [{"image": "./imagesTr/p_1.nii.gz", "label": "./labelsTr/p_1.nii.gz"}],
            "test": [],
        },
    )
    manifest = import_msd(root, tmp_path / "m.json").manifest
    assert manifest.case("p_1").images == (
        "Task005_Prostate/imagesTr/p_1_0000.nii.gz",
        "Task005_Prostate/imagesTr/p_1_0001.nii.gz",
    )


def test_import_nnunet_raw(nnunet_raw: Path, tmp_path: Path) -> None:
    (nnunet_raw / "imagesTr" / "._prostate_00_0000.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    (nnunet_raw / "imagesTr" / "notes.txt").write_text("hello")
    result = import_nnunet_raw(nnunet_raw, nnunet_raw / "manifest.json")
    manifest = result.manifest
    assert manifest.name == "Prostate"
    assert [(c.name, c.modality) for c in manifest.channels] == [("T2", "T2"), ("ADC", "ADC")]
    assert manifest.labels == {"background": 0, "PZ": 1, "TZ": 2}
    assert manifest.case_ids == ["prostate_00", "prostate_01", "prostate_02", "prostate_50"]
    assert manifest.case("prostate_01").images == (
        "imagesTr/prostate_01_0000.nii.gz",
        "imagesTr/prostate_01_0001.nii.gz",
    )
    assert manifest.case("prostate_01").label == "labelsTr/prostate_01.nii.gz"
    assert manifest.case("prostate_50").label is None
    text = " | ".join(result.warnings)
    assert "imagesTr: 1 file not ending in .nii.gz (ignored): notes.txt" in text
    assert "ignored 1 hidden or macOS ._* file" in text


def test_import_nnunet_raw_problems_all_reported(nnunet_raw: Path, tmp_path: Path) -> None:
    (nnunet_raw / "imagesTr" / "prostate_01_0001.nii.gz").unlink()
    (nnunet_raw / "labelsTr" / "prostate_02.nii.gz").unlink()
    shutil.copy(nnunet_raw / "labelsTr" / "prostate_00.nii.gz", nnunet_raw / "imagesTr" / "prostate_09.nii.gz")
    shutil.copy(
        nnunet_raw / "imagesTr" / "prostate_00_0000.nii.gz", nnunet_raw / "imagesTr" / "prostate_00_0002.nii.gz"
    )
    with pytest.raises(ManifestError) as info:
        import_nnunet_raw(nnunet_raw, tmp_path / "m.json")
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{nnunet_raw}: 4 problems")
    assert "imagesTr/prostate_01_0001.nii.gz missing (channel 1 'ADC' of case 'prostate_01')" in text
    assert "labelsTr/prostate_02.nii.gz missing (label of case 'prostate_02')" in text
    assert "imagesTr/prostate_09.nii.gz has no channel suffix" in text
    assert "prostate_00_0002.nii.gz: channel 2 but dataset.json declares 2 channels" in text


def test_import_nnunet_num_training_mismatch(nnunet_raw: Path, tmp_path: Path) -> None:
    data = json.loads((nnunet_raw / "dataset.json").read_text())
    data["numTraining"] = 10
    (nnunet_raw / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="numTraining 10 but imagesTr holds 3 cases"):
        import_nnunet_raw(nnunet_raw, tmp_path / "m.json")


def test_import_nnunet_region_labels(nnunet_raw: Path, tmp_path: Path) -> None:
    data = json.loads((nnunet_raw / "dataset.json").read_text())
    data["labels"] = {"background": 0, "whole_tumor": [1, 2, 3], "enhancing": 3}
    data["regions_class_order"] = [1, 2, 3]
    (nnunet_raw / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="region-based labels are not supported"):
        import_nnunet_raw(nnunet_raw, tmp_path / "m.json")


def test_import_nnunet_explicit_dataset_key(nnunet_raw: Path, tmp_path: Path) -> None:
    data = json.loads((nnunet_raw / "dataset.json").read_text())
    data["numTraining"] = 1
    data["dataset"] = {
        "first": {
            "images": ["imagesTr/prostate_00_0000.nii.gz", "imagesTr/prostate_00_0001.nii.gz"],
            "label": "labelsTr/prostate_00.nii.gz",
        }
    }
    (nnunet_raw / "dataset.json").write_text(json.dumps(data))
    manifest = import_nnunet_raw(nnunet_raw, tmp_path / "m.json").manifest
    assert manifest.case_ids == ["first"]


def test_detect_format_and_auto_import(msd_task: Path, nnunet_raw: Path, tmp_path: Path) -> None:
    assert detect_format(msd_task) == "msd"
    assert detect_format(nnunet_raw / "dataset.json") == "nnunet"
    assert import_dataset(nnunet_raw, tmp_path / "a.json").manifest.num_channels == 2
    assert import_dataset(msd_task, tmp_path / "b.json", fmt="msd").manifest.num_channels == 1
    with pytest.raises(ManifestError, match="nnU-Net v2 dataset.json, not an MSD one"):
        import_dataset(nnunet_raw, tmp_path / "c.json", fmt="msd")
    with pytest.raises(ManifestError, match="missing key 'channel_names'.*use --format msd"):
        import_dataset(msd_task, tmp_path / "d.json", fmt="nnunet")


def test_import_output_and_source_errors(msd_task: Path, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="refusing to overwrite the dataset's own dataset.json"):
        import_msd(msd_task, msd_task / "dataset.json")
    existing = tmp_path / "exists.json"
    existing.write_text("{}")
    with pytest.raises(ManifestError, match="already exists"):
        import_msd(msd_task, existing)
    assert import_msd(msd_task, existing, overwrite=True).path == existing
    with pytest.raises(ManifestError, match="no such file or folder"):
        import_msd(tmp_path / "nope", tmp_path / "m.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManifestError, match="no dataset.json in this folder"):
        detect_format(empty)
    (empty / "dataset.json").write_text('{"name": "x"}')
    with pytest.raises(ManifestError, match="cannot tell the format"):
        detect_format(empty)


def test_is_junk() -> None:
    assert is_junk("._case_0000.nii.gz")
    assert is_junk(".DS_Store")
    assert not is_junk("case_0000.nii.gz")
