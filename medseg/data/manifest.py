"""Dataset manifests: one JSON file listing a dataset's channels, labels, cases and fixed splits.

The format is a superset of the Medical Segmentation Decathlon (MSD) ``dataset.json``: an MSD file loads unchanged,
and :func:`save_manifest` writes medseg's own form (``format_version``, ``channels``, ``cases``, ``splits``). Paths
are relative to the manifest's folder unless absolute. ``data_manifests/README.md`` documents every key.

Loading validates everything that can be checked without opening the images (structure, types, label values,
unique case ids, split membership, one image per channel); :func:`medseg.data.check.check_dataset` checks the images.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from medseg.errors import ManifestError, OutputError, quote
from medseg.io.naming import DICOM_SUFFIX, READ_SUFFIXES, case_id, case_id_of
from medseg.utils.files import atomic_text, read_json

#: Version of the manifest format written by :func:`save_manifest`. Files without ``format_version`` count as 1.
FORMAT_VERSION = 1

#: Image endings stripped from a file name to derive a case id (longest first).

#: Top-level keys of medseg's own format.
_OWN_KEYS = ("format_version", "name", "description", "task", "channels", "labels", "cases", "splits")
#: What a manifest's label maps hold: one class per voxel, or objects (one id per object, a class per id).
TASKS = ("semantic", "instance")
#: Largest object id an instance label map may hold (the preprocessed cache stores labels as int16).
MAX_INSTANCE_ID = 32767
#: Informational keys kept as they are (MSD's descriptive fields, plus a free ``metadata`` object).
_INFO_KEYS = ("reference", "licence", "license", "release", "tensorImageSize", "metadata")
#: MSD keys that are derived from the case lists and therefore not kept.
_DERIVED_KEYS = ("numTraining", "numTest")
_CASE_KEYS = ("id", "images", "label", "classes")
_SPLIT_KEYS = ("train", "val")

_CASE_ID_RE = re.compile(r"^[^/\\\x00-\x1f]+$")


@dataclass(frozen=True)
class Channel:
    """One input channel of every case.

    Attributes:
        name: The channel's name, unique in the manifest (e.g. ``"T2"``, ``"ADC"``, ``"CT"``).
        modality: Normalised modality: ``"CT"``, ``"MR"`` (also for ``MRI``), or the given text upper-cased
            (e.g. ``"T2"``, ``"ADC"``, ``"PET"``).
    """

    name: str
    modality: str


@dataclass(frozen=True)
class Case:
    """One case: an image per channel (or one multi-channel file) and an optional label.

    Paths are kept as written in the manifest (POSIX separators); use :meth:`Manifest.resolve`,
    :meth:`Manifest.image_paths` or :meth:`Manifest.label_path` for absolute paths.

    Attributes:
        id: Case identifier, unique in the manifest; usable as a file name (no slashes or control characters).
        images: One path per channel, in channel order; or a single path to a file holding all channels (a 4D
            NIfTI ``(x, y, z, c)`` or a vector NRRD/MetaImage). Each path is a file or a DICOM series folder.
        label: Path of the label map (integer values from the manifest's ``labels``), or ``None`` when unlabelled.
            In an instance manifest (``task: "instance"``) the map holds object ids: 0 background, ``k > 0`` object
            ``k``.
        classes: Instance manifests: the class (a ``labels`` value) of each object id, as ``(id, class)`` pairs in
            increasing id order; ``None`` when every object has the manifest's one foreground class.
    """

    id: str
    images: tuple[str, ...]
    label: str | None = None
    classes: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", tuple(str(p) for p in self.images))
        if self.label is not None:
            object.__setattr__(self, "label", str(self.label))
        if self.classes is not None:
            pairs = dict(self.classes) if not isinstance(self.classes, Mapping) else self.classes
            object.__setattr__(self, "classes", tuple(sorted((int(k), int(v)) for k, v in pairs.items())))

    @property
    def class_table(self) -> dict[int, int] | None:
        """Object id → class of an instance case, or ``None`` without a class table."""
        return None if self.classes is None else dict(self.classes)

    @property
    def has_label(self) -> bool:
        """Whether the case has a label map."""
        return self.label is not None


@dataclass(frozen=True)
class Split:
    """One fixed train/validation split (a cross-validation fold), as case ids.

    The list-of-splits form is the same as nnU-Net's ``splits_final.json``.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", tuple(self.train))
        object.__setattr__(self, "val", tuple(self.val))


def normalize_modality(text: str) -> str:
    """Normalise a modality name: ``CT`` → ``"CT"``; ``MR``/``MRI`` (any case) → ``"MR"``; others upper-cased."""
    value = " ".join(str(text).split()).upper()
    if value in ("MR", "MRI"):
        return "MR"
    return value


@dataclass(frozen=True)
class Manifest:
    """A dataset: channels, labels, cases and optional fixed splits, with paths relative to ``root``.

    Construction validates the contents and raises :class:`~medseg.errors.ManifestError` when something is wrong.

    Attributes:
        name: Dataset name.
        channels: Input channels, in order.
        labels: Label name → integer value; includes ``0`` (background). Ordered by value.
        cases: All cases (labelled and unlabelled), in manifest order.
        root: Absolute folder that relative paths are resolved against (the manifest's folder).
        description: Free text.
        splits: Fixed train/validation splits (may be empty).
        extra: Informational top-level keys kept as they are (MSD ``reference``, ``licence``, ``release``,
            ``tensorImageSize``, and ``metadata``).
        source: The file the manifest was loaded from, if any.
        source_format: ``"medseg"`` or ``"msd"`` (what the source file was).
        format_version: Format version of the source (``FORMAT_VERSION`` when built in code).
        label_info: Label value → what the manifest says of it beyond its name (``code``, ``category``,
            ``color``; see :mod:`medseg.io.segment_codes`), for the labels given as objects
            (``{"1": {"name": "liver", "code": "SCT:10200004", "color": "#dd8265"}}``).
        task: ``"semantic"`` (label maps hold one class per voxel) or ``"instance"`` (label maps hold object ids; the
            ``labels`` are the objects' classes, given per case in ``classes``).
    """

    name: str
    channels: tuple[Channel, ...]
    labels: Mapping[str, int]
    cases: tuple[Case, ...]
    root: Path
    description: str = ""
    splits: tuple[Split, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    source: Path | None = None
    source_format: str = "medseg"
    format_version: int = FORMAT_VERSION
    label_info: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    task: str = "semantic"

    def __post_init__(self) -> None:
        where = self.source if self.source is not None else self.root
        object.__setattr__(self, "root", Path(os.path.abspath(self.root)))
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "cases", tuple(self.cases))
        object.__setattr__(self, "splits", tuple(self.splits))
        object.__setattr__(self, "labels", dict(sorted(dict(self.labels).items(), key=lambda kv: kv[1])))
        object.__setattr__(self, "extra", dict(self.extra))
        _validate(self, where)

    # Paths ---------------------------------------------------------------------------------------------------------

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """Absolute, normalised path of a manifest path (relative paths are relative to :attr:`root`)."""
        return Path(os.path.normpath(self.root / Path(path)))

    def image_paths(self, case: Case | str) -> list[Path]:
        """Absolute image paths of a case (one per channel, or one multi-channel file)."""
        case = self.case(case) if isinstance(case, str) else case
        return [self.resolve(p) for p in case.images]

    def label_path(self, case: Case | str) -> Path | None:
        """Absolute label path of a case, or ``None`` when it has no label."""
        case = self.case(case) if isinstance(case, str) else case
        return None if case.label is None else self.resolve(case.label)

    # Lookups -------------------------------------------------------------------------------------------------------

    def case(self, case_id: str) -> Case:
        """The case with id ``case_id``.

        Raises:
            KeyError: No such case.
        """
        for case in self.cases:
            if case.id == case_id:
                return case
        raise KeyError(case_id)

    @property
    def case_ids(self) -> list[str]:
        """Ids of all cases, in manifest order."""
        return [c.id for c in self.cases]

    @property
    def labelled_cases(self) -> list[Case]:
        """Cases with a label (MSD ``training``)."""
        return [c for c in self.cases if c.label is not None]

    @property
    def unlabelled_cases(self) -> list[Case]:
        """Cases without a label (MSD ``test``)."""
        return [c for c in self.cases if c.label is None]

    @property
    def num_channels(self) -> int:
        """Number of input channels."""
        return len(self.channels)

    @property
    def label_values(self) -> list[int]:
        """Declared label values, ascending (0 first)."""
        return sorted(self.labels.values())

    @property
    def label_names(self) -> dict[int, str]:
        """Label value → name."""
        return {v: k for k, v in self.labels.items()}

    @property
    def is_instance(self) -> bool:
        """Whether the label maps hold objects (``task: "instance"``)."""
        return self.task == "instance"

    @property
    def foreground_classes(self) -> list[int]:
        """Declared label values other than background 0."""
        return [v for v in self.label_values if v != 0]

    def is_multichannel_file(self, case: Case) -> bool:
        """Whether the case stores all of several channels in one file (e.g. an MSD 4D NIfTI)."""
        return self.num_channels > 1 and len(case.images) == 1

    # Serialisation -------------------------------------------------------------------------------------------------

    def to_dict(self, relative_to: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """medseg-format JSON object, with paths relative to the folder ``relative_to`` (default: :attr:`root`)."""
        folder = Path(os.path.abspath(relative_to if relative_to is not None else self.root))

        def rel(p: str) -> str:
            return _relative_posix(self.resolve(p), folder)

        cases: list[dict[str, Any]] = []
        for case in self.cases:
            entry: dict[str, Any] = {"id": case.id, "images": [rel(p) for p in case.images]}
            if case.label is not None:
                entry["label"] = rel(case.label)
            if case.classes is not None:
                entry["classes"] = {str(k): v for k, v in case.classes}
            cases.append(entry)
        data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
        }
        if self.task != "semantic":
            data["task"] = self.task
        data.update(self.extra)
        data["channels"] = [{"name": c.name, "modality": c.modality} for c in self.channels]
        if self.label_info:
            data["labels"] = {str(v): ({"name": n, **dict(self.label_info[v])} if v in self.label_info else n)
                              for n, v in self.labels.items()}
        else:
            data["labels"] = dict(self.labels)
        data["cases"] = cases
        if self.splits:
            data["splits"] = [{"train": list(s.train), "val": list(s.val)} for s in self.splits]
        return data


# ---------------------------------------------------------------------------------------------------------------------
# Loading and saving


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Load a medseg manifest or an MSD ``dataset.json``.

    Args:
        path: The JSON file. Relative paths inside it are resolved against its folder.

    Returns:
        The validated :class:`Manifest`.

    Raises:
        ManifestError: The file is missing or unreadable, not valid JSON (line and column given), or its contents
            are malformed (the message names the key or case and what is wrong).
    """
    path = Path(path)
    if not path.exists():
        raise ManifestError("no such file", path)
    if path.is_dir():
        hint = " (it holds a dataset.json: pass that file)" if (path / "dataset.json").is_file() else ""
        raise ManifestError(f"is a folder, not a manifest file{hint}", path)
    data = read_manifest_json(path)
    return manifest_from_dict(data, root=path.parent, source=path)


def read_manifest_json(path: str | os.PathLike[str], what: str = "manifest") -> Any:
    """Read a manifest's JSON, refusing repeated keys; errors name ``path`` (with line and column for bad JSON).

    Raises:
        ManifestError: Unreadable, empty, not UTF-8, invalid or too deeply nested JSON, or a key repeated within one
            object.
    """

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ManifestError(f"invalid JSON: key {key!r} appears twice in one object", path)
            out[key] = value
        return out

    return read_json(path, what, ManifestError, object_pairs_hook=no_duplicates)


def manifest_from_dict(
    data: Any, *, root: str | os.PathLike[str], source: str | os.PathLike[str] | None = None
) -> Manifest:
    """Build a :class:`Manifest` from a parsed JSON object (medseg format or MSD ``dataset.json``).

    Args:
        data: The parsed JSON.
        root: Folder relative paths are resolved against.
        source: File the object came from (used in error messages).

    Raises:
        ManifestError: The object is malformed.
    """
    where: str | os.PathLike[str] = source if source is not None else root
    if not isinstance(data, dict):
        raise ManifestError(f"the manifest must be a JSON object {{...}}, not {_json_type(data)}", where)
    keys = set(data)
    if "channel_names" in keys or "file_ending" in keys:
        raise ManifestError(
            "this is an nnU-Net v2 dataset.json (it has 'channel_names'/'file_ending' and no case list); "
            "convert its folder with 'medseg dataset import FOLDER -o MANIFEST'",
            where,
        )
    if "cases" in keys:
        if "training" in keys or "test" in keys:
            raise ManifestError("has both 'cases' (medseg format) and 'training'/'test' (MSD format); keep one", where)
        return _from_own(data, root, source, where)
    if "training" in keys or "modality" in keys:
        return _from_msd(data, root, source, where)
    raise ManifestError(
        "missing key 'cases' (a medseg manifest) or 'training' (an MSD dataset.json); see data_manifests/README.md",
        where,
    )


def save_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> Path:
    """Write ``manifest`` in medseg format to ``path``, with paths relative to ``path``'s folder.

    The file is written atomically (a temporary file renamed into place); missing parent folders are created.

    Returns:
        The absolute path written.

    Raises:
        ManifestError: The file cannot be written.
    """
    path = Path(os.path.abspath(path))
    data = manifest.to_dict(relative_to=path.parent)
    try:
        atomic_text(path, dumps_manifest(data))
    except OutputError as exc:
        raise ManifestError(f"cannot write the manifest: {exc.problem.removeprefix('cannot write: ')}", path) from exc
    return path


def dumps_manifest(data: Mapping[str, Any]) -> str:
    """Format a manifest object as JSON text: one top-level key per line, one case (channel, split) per line.

    Keeps large manifests readable and their diffs small (a changed case is a changed line).
    """
    lines = []
    for key, value in data.items():
        name = json.dumps(key, ensure_ascii=False)
        if isinstance(value, list) and value:
            items = ",\n".join(f"    {json.dumps(item, ensure_ascii=False)}" for item in value)
            lines.append(f"  {name}: [\n{items}\n  ]")
        else:
            lines.append(f"  {name}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


# ---------------------------------------------------------------------------------------------------------------------
# Parsing helpers


def case_id_from_path(path: str) -> str:
    """Derive a case id from an image path (:func:`medseg.io.naming.case_id_of`; a folder's name by the same rule)."""
    name = PurePosixPath(path.replace("\\", "/")).name
    return case_id_of(name, (*READ_SUFFIXES, DICOM_SUFFIX)) or case_id(name)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _clean_path(value: Any, where: str | os.PathLike[str], key: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"{key}: a path must be a string, not {_json_type(value)}", where)
    text = value.strip().replace("\\", "/")
    if not text:
        raise ManifestError(f"{key}: empty path", where)
    if "$" in text:
        raise ManifestError(f"{key}: {value!r}: environment variables in paths are not supported", where)
    if text.startswith("~"):
        raise ManifestError(f"{key}: {value!r}: '~' is not expanded; use a relative or absolute path", where)
    posix = PurePosixPath(text)
    if posix.is_absolute() or re.match(r"^[A-Za-z]:/", text):
        return text.rstrip("/") if len(text) > 1 else text
    normal = os.path.normpath(posix.as_posix()).replace("\\", "/")
    if normal == ".." or normal.startswith("../"):
        raise ManifestError(f"{key}: {value!r} leaves the dataset folder through '..'; relative paths stay inside "
                            "the manifest's folder (write an absolute path to use a file elsewhere)", where)
    return normal


def _unknown_keys(found: Iterable[str], allowed: Sequence[str], where: str | os.PathLike[str], context: str) -> None:
    unknown = [k for k in found if k not in allowed]
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(allowed)})"
    raise ManifestError(f"{context}unknown key {key!r}{hint}", where)


