"""SEG coding: SNOMED CT category/type and colour from the manifest, from medseg's table, or generic; empty segments
and frames left out; reproducible UIDs; dciodvfy finds no error of medseg's making."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.errors import ManifestError
from medseg.io import load_image
from medseg.io.segment_codes import describe_label, parse_code, parse_color

pytest.importorskip("highdicom")


def test_table_laterality_and_generic() -> None:
    liver = describe_label(1, "Liver")
    assert (liver.type.value, liver.category.meaning, liver.source) == ("10200004", "Anatomical Structure", "table")
    left = describe_label(2, "kidney_left")
    assert left.type.meaning == "Kidney" and left.modifier is not None and left.modifier.meaning == "Left"
    assert describe_label(3, "Right-Kidney").modifier.meaning == "Right"  # type: ignore[union-attr]
    tumour = describe_label(4, "tumour")
    assert tumour.category.value == "49755003" and tumour.type.meaning == "Neoplasm"  # morphologically abnormal
    odd = describe_label(5, "thing 5")
    assert odd.source == "generic" and odd.type.meaning == "Tissue" and odd.color != describe_label(6, "x").color


def test_manifest_entries_win_and_are_checked(tmp_path: Path) -> None:
    from medseg.data import load_manifest

    coded = describe_label(1, "organ", {"code": "SCT:78961009", "color": "#102030"})
    assert (coded.type.meaning, coded.category.meaning, coded.color) == ("Spleen", "Anatomical Structure",
                                                                         (16, 32, 48))
    assert parse_code({"scheme": "99LOCAL", "value": "x1", "meaning": "My thing"}, "code").meaning == "My thing"
    assert parse_color([1, 2, 3], "color") == (1, 2, 3)
    (tmp_path / "ct.nii.gz").write_bytes(b"")  # a manifest names its files; they are not opened here
    data = {"name": "d", "channels": [{"name": "CT", "modality": "CT"}],
            "cases": [{"id": "a", "images": ["ct.nii.gz"]}],
            "labels": {"0": "background", "1": {"name": "liver", "code": "SCT:10200004", "color": [200, 100, 90]},
                       "2": "spleen"}}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    manifest = load_manifest(path)
    assert manifest.label_names == {0: "background", 1: "liver", 2: "spleen"}
    assert manifest.label_info == {1: {"code": "SCT:10200004", "color": [200, 100, 90]}}
    assert manifest.to_dict()["labels"]["1"] == {"name": "liver", "code": "SCT:10200004", "color": [200, 100, 90]}
    for bad, message in (({"name": "a", "color": "red"}, "#rrggbb"), ({"name": "a", "code": "10200004"},
                                                                         "SCHEME:VALUE"),
                         ({"name": "a", "shade": 1}, "unknown key"), ({"code": "SCT:1"}, "needs a string 'name'")):
        path.write_text(json.dumps({**data, "labels": {"0": "background", "1": bad}}))
        with pytest.raises(ManifestError, match=message):
            load_manifest(path)


def test_seg_carries_codes_colours_and_leaves_out_empty_segments_and_frames(shared_data: Path,
                                                                           tmp_path: Path) -> None:
    import highdicom as hd

    from medseg.inference.writers import write_dicom_seg

    series = shared_data / "prostatex_t2_series"
    source = load_image(series)
    labels = np.zeros(source.shape[1:], dtype=np.uint8)
    labels[150:230, 150:230, 6:14] = 1  # prostate
    labels[170:180, 200:210, 9:11] = 3  # a lesion; label 2 (left kidney) is empty
    names = {1: "prostate", 2: "left kidney", 3: "lesion"}
    path = write_dicom_seg(labels, source.meta["source_files"], tmp_path / "a_seg.dcm", names, uid_seed="s")
    seg = hd.seg.segread(str(path))
    assert [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()] == ["prostate",
                                                                                                 "lesion"]
    ds = pydicom.dcmread(path)
    first, second = ds.SegmentSequence
    assert first.SegmentedPropertyTypeCodeSequence[0].CodeValue == "41216001"
    assert second.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Morphologically Abnormal Structure"
    rgb = hd.color.CIELabColor.from_dicom_value(first.RecommendedDisplayCIELabValue).to_rgb()
    assert np.allclose(rgb, (230, 158, 140), atol=2)
    assert ds.NumberOfFrames == 8 + 2  # only frames holding a segment: 8 prostate slices, 2 lesion slices
    again = pydicom.dcmread(write_dicom_seg(labels, source.meta["source_files"], tmp_path / "b.dcm", names,
                                            uid_seed="s"))
    assert again.SOPInstanceUID == ds.SOPInstanceUID and again.SeriesInstanceUID == ds.SeriesInstanceUID
    from medseg.errors import InferenceError

    with pytest.raises(InferenceError, match="empty"):
        write_dicom_seg(np.zeros_like(labels), source.meta["source_files"], tmp_path / "c.dcm", names)
    if shutil.which("dciodvfy"):
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
        assert [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")] == []


def test_series_file_stem() -> None:
    from medseg.io.dicom_derived import series_file_stem

    a = series_file_stem("ProstateX-0000", "t2_tse_tra", "1.2.3", "4")
    b = series_file_stem("ProstateX-0000", "t2_tse_tra", "1.2.4", "4")
    assert a.startswith("ProstateX-0000_s4_t2_tse_tra_") and a != b and "1.2.3" not in a
    assert series_file_stem("", "", "", "") == "series"
