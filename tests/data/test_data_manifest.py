"""Manifest format: loading (medseg and MSD forms), validation errors, saving with relative paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.data import (
    FORMAT_VERSION,
    Case,
    Channel,
    Manifest,
    Split,
    case_id_from_path,
    load_manifest,
    normalize_modality,
    save_manifest,
)
from medseg.errors import ManifestError, MedsegError

REPO = Path(__file__).resolve().parents[2]


def _own(**overrides: object) -> dict:
    data: dict = {
        "format_version": 1,
        "name": "demo",
        "description": "two MR channels",
        "channels": [{"name": "T2", "modality": "MRI"}, {"name": "ADC", "modality": "mr"}],
        "labels": {"background": 0, "PZ": 1, "TZ": 2},
        "cases": [
            {"id": "a", "images": ["imagesTr/a_0000.nii.gz", "imagesTr/a_0001.nii.gz"], "label": "labelsTr/a.nii.gz"},
            {"id": "b", "images": ["imagesTr/b.nii.gz"], "label": "labelsTr/b.nii.gz"},
            {"id": "c", "images": ["imagesTs/c_0000.nii.gz", "imagesTs/c_0001.nii.gz"]},
        ],
        "splits": [{"train": ["a"], "val": ["b"]}, {"train": ["b"], "val": ["a"]}],
    }
    data.update(overrides)
    return data


def _load_error(tmp_path: Path, data: object, write_json) -> str:
    path = write_json(tmp_path / "m.json", data)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    text = str(info.value)
    assert text.startswith(f"{path}: "), text
    assert "\n" not in text
    return text


def test_msd_dataset_json_loads_unchanged(msd_task: Path) -> None:
    manifest = load_manifest(msd_task / "dataset.json")
    assert manifest.source_format == "msd"
    assert manifest.name == "LiTS"
    assert manifest.channels == (Channel("CT", "CT"),)
    assert manifest.labels == {"background": 0, "liver": 1, "cancer": 2}
    assert manifest.case_ids == ["liver_0", "liver_1", "liver_2", "liver_9"]
    assert [c.id for c in manifest.labelled_cases] == ["liver_0", "liver_1", "liver_2"]
    assert manifest.case("liver_9").label is None
    assert manifest.case("liver_0").images == ("imagesTr/liver_0.nii.gz",)  # "./" dropped
    assert manifest.image_paths("liver_0") == [msd_task / "imagesTr" / "liver_0.nii.gz"]
    assert manifest.label_path("liver_1") == msd_task / "labelsTr" / "liver_1.nii.gz"
    assert manifest.extra["licence"] == "CC-BY-SA 4.0"
    assert "numTraining" not in manifest.extra  # derived from the lists, not kept


def test_msd_multimodal_4d_files(tmp_path: Path, write_json) -> None:
    data = {
        "name": "Prostate",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": 1,
        "training": [{"image": "./imagesTr/prostate_00.nii.gz", "label": "./labelsTr/prostate_00.nii.gz"}],
        "test": [],
    }
    manifest = load_manifest(write_json(tmp_path / "dataset.json", data))
    case = manifest.case("prostate_00")
    assert manifest.num_channels == 2
    assert manifest.is_multichannel_file(case)
    assert [c.modality for c in manifest.channels] == ["T2", "ADC"]


def test_own_format_roundtrip_and_relative_paths(tmp_path: Path, write_json) -> None:
    src = write_json(tmp_path / "ds" / "manifest.json", _own())
    manifest = load_manifest(src)
    assert manifest.format_version == FORMAT_VERSION
    assert manifest.channels == (Channel("T2", "MR"), Channel("ADC", "MR"))
    assert manifest.splits == (Split(("a",), ("b",)), Split(("b",), ("a",)))
    assert manifest.resolve("imagesTr/b.nii.gz") == tmp_path / "ds" / "imagesTr" / "b.nii.gz"
    assert manifest.is_multichannel_file(manifest.case("b"))
    assert not manifest.is_multichannel_file(manifest.case("a"))
    assert [c.id for c in manifest.unlabelled_cases] == ["c"]

    out = save_manifest(manifest, tmp_path / "elsewhere" / "sub" / "copy.json")
    written = json.loads(out.read_text())
    assert written["format_version"] == FORMAT_VERSION
    assert written["cases"][0]["images"][0] == str(tmp_path / "ds" / "imagesTr" / "a_0000.nii.gz")  # absolute: outside
    inside = json.loads(save_manifest(manifest, tmp_path / "ds" / "copy.json").read_text())
    assert inside["cases"][0]["images"][0] == "imagesTr/a_0000.nii.gz"
    assert written["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    again = load_manifest(out)
    for case in manifest.cases:
        assert again.image_paths(case.id) == manifest.image_paths(case)
        assert again.label_path(case.id) == manifest.label_path(case)
    assert again.splits == manifest.splits
    assert again.channels == manifest.channels


def test_save_msd_as_own_format(msd_task: Path) -> None:
    manifest = load_manifest(msd_task / "dataset.json")
    out = save_manifest(manifest, msd_task / "manifest.json")
    data = json.loads(out.read_text())
    assert set(data) >= {"format_version", "channels", "labels", "cases"}
    assert "training" not in data
    assert data["cases"][0] == {
        "id": "liver_0",
        "images": ["imagesTr/liver_0.nii.gz"],
        "label": "labelsTr/liver_0.nii.gz",
    }
    assert data["cases"][3] == {"id": "liver_9", "images": ["imagesTs/liver_9.nii.gz"]}
    assert data["licence"] == "CC-BY-SA 4.0"
    assert load_manifest(out).case_ids == manifest.case_ids


def test_absolute_paths_kept(tmp_path: Path, write_json) -> None:
    absolute = str(tmp_path / "data" / "x.nii.gz")
    data = _own(
        channels=[{"modality": "CT"}],
        cases=[{"id": "x", "images": [absolute], "label": None}],
        splits=[],
    )
    manifest = load_manifest(write_json(tmp_path / "m.json", data))
    assert manifest.channels == (Channel("CT", "CT"),)  # name defaults to the modality
    assert manifest.image_paths("x") == [Path(absolute)]
    assert manifest.case("x").label is None


def test_file_shared_between_cases_is_allowed(tmp_path: Path, write_json) -> None:
    # e.g. an atlas prior as a second channel of every case
    cases = [
        {"id": "a", "images": ["a.nii.gz", "atlas.nii.gz"]},
        {"id": "b", "images": ["b.nii.gz", "atlas.nii.gz"]},
    ]
    manifest = load_manifest(write_json(tmp_path / "m.json", _own(cases=cases, splits=[])))
    assert manifest.image_paths("a")[1] == manifest.image_paths("b")[1]


def test_manifest_built_in_code(tmp_path: Path) -> None:
    manifest = Manifest(
        name="code",
        channels=[Channel("CT", "CT")],
        labels={"liver": 1, "background": 0},
        cases=[Case("a", ["a.nii.gz"], "a_seg.nii.gz")],
        root=tmp_path,
    )
    assert list(manifest.labels) == ["background", "liver"]  # ordered by value
    assert manifest.label_names == {0: "background", 1: "liver"}
    with pytest.raises(ManifestError, match="duplicate case id 'a'"):
        Manifest(
            name="code",
            channels=[Channel("CT", "CT")],
            labels={"background": 0},
            cases=[Case("a", ["a.nii.gz"]), Case("a", ["b.nii.gz"])],
            root=tmp_path,
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("CT", "CT"), ("ct", "CT"), ("MRI", "MR"), (" mr ", "MR"), ("t1gd", "T1GD"), ("FLAIR", "FLAIR")],
)
def test_normalize_modality(text: str, expected: str) -> None:
    assert normalize_modality(text) == expected


def test_case_id_from_path() -> None:
    assert case_id_from_path("./imagesTr/liver_0.nii.gz") == "liver_0"
    assert case_id_from_path("a/b/scan.nrrd") == "scan"
    assert case_id_from_path("dicom/patient_7/") == "patient_7"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            _own(cases=[{"id": "a", "images": ["x.nii.gz"]}, {"id": "a", "images": ["y.nii.gz"]}]),
            "duplicate case id 'a'",
        ),
        (_own(labels={"background": 0, "x": 1, "y": 1}), "value 1 is used by 'x' and 'y'"),
        (_own(labels={"background": 0, "x": -1}), "'x': -1 is negative"),
        (_own(labels={"background": 0, "x": 1.5}), "'x': 1.5 is not an integer"),
        (_own(labels={"background": 0, "x": True}), "'x': true is not an integer"),
        (_own(labels={"liver": 1}), "background 0 is missing"),
        (_own(labels={"background": 0, "tumor": [1, 2]}), "region-based labels are not supported"),
        (_own(labels={"0": "background", "one": "liver"}), "key 'one' is not an integer"),
        (_own(splits=[{"train": ["a", "zzz"], "val": ["b"]}]), "splits[0].train: unknown case ids 'zzz'"),
        (_own(splits=[{"train": ["a"], "val": ["a"]}]), "cases in both train and val 'a'"),
        (_own(splits=[{"train": ["a"], "val": ["c"]}]), "splits[0].val: cases without a label 'c'"),
        (_own(splits=[{"train": ["a", "a"], "val": []}]), "case 'a' is listed twice"),
        (_own(splits=[{"train": ["a"]}]), "splits[0]: missing key 'val'"),
        (_own(splits=[{"train": [], "val": ["a"]}]), "'train' is empty"),
        (_own(splits={"train": ["a"]}), "'splits' must be a list"),
        (_own(cases=[{"id": "a", "images": ["x", "y", "z"]}]), "lists 3 images but the manifest declares 2 channels"),
        (_own(cases=[{"id": "a", "imgs": ["x"]}]), "unknown key 'imgs' (did you mean 'images'?)"),
        (_own(cases=[{"images": ["x"]}]), "cases[0]: missing key 'id'"),
        (_own(cases=[{"id": "a"}]), "missing key 'images'"),
        (_own(cases=[{"id": "a/b", "images": ["x"]}]), "must be usable as a file name"),
        (_own(cases=[{"id": 3, "images": ["x"]}]), "'id' must be a string, not a number"),
        (_own(cases=[{"id": "a", "images": [""]}]), "empty path"),
        (_own(cases=[{"id": "a", "images": ["$DATA/x.nii.gz"]}]), "environment variables in paths are not supported"),
        (_own(cases=[{"id": "a", "images": ["x.nii.gz"], "label": "x.nii.gz"}]), "is used twice in that case"),
        (_own(cases=[{"id": "a", "images": ["x.nii.gz", "./x.nii.gz"]}], splits=[]), "is used twice in that case"),
        (_own(cases=[]), "no cases"),
        (_own(cases="all"), "'cases' must be a list"),
        (_own(channels=[]), "'channels' must be a non-empty list"),
        (_own(channels=[{"name": "T2"}]), "missing or empty 'modality'"),
        (_own(channels=[{"modality": "MR"}, {"modality": "MR"}]), "channel name 'MR' is used twice"),
        (_own(format_version=99), "newer than this medseg reads"),
        (_own(format_version="1"), "'format_version' must be a positive integer"),
        (_own(split=[]), "unknown key 'split' (did you mean 'splits'?)"),
        ({"name": "x"}, "missing key 'cases' (a medseg manifest) or 'training'"),
        ([1, 2], "must be a JSON object"),
        ({**_own(), "training": []}, "has both 'cases'"),
        (
            {"modality": {"0": "CT"}, "training": [{"label": "x"}], "labels": {"0": "bg"}},
            "training[0]: missing key 'image'",
        ),
        ({"modality": {"1": "CT"}, "training": [], "labels": {"0": "bg"}}, "channel indices must be 0..0"),
        ({"training": [{"image": "x.nii.gz"}], "labels": {"0": "bg"}}, "missing key 'modality'"),
        ({"modality": {"0": "CT"}, "training": [{"image": "x.nii.gz"}]}, "missing key 'labels'"),
        (
            {"channel_names": {"0": "CT"}, "labels": {"background": 0}, "file_ending": ".nii.gz"},
            "this is an nnU-Net v2 dataset.json",
        ),
        (
            {
                "modality": {"0": "CT"},
                "labels": {"0": "bg"},
                "training": [{"image": "a/x.nii.gz"}],
                "test": ["b/x.nii"],
            },
            "duplicate case id 'x'",
        ),
    ],
)
def test_invalid_manifests(tmp_path: Path, write_json, data: object, message: str) -> None:
    assert message in _load_error(tmp_path, data, write_json)


def test_bad_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{\n  "name": "x",\n  "cases": [\n    {"id": "a",}\n  ]\n}\n')
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value).startswith(f"{path}: the manifest is not valid JSON: ")
    assert "at line 4, column" in str(info.value)


def test_duplicate_json_key(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"name": "x", "name": "y", "cases": []}')
    with pytest.raises(ManifestError, match="key 'name' appears twice"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("", "the manifest is empty"), (b"\xff\xfe\x00garbage", "not UTF-8 text"),
     ("dir", "is a folder")],
)
def test_unreadable_manifest_files(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "m.json"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    with pytest.raises(MedsegError, match=message):
        load_manifest(path)


def test_save_manifest_unwritable(tmp_path: Path, msd_task: Path) -> None:
    manifest = load_manifest(msd_task / "dataset.json")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ManifestError, match="cannot write the manifest"):
        save_manifest(manifest, blocker / "m.json")


def test_example_manifests_in_repo_are_valid() -> None:
    examples = sorted((REPO / "data_manifests").glob("*.json"))
    assert examples, "data_manifests/ should hold at least one example manifest"
    for path in examples:
        manifest = load_manifest(path)
        assert manifest.cases
        for case in manifest.cases:
            assert len(case.images) in (1, manifest.num_channels)


def test_msd_image_list_and_single_string_images(tmp_path: Path, write_json) -> None:
    msd = {
        "modality": {"0": "T1", "1": "T2"},
        "labels": {"0": "background", "1": "lesion"},
        "training": [{"image": ["./t1/a.nii.gz", "./t2/a.nii.gz"], "label": "./seg/a.nii.gz"}],
    }
    manifest = load_manifest(write_json(tmp_path / "msd.json", msd))
    assert manifest.case("a").images == ("t1/a.nii.gz", "t2/a.nii.gz")
    own = _own(cases=[{"id": "x", "images": "x.nii.gz"}], splits=[])
    assert load_manifest(write_json(tmp_path / "own.json", own)).case("x").images == ("x.nii.gz",)


def test_msd_unknown_keys_ignored_and_roundtrip(msd_task: Path) -> None:
    data = json.loads((msd_task / "dataset.json").read_text())
    data["validation"] = [{"image": "./imagesTr/liver_0.nii.gz"}]
    (msd_task / "dataset.json").write_text(json.dumps(data))
    manifest = load_manifest(msd_task / "dataset.json")
    assert "validation" not in manifest.extra
    saved = save_manifest(manifest, msd_task / "m.json")
    assert load_manifest(saved).extra == {
        "reference": "Cancer Imaging Archive",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0 04/05/2018",
        "tensorImageSize": "3D",
    }