def _require_str(data: Mapping[str, Any], key: str, where: str | os.PathLike[str], default: str | None = None) -> str:
    if key not in data or data[key] is None:
        if default is not None:
            return default
        raise ManifestError(f"missing key {key!r}", where)
    value = data[key]
    if not isinstance(value, str):
        raise ManifestError(f"{key!r} must be a string, not {_json_type(value)}", where)
    return value


def _parse_labels(value: Any, where: str | os.PathLike[str]) -> dict[str, int]:
    """Accept ``{name: int}`` (medseg, nnU-Net v2) or ``{"int": name}`` (MSD); return name → value."""
    if value is None:
        raise ManifestError('missing key \'labels\' (e.g. {"background": 0, "liver": 1})', where)
    if not isinstance(value, dict):
        raise ManifestError(f"'labels' must be an object like {{\"background\": 0}}, not {_json_type(value)}", where)
    if not value:
        raise ManifestError("'labels' is empty; declare at least background 0", where)
    regions = {k: v for k, v in value.items() if isinstance(v, list | tuple)}
    if regions:
        name, vals = next(iter(regions.items()))
        raise ManifestError(
            f"region-based labels are not supported ('labels': {name!r}: {json.dumps(vals)}); "
            "declare one integer value per label",
            where,
        )
    msd_style = all(isinstance(v, str | dict) for v in value.values())
    labels: dict[str, int] = {}
    if msd_style:
        for key, entry in value.items():
            name = entry if isinstance(entry, str) else entry.get("name")
            if not isinstance(name, str):
                raise ManifestError(f"'labels': {key!r}: an object label needs a string 'name' "
                                    '(e.g. {"name": "liver", "code": "SCT:10200004", "color": "#dd8265"})', where)
            try:
                number = int(str(key).strip())
            except ValueError:
                raise ManifestError(
                    f"'labels': key {key!r} is not an integer; write labels as {{\"name\": value}} "
                    'or MSD-style {"value": "name"}',
                    where,
                ) from None
            if not name.strip():
                raise ManifestError(f"'labels': value {number} has an empty name", where)
            if name in labels:
                raise ManifestError(f"'labels': name {name!r} is used for {labels[name]} and {number}", where)
            labels[name] = number
    else:
        for name, number in value.items():
            if isinstance(number, bool) or not isinstance(number, int):
                shown = json.dumps(number)
                raise ManifestError(f"'labels': {name!r}: {shown} is not an integer", where)
            if not name.strip():
                raise ManifestError(f"'labels': value {number} has an empty name", where)
            labels[name] = number
    return labels


