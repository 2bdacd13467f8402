"""Importers: turn a Medical Segmentation Decathlon task folder or an nnU-Net v2 raw dataset folder into a manifest.

Both read the folder's ``dataset.json``, check that every referenced file is present, and write a medseg manifest
whose paths are relative to the manifest's own folder. Problems that make the dataset unusable (missing channel
files, missing labels, misnamed files, counts that disagree with ``dataset.json``) are all collected and raised as
one :class:`~medseg.errors.ManifestError`; harmless oddities (files no case uses) come back as warnings. macOS
``._*`` resource-fork files, ``.DS_Store`` and other hidden files are ignored (and counted in a warning).

The images themselves are not opened; run :func:`medseg.data.check.check_dataset` on the result for that.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from medseg.data.manifest import (
    _INFO_KEYS,
    Case,
    Manifest,
    _clean_path,
    _parse_channels_msd,
    _parse_labels,
    load_manifest,
    manifest_from_dict,
    read_manifest_json,
    save_manifest,
)
from medseg.errors import ManifestError

#: Source formats :func:`import_dataset` understands.
SourceFormat = Literal["auto", "msd", "nnunet"]

_JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX"})
_MAX_LISTED = 10
_CHANNEL_SUFFIX_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class ImportResult:
    """What an importer wrote.

    Attributes:
        manifest: The manifest, as written (its ``root`` is the output file's folder).
        path: Absolute path of the manifest file written.
        warnings: Oddities that did not stop the import (stray files, ignored junk, stale counts), one line each.
    """

    manifest: Manifest
    path: Path
    warnings: tuple[str, ...] = ()


def is_junk(name: str) -> bool:
    """Whether a file name is operating-system clutter to ignore (macOS ``._*``, ``.DS_Store``, hidden files)."""
    return name.startswith(".") or name in _JUNK_NAMES


def detect_format(source: str | os.PathLike[str]) -> Literal["msd", "nnunet"]:
    """Tell an MSD task folder from an nnU-Net v2 raw dataset folder by the keys of its ``dataset.json``.

    nnU-Net v2 has ``channel_names`` and ``file_ending``; MSD has ``modality`` and ``training``.

    Raises:
        ManifestError: No ``dataset.json``, or its keys fit neither format.
    """
    json_path = _locate(source)[1]
    data = _read_json_object(json_path)
    if "channel_names" in data or "file_ending" in data:
        return "nnunet"
    if "training" in data or "modality" in data:
        return "msd"
    raise ManifestError(
        "cannot tell the format: dataset.json has neither 'channel_names'/'file_ending' (nnU-Net v2) nor "
        "'modality'/'training' (MSD); pass --format",
        json_path,
    )


def import_dataset(
    source: str | os.PathLike[str],
    out_manifest: str | os.PathLike[str],
    *,
    fmt: SourceFormat = "auto",
    overwrite: bool = False,
) -> ImportResult:
    """Import an MSD or nnU-Net raw folder (``fmt="auto"`` decides by :func:`detect_format`).

    Args:
        source: The dataset folder, or its ``dataset.json``.
        out_manifest: Manifest file to write.
        fmt: ``"auto"``, ``"msd"`` or ``"nnunet"``.
        overwrite: Replace ``out_manifest`` if it exists.

    Raises:
        ManifestError: The folder cannot be imported (every problem is listed in the message).
    """
    if fmt == "auto":
        fmt = detect_format(source)
    if fmt == "msd":
        return import_msd(source, out_manifest, overwrite=overwrite)
    if fmt == "nnunet":
        return import_nnunet_raw(source, out_manifest, overwrite=overwrite)
    raise ManifestError(f"unknown dataset format {fmt!r} (expected auto, msd or nnunet)")


# ---------------------------------------------------------------------------------------------------------------------
# MSD


def import_msd(
    task_dir: str | os.PathLike[str], out_manifest: str | os.PathLike[str], *, overwrite: bool = False
) -> ImportResult:
    """Import a Medical Segmentation Decathlon task folder (``dataset.json``, ``imagesTr``, ``labelsTr``, ``imagesTs``).

    Multi-modal tasks (e.g. Task01_BrainTumour, Task05_Prostate) keep their 4D files: each case gets one image
    holding all channels. nnU-Net v1 raw folders, whose ``dataset.json`` is MSD-style but whose images are split
    into ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, …, are recognised and imported with one file per channel.

    Args:
        task_dir: The task folder, or its ``dataset.json``.
        out_manifest: Manifest file to write (paths in it are relative to its folder).
        overwrite: Replace ``out_manifest`` if it exists.

    Returns:
        The :class:`ImportResult`.

    Raises:
        ManifestError: Malformed ``dataset.json``, referenced files missing (all listed), or an output path that
            would overwrite the dataset's own ``dataset.json`` or an existing file.
    """
    folder, json_path = _locate(task_dir)
    out = _output_path(out_manifest, json_path, overwrite)
    data = _read_json_object(json_path)
    if "channel_names" in data or "file_ending" in data:
        raise ManifestError(
            "this is an nnU-Net v2 dataset.json, not an MSD one; import it with --format nnunet", json_path
        )
    manifest = manifest_from_dict(data, root=folder, source=json_path)
    errors: list[str] = []
    cases = [_msd_case(manifest, case, errors) for case in manifest.cases]
    if errors:
        raise _combined(errors, json_path)
    manifest = replace(manifest, cases=tuple(cases))
    warnings: list[str] = []
    used = {manifest.resolve(p) for c in manifest.cases for p in (*c.images, *([c.label] if c.label else []))}
    junk = 0
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        stray: list[str] = []
        for entry, is_junk_entry in _entries(folder / sub):
            if is_junk_entry:
                junk += 1
            elif Path(os.path.normpath(entry)) not in used:
                stray.append(entry.name)
        if stray:
            count = _count(len(stray), "file")
            warnings.append(f"{sub}: {count} not listed in dataset.json (ignored): {_listed(stray)}")
    if junk:
        warnings.append(f"ignored {_count(junk, 'hidden or macOS ._* file')}")
    for key, expected in (("numTraining", len(manifest.labelled_cases)), ("numTest", len(manifest.unlabelled_cases))):
        stated = data.get(key)
        if isinstance(stated, int) and not isinstance(stated, bool) and stated != expected:
            warnings.append(f"dataset.json says {key} {stated} but lists {expected}; using the list")
    return _write(manifest, out, warnings)


def _msd_case(manifest: Manifest, case: Case, errors: list[str]) -> Case:
    """Check a case's files exist; expand an nnU-Net v1 ``CASE.nii.gz`` reference into its ``CASE_XXXX`` files."""
    images = list(case.images)
    if len(images) == 1 and not manifest.resolve(images[0]).exists():
        split = _split_channel_files(manifest, images[0])
        if split is not None:
            images = split
    for p in images:
        if not manifest.resolve(p).exists():
            errors.append(f"{p} missing (image of case {case.id!r})")
    if case.label is not None and not manifest.resolve(case.label).exists():
        errors.append(f"{case.label} missing (label of case {case.id!r})")
    return replace(case, images=tuple(images))


def _split_channel_files(manifest: Manifest, image: str) -> list[str] | None:
    lower = image.lower()
    ending = next((e for e in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd") if lower.endswith(e)), None)
    if ending is None:
        return None
    stem = image[: -len(ending)]
    files = [f"{stem}_{i:04d}{image[-len(ending) :]}" for i in range(manifest.num_channels)]
    if manifest.resolve(files[0]).exists():
        return files
    return None


# ---------------------------------------------------------------------------------------------------------------------
# nnU-Net v2 raw


def import_nnunet_raw(
    dataset_dir: str | os.PathLike[str], out_manifest: str | os.PathLike[str], *, overwrite: bool = False
) -> ImportResult:
    """Import an nnU-Net v2 raw dataset folder (``DatasetXXX_Name`` with ``dataset.json``, ``imagesTr``, ``labelsTr``).

    Images are ``imagesTr/{case}_{XXXX}{file_ending}`` (one file per channel ``XXXX``), labels
    ``labelsTr/{case}{file_ending}``; ``imagesTs`` (optional) gives unlabelled cases. A ``dataset`` key in
    ``dataset.json`` (explicit per-case file lists) is honoured instead of scanning the folders.

    Args:
        dataset_dir: The dataset folder, or its ``dataset.json``.
        out_manifest: Manifest file to write (paths in it are relative to its folder).
        overwrite: Replace ``out_manifest`` if it exists.

    Returns:
        The :class:`ImportResult`.

    Raises:
        ManifestError: Malformed ``dataset.json`` (missing key, region-based labels, …), missing channel or label
            files, files without a ``_XXXX`` channel suffix, channel numbers beyond ``channel_names``, or a case
            count that differs from ``numTraining`` — all listed in one message.
    """
    folder, json_path = _locate(dataset_dir)
    out = _output_path(out_manifest, json_path, overwrite)
    data = _read_json_object(json_path)
    for key in ("channel_names", "labels", "file_ending"):
        if key not in data:
            hint = " (is this an MSD dataset.json? use --format msd)" if "modality" in data else ""
            raise ManifestError(f"missing key {key!r} of an nnU-Net v2 dataset.json{hint}", json_path)
    channels = _parse_channels_msd(data["channel_names"], json_path, key="channel_names")
    labels = _parse_labels(data["labels"], json_path)
    ending = data["file_ending"]
    if not isinstance(ending, str) or not ending.startswith(".") or len(ending) < 2:
        raise ManifestError(f"'file_ending' must be a file ending like \".nii.gz\", not {ending!r}", json_path)
    errors: list[str] = []
    warnings: list[str] = []
    if "dataset" in data:
        cases = _explicit_cases(data["dataset"], json_path, len(channels), errors, folder)
    else:
        cases, junk = _scan_nnunet(folder, ending, channels, errors, warnings)
        if junk:
            warnings.append(f"ignored {_count(junk, 'hidden or macOS ._* file')}")
    stated = data.get("numTraining")
    labelled = sum(1 for c in cases if c.label is not None)
    if isinstance(stated, int) and not isinstance(stated, bool) and stated != labelled and not errors:
        errors.append(f"dataset.json says numTraining {stated} but imagesTr holds {labelled} cases")
    elif "numTraining" not in data:
        warnings.append("dataset.json has no 'numTraining' (nnU-Net requires it)")
    if errors:
        raise _combined(errors, folder)
    if not cases:
        raise ManifestError(f"no cases found (imagesTr holds no '*_0000{ending}' files)", folder)
    name = data.get("name") if isinstance(data.get("name"), str) else folder.name
    description = data.get("description") if isinstance(data.get("description"), str) else ""
    manifest = Manifest(
        name=name,
        description=description,
        channels=tuple(channels),
        labels=labels,
        cases=tuple(cases),
        root=folder,
        extra={k: data[k] for k in _INFO_KEYS if k in data},
        source=json_path,
        source_format="nnunet",
    )
    return _write(manifest, out, warnings)


def _scan_nnunet(
    folder: Path, ending: str, channels: list[Any], errors: list[str], warnings: list[str]
) -> tuple[list[Case], int]:
    n = len(channels)
    junk = 0
    if not (folder / "imagesTr").is_dir():
        errors.append("imagesTr folder missing")
        return [], 0
    found: dict[str, dict[str, dict[int, str]]] = {}
    for sub in ("imagesTr", "imagesTs"):
        stray: list[str] = []
        per_case: dict[str, dict[int, str]] = {}
        for entry, junk_entry in _entries(folder / sub):
            if junk_entry:
                junk += 1
                continue
            if entry.is_dir() or not entry.name.endswith(ending):
                stray.append(entry.name)
                continue
            stem = entry.name[: -len(ending)]
            match = _CHANNEL_SUFFIX_RE.match(stem)
            if match is None:
                errors.append(f"{sub}/{entry.name} has no channel suffix (nnU-Net names images CASE_0000{ending})")
                continue
            case_id, channel = match["case"], int(match["channel"])
            if channel >= n:
                errors.append(f"{sub}/{entry.name}: channel {channel} but dataset.json declares {_count(n, 'channel')}")
                continue
            per_case.setdefault(case_id, {})[channel] = f"{sub}/{entry.name}"
        if stray:
            warnings.append(f"{sub}: {_count(len(stray), 'file')} not ending in {ending} (ignored): {_listed(stray)}")
        found[sub] = per_case
    cases: list[Case] = []
    label_names: set[str] = set()
    for sub in ("imagesTr", "imagesTs"):
        for case_id in sorted(found[sub]):
            files = found[sub][case_id]
            missing = [i for i in range(n) if i not in files]
            for i in missing:
                errors.append(
                    f"{sub}/{case_id}_{i:04d}{ending} missing (channel {i} {channels[i].name!r} of case {case_id!r})"
                )
            if sub == "imagesTs" and case_id in found["imagesTr"]:
                errors.append(f"case {case_id!r} is in both imagesTr and imagesTs")
                continue
            label = None
            if sub == "imagesTr":
                label = f"labelsTr/{case_id}{ending}"
                label_names.add(f"{case_id}{ending}")
                if not (folder / label).is_file():
                    errors.append(f"{label} missing (label of case {case_id!r})")
            if not missing:
                cases.append(Case(id=case_id, images=tuple(files[i] for i in range(n)), label=label))
    stray_labels: list[str] = []
    for entry, junk_entry in _entries(folder / "labelsTr"):
        if junk_entry:
            junk += 1
        elif entry.name not in label_names:
            stray_labels.append(entry.name)
    if stray_labels:
        count = _count(len(stray_labels), "file")
        warnings.append(f"labelsTr: {count} without images in imagesTr (ignored): {_listed(stray_labels)}")
    if (folder / "labelsTs").is_dir():
        warnings.append("labelsTs is not part of the nnU-Net raw format; its files were ignored")
    return cases, junk


def _explicit_cases(value: Any, where: Path, n_channels: int, errors: list[str], folder: Path) -> list[Case]:
    if not isinstance(value, dict) or not value:
        raise ManifestError('\'dataset\' must be an object {case id: {"images": [...], "label": ...}}', where)
    cases: list[Case] = []
    for case_id, entry in value.items():
        ctx = f"dataset[{case_id!r}]"
        if not isinstance(entry, dict) or "images" not in entry:
            raise ManifestError(f"{ctx} must be an object with 'images' (and 'label')", where)
        images = entry["images"]
        if not isinstance(images, list) or len(images) != n_channels:
            raise ManifestError(f"{ctx}: 'images' must list {_count(n_channels, 'file')}, one per channel", where)
        paths = tuple(_clean_path(p, where, f"{ctx}.images[{i}]") for i, p in enumerate(images))
        label = entry.get("label")
        label = None if label is None else _clean_path(label, where, f"{ctx}.label")
        for p in (*paths, *([label] if label else [])):
            if not (folder / p).exists():
                errors.append(f"{p} missing (case {case_id!r})")
        cases.append(Case(id=case_id, images=paths, label=label))
    return cases


# ---------------------------------------------------------------------------------------------------------------------
# Shared helpers


def _locate(source: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Return (dataset folder, its dataset.json), accepting either."""
    path = Path(os.path.abspath(source))
    if not path.exists():
        raise ManifestError("no such file or folder", path)
    if path.is_file():
        return path.parent, path
    json_path = path / "dataset.json"
    if not json_path.is_file():
        raise ManifestError(
            "no dataset.json in this folder (MSD task folders and nnU-Net raw dataset folders have one)", path
        )
    return path, json_path


def _read_json_object(path: Path) -> dict[str, Any]:
    data = read_manifest_json(path, "dataset.json")
    if not isinstance(data, dict):
        raise ManifestError("dataset.json must hold a JSON object {...}", path)
    return data


def _output_path(out: str | os.PathLike[str], json_path: Path, overwrite: bool) -> Path:
    path = Path(os.path.abspath(out))
    if path == json_path:
        raise ManifestError("refusing to overwrite the dataset's own dataset.json; write the manifest elsewhere", path)
    if path.is_dir():
        raise ManifestError("is a folder; give the manifest file to write (e.g. FOLDER/manifest.json)", path)
    if path.exists() and not overwrite:
        raise ManifestError("already exists; choose another path or allow overwriting (--force)", path)
    return path


def _entries(folder: Path) -> Iterator[tuple[Path, bool]]:
    """Entries of ``folder`` (sorted), each with whether it is junk; nothing when the folder is absent."""
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        yield entry, is_junk(entry.name)


def _write(manifest: Manifest, out: Path, warnings: list[str]) -> ImportResult:
    path = save_manifest(manifest, out)
    return ImportResult(manifest=load_manifest(path), path=path, warnings=tuple(warnings))


def _combined(errors: list[str], where: Path) -> ManifestError:
    shown = "; ".join(errors[:_MAX_LISTED])
    more = f"; and {len(errors) - _MAX_LISTED} more" if len(errors) > _MAX_LISTED else ""
    return ManifestError(f"{_count(len(errors), 'problem')}: {shown}{more}", where)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")