_LABEL_INFO_KEYS = ("name", "code", "category", "color")


def _parse_label_info(value: Any, where: str | os.PathLike[str]) -> dict[int, dict[str, Any]]:
    """The ``code``/``category``/``color`` of labels written as objects (``{"1": {"name": …, "code": …}}``).

    Values are kept as written (they round-trip through :meth:`Manifest.to_dict`) after checking that
    :mod:`medseg.io.segment_codes` understands them.
    """
    from medseg.io.segment_codes import parse_code, parse_color

    info: dict[int, dict[str, Any]] = {}
    if not isinstance(value, dict):
        return info
    for key, entry in value.items():
        if not isinstance(entry, dict):
            continue
        unknown = sorted(set(entry) - set(_LABEL_INFO_KEYS))
        if unknown:
            raise ManifestError(f"'labels': {key!r}: unknown key(s) {', '.join(map(repr, unknown))} "
                                f"(a label object has {', '.join(_LABEL_INFO_KEYS)})", where)
        try:
            if entry.get("code") is not None:
                parse_code(entry["code"], f"'labels': {key!r}: 'code'")
            if entry.get("category") is not None:
                parse_code(entry["category"], f"'labels': {key!r}: 'category'")
            if entry.get("color") is not None:
                parse_color(entry["color"], f"'labels': {key!r}: 'color'")
        except ValueError as exc:
            raise ManifestError(str(exc), where) from None
        extra = {k: entry[k] for k in _LABEL_INFO_KEYS[1:] if entry.get(k) is not None}
        if extra:
            info[int(str(key).strip())] = extra
    return info


def _parse_channels_msd(value: Any, where: str | os.PathLike[str], key: str = "modality") -> list[Channel]:
    """Parse MSD ``modality`` / nnU-Net ``channel_names``: ``{"0": "T2", "1": "ADC"}``."""
    if value is None:
        raise ManifestError(f'missing key {key!r} (e.g. {{"0": "CT"}})', where)
    if not isinstance(value, dict) or not value:
        raise ManifestError(f'{key!r} must be a non-empty object like {{"0": "CT", "1": "T2"}}', where)
    indexed: dict[int, str] = {}
    for index_text, name in value.items():
        try:
            index = int(str(index_text).strip())
        except ValueError:
            raise ManifestError(f'{key!r}: {index_text!r} is not a channel index ("0", "1", ...)', where) from None
        if not isinstance(name, str) or not name.strip():
            raise ManifestError(f"{key!r}: channel {index_text!r} must name a modality (a non-empty string)", where)
        indexed[index] = name.strip()
    if sorted(indexed) != list(range(len(indexed))):
        raise ManifestError(f"{key!r}: channel indices must be 0..{len(indexed) - 1}, got {sorted(indexed)}", where)
    return [Channel(name=indexed[i], modality=normalize_modality(indexed[i])) for i in range(len(indexed))]


def _parse_channels_own(value: Any, where: str | os.PathLike[str]) -> list[Channel]:
    if value is None:
        raise ManifestError('missing key \'channels\' (e.g. [{"name": "CT", "modality": "CT"}])', where)
    if not isinstance(value, list) or not value:
        raise ManifestError('\'channels\' must be a non-empty list of {"name", "modality"} objects', where)
    channels: list[Channel] = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise ManifestError(f'channels[{i}] must be an object {{"name", "modality"}}', where)
        _unknown_keys(entry, ("name", "modality"), where, f"channels[{i}]: ")
        modality = entry.get("modality")
        if not isinstance(modality, str) or not modality.strip():
            raise ManifestError(f'channels[{i}]: missing or empty \'modality\' (e.g. "CT", "MR")', where)
        name = entry.get("name", modality.strip())
        if not isinstance(name, str) or not name.strip():
            raise ManifestError(f"channels[{i}]: 'name' must be a non-empty string", where)
        channels.append(Channel(name=name.strip(), modality=normalize_modality(modality)))
    return channels


def _parse_images(value: Any, where: str | os.PathLike[str], ctx: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (_clean_path(value, where, f"{ctx}.images"),)
    if not isinstance(value, list) or not value:
        raise ManifestError(f"{ctx}: 'images' must be a non-empty list of paths (one per channel)", where)
    return tuple(_clean_path(v, where, f"{ctx}.images[{j}]") for j, v in enumerate(value))


def _parse_splits(value: Any, where: str | os.PathLike[str]) -> list[Split]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ManifestError('\'splits\' must be a list of {"train": [ids], "val": [ids]} objects', where)
    splits: list[Split] = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise ManifestError(f'splits[{i}] must be an object {{"train": [ids], "val": [ids]}}', where)
        _unknown_keys(entry, _SPLIT_KEYS, where, f"splits[{i}]: ")
        parts: dict[str, tuple[str, ...]] = {}
        for key in _SPLIT_KEYS:
            ids = entry.get(key)
            if ids is None:
                raise ManifestError(f"splits[{i}]: missing key {key!r}", where)
            if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
                raise ManifestError(f"splits[{i}].{key} must be a list of case ids (strings)", where)
            parts[key] = tuple(ids)
        splits.append(Split(train=parts["train"], val=parts["val"]))
    return splits


def _parse_classes(value: Any, labels: Mapping[str, int], task: str, where: str | os.PathLike[str], ctx: str
                   ) -> dict[int, int] | None:
    """A case's ``classes``: ``{"id": class}`` with the class a label name or value; object id → class value."""
    if value is None:
        return None
    if task != "instance":
        raise ManifestError(f"{ctx}: 'classes' gives the class of each object of an instance label map; add "
                            "\"task\": \"instance\" to the manifest (or remove 'classes')", where)
    if not isinstance(value, dict):
        raise ManifestError(f"{ctx}: 'classes' must be an object {{\"object id\": class}}, not {_json_type(value)}",
                            where)
    by_name = dict(labels)
    values = set(labels.values())
    out: dict[int, int] = {}
    for key, cls in value.items():
        text = str(key).strip()
        if not text.isdigit() or int(text) < 1:
            raise ManifestError(f"{ctx}: 'classes': key {quote(key)} is not an object id (a positive integer)", where)
        if int(text) > MAX_INSTANCE_ID:
            raise ManifestError(f"{ctx}: 'classes': object id {text} is above {MAX_INSTANCE_ID}, the largest id "
                                "medseg stores", where)
        if isinstance(cls, str) and cls in by_name:
            number = by_name[cls]
        elif isinstance(cls, int) and not isinstance(cls, bool) and cls in values:
            number = cls
        else:
            known = ", ".join(f"{n} ({v})" for n, v in labels.items() if v != 0)
            raise ManifestError(f"{ctx}: 'classes': object {text}: {quote(cls)} is not a declared class "
                                f"(declared: {known})", where)
        if number == 0:
            raise ManifestError(f"{ctx}: 'classes': object {text} has the background class; an object's class is "
                                "a foreground label", where)
        if int(text) in out:
            raise ManifestError(f"{ctx}: 'classes': object {text} is listed twice", where)
        out[int(text)] = number
    return out


def _format_version(data: Mapping[str, Any], where: str | os.PathLike[str]) -> int:
    version = data.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ManifestError(f"'format_version' must be a positive integer, not {json.dumps(version)}", where)
    if version > FORMAT_VERSION:
        raise ManifestError(
            f"'format_version' {version} is newer than this medseg reads ({FORMAT_VERSION}); upgrade medseg", where
        )
    return version


def _from_own(
    data: dict[str, Any], root: str | os.PathLike[str], source: Any, where: str | os.PathLike[str]
) -> Manifest:
    _unknown_keys(data, _OWN_KEYS + _INFO_KEYS + _DERIVED_KEYS, where, "")
    version = _format_version(data, where)
    task = data.get("task", "semantic")
    if task not in TASKS:
        raise ManifestError(f"'task' must be one of {', '.join(repr(t) for t in TASKS)}, not {json.dumps(task)}",
                            where)
    channels = _parse_channels_own(data.get("channels"), where)
    labels = _parse_labels(data.get("labels"), where)
    raw_cases = data["cases"]
    if not isinstance(raw_cases, list):
        raise ManifestError(f"'cases' must be a list of case objects, not {_json_type(raw_cases)}", where)
    cases: list[Case] = []
    for i, entry in enumerate(raw_cases):
        ctx = f"cases[{i}]"
        if not isinstance(entry, dict):
            raise ManifestError(f'{ctx} must be an object {{"id", "images", "label"}}', where)
        if isinstance(entry.get("id"), str):
            ctx = f"cases[{i}] ({entry['id']!r})"
        _unknown_keys(entry, _CASE_KEYS, where, f"{ctx}: ")
        if "id" not in entry:
            raise ManifestError(f"{ctx}: missing key 'id'", where)
        if not isinstance(entry["id"], str):
            raise ManifestError(f"{ctx}: 'id' must be a string, not {_json_type(entry['id'])}", where)
        if "images" not in entry:
            raise ManifestError(f"{ctx}: missing key 'images'", where)
        images = _parse_images(entry["images"], where, ctx)
        label = entry.get("label")
        label = None if label is None else _clean_path(label, where, f"{ctx}.label")
        classes = _parse_classes(entry.get("classes"), labels, task, where, ctx)
        cases.append(Case(id=entry["id"], images=images, label=label, classes=classes))
    return Manifest(
        name=_require_str(data, "name", where, default=""),
        description=_require_str(data, "description", where, default=""),
        channels=tuple(channels),
        labels=labels,
        label_info=_parse_label_info(data.get("labels"), where),
        cases=tuple(cases),
        splits=tuple(_parse_splits(data.get("splits"), where)),
        extra={k: data[k] for k in _INFO_KEYS if k in data},
        root=Path(root),
        source=None if source is None else Path(os.path.abspath(source)),
        source_format="medseg",
        format_version=version,
        task=task,
    )


def _from_msd(
    data: dict[str, Any], root: str | os.PathLike[str], source: Any, where: str | os.PathLike[str]
) -> Manifest:
    channels = _parse_channels_msd(data.get("modality"), where)
    labels = _parse_labels(data.get("labels"), where)
    training = data.get("training", [])
    test = data.get("test", [])
    if not isinstance(training, list):
        raise ManifestError(f"'training' must be a list of image/label objects, not {_json_type(training)}", where)
    if not isinstance(test, list):
        raise ManifestError(f"'test' must be a list of image paths, not {_json_type(test)}", where)
    cases: list[Case] = []
    for i, entry in enumerate(training):
        ctx = f"training[{i}]"
        if isinstance(entry, str):
            entry = {"image": entry}
        if not isinstance(entry, dict):
            raise ManifestError(f'{ctx} must be an object {{"image": PATH, "label": PATH}}', where)
        if "image" not in entry:
            raise ManifestError(f"{ctx}: missing key 'image'", where)
        images = _parse_images(entry["image"], where, ctx)
        label = entry.get("label")
        label = None if label is None else _clean_path(label, where, f"{ctx}.label")
        cases.append(Case(id=case_id_from_path(images[0]), images=images, label=label))
    for i, entry in enumerate(test):
        ctx = f"test[{i}]"
        if isinstance(entry, dict):
            if "image" not in entry:
                raise ManifestError(f"{ctx}: missing key 'image'", where)
            entry = entry["image"]
        images = _parse_images(entry, where, ctx)
        cases.append(Case(id=case_id_from_path(images[0]), images=images, label=None))
    extra = {k: data[k] for k in _INFO_KEYS if k in data}  # other keys (e.g. MONAI's "validation") are ignored
    version = _format_version(data, where)
    return Manifest(
        name=_require_str(data, "name", where, default=""),
        description=_require_str(data, "description", where, default=""),
        channels=tuple(channels),
        labels=labels,
        label_info=_parse_label_info(data.get("labels"), where),
        cases=tuple(cases),
        splits=tuple(_parse_splits(data.get("splits"), where)),
        extra=extra,
        root=Path(root),
        source=None if source is None else Path(os.path.abspath(source)),
        source_format="msd",
        format_version=version,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Validation


def _relative_posix(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when inside it, else absolute (manifests never climb out through '..')."""
    try:
        relative = Path(os.path.relpath(path, folder)).as_posix()
    except ValueError:  # different drives on Windows
        return path.as_posix()
    return path.as_posix() if relative == ".." or relative.startswith("../") else relative


def _validate(m: Manifest, where: str | os.PathLike[str]) -> None:
    if not isinstance(m.name, str) or not isinstance(m.description, str):
        raise ManifestError("'name' and 'description' must be strings", where)
    if not m.channels:
        raise ManifestError("no channels declared", where)
    names = [c.name for c in m.channels]
    dup = _first_duplicate(names)
    if dup is not None:
        raise ManifestError(f"channel name {dup!r} is used twice; give each channel a distinct 'name'", where)
    for name, value in m.labels.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ManifestError(f"'labels': {name!r}: {value!r} is not an integer", where)
        if value < 0:
            raise ManifestError(f"'labels': {name!r}: {value} is negative; label values must be 0 or more", where)
    values = list(m.labels.values())
    dup_value = _first_duplicate(values)
    if dup_value is not None:
        holders = [k for k, v in m.labels.items() if v == dup_value]
        raise ManifestError(f"'labels': value {dup_value} is used by {holders[0]!r} and {holders[1]!r}", where)
    if 0 not in values:
        raise ManifestError("'labels': background 0 is missing (e.g. \"background\": 0)", where)
    if not m.cases:
        raise ManifestError("no cases", where)
    if m.task not in TASKS:
        raise ManifestError(f"'task' must be one of {', '.join(TASKS)}, not {m.task!r}", where)
    if m.task == "instance":
        foreground = [v for v in values if v != 0]
        if not foreground:
            raise ManifestError("'labels': an instance manifest declares at least one object class besides "
                                "background 0", where)
        if len(foreground) > 1:
            untabled = [c.id for c in m.cases if c.label is not None and c.classes is None]
            if untabled:
                raise ManifestError(f"the manifest declares {len(foreground)} object classes, so every labelled case "
                                    f"needs 'classes' (object id → class); missing in {_short_list(untabled)}", where)
    for case in m.cases:
        if case.classes is not None and m.task != "instance":
            raise ManifestError(f"case {case.id!r}: 'classes' is only for instance manifests (\"task\": "
                                "\"instance\")", where)
    seen_ids: dict[str, int] = {}
    output_ids: dict[str, int] = {}
    n = len(m.channels)
    for i, case in enumerate(m.cases):
        if not isinstance(case.id, str) or not case.id.strip() or case.id != case.id.strip():
            raise ManifestError(f"cases[{i}]: id {case.id!r} is empty or has surrounding spaces", where)
        if not _CASE_ID_RE.match(case.id) or case.id in (".", ".."):
            raise ManifestError(f"cases[{i}]: id {case.id!r} must be usable as a file name (no '/' or '\\')", where)
        if case.id in seen_ids:
            raise ManifestError(f"duplicate case id {case.id!r} (cases {seen_ids[case.id]} and {i})", where)
        seen_ids[case.id] = i
        safe = case_id(case.id)
        if safe in output_ids:
            other = m.cases[output_ids[safe]].id
            raise ManifestError(f"cases {other!r} and {case.id!r} would write the same output files ({safe}); "
                                "give them ids that differ in letters or digits", where)
        output_ids[safe] = i
        if len(case.images) not in (1, n):
            channel_list = ", ".join(c.name for c in m.channels)
            raise ManifestError(
                f"case {case.id!r} lists {len(case.images)} images but the manifest declares {n} channels "
                f"({channel_list}); give one image per channel, or one 4D file holding all channels",
                where,
            )
        seen_paths: set[Path] = set()
        for p in (*case.images, *([case.label] if case.label is not None else [])):
            resolved = m.resolve(p)
            if resolved in seen_paths:
                raise ManifestError(f"case {case.id!r}: {p} is used twice in that case", where)
            seen_paths.add(resolved)
    labelled = {c.id for c in m.cases if c.label is not None}
    for i, split in enumerate(m.splits):
        if not split.train:
            raise ManifestError(f"splits[{i}]: 'train' is empty", where)
        for part in ("train", "val"):
            ids: tuple[str, ...] = getattr(split, part)
            unknown = [x for x in ids if x not in seen_ids]
            if unknown:
                raise ManifestError(f"splits[{i}].{part}: unknown case ids {_short_list(unknown)}", where)
            unlabelled = [x for x in ids if x not in labelled]
            if unlabelled:
                raise ManifestError(f"splits[{i}].{part}: cases without a label {_short_list(unlabelled)}", where)
            dup_id = _first_duplicate(ids)
            if dup_id is not None:
                raise ManifestError(f"splits[{i}].{part}: case {dup_id!r} is listed twice", where)
        both = sorted(set(split.train) & set(split.val))
        if both:
            raise ManifestError(f"splits[{i}]: cases in both train and val {_short_list(both)}", where)


def _first_duplicate(items: Iterable[Any]) -> Any:
    seen: set[Any] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def _short_list(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(x) for x in items[:limit])
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{shown}{more}"
