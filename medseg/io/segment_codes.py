"""What a segment is, in codes DICOM viewers and planning systems read: SNOMED CT category and type, and a colour.

A DICOM Segmentation describes each segment by a *segmented property category* (CID 7150: anatomical structure,
morphologically abnormal structure, tissue, …) and a *segmented property type* (CID 7151 and relatives: liver,
kidney, neoplasm, …), optionally qualified by a laterality modifier; an RT Structure Set names the same concept in
each ROI's identification code, and both carry a display colour. :func:`describe_label` gives them for one label:

1. the manifest's own entry, ``"labels": {"1": {"name": "liver", "code": "SCT:10200004", "color": "#dd8265"}}``
   (``code`` and ``category`` as ``SCHEME:VALUE`` text or ``{"scheme", "value", "meaning"}``, ``color`` as
   ``#rrggbb`` or ``[r, g, b]``);
2. otherwise medseg's table of common anatomy and lesions (:data:`KNOWN_STRUCTURES`), matched by the label's name
   (case, spaces, ``-`` and ``_`` ignored; ``left``/``right`` and ``_l``/``_r`` become a laterality modifier);
3. otherwise a generic description: category and type "Tissue" (SCT 85756007), a colour from a fixed palette.

The SNOMED CT values come from pydicom's copy of the DICOM code dictionary (``pydicom.sr.codedict``), so they are
the ones the standard lists. Colours follow the customary anatomical tints (liver brown-red, bone ivory, vessels
red, …); segments without one get distinct colours from :data:`PALETTE`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Colours for labels without their own, in order of label value (distinguishable on grey images).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
)


@dataclass(frozen=True)
class Code:
    """A coded concept (value, coding scheme designator, meaning), as in a DICOM code sequence item."""

    value: str
    scheme: str
    meaning: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.value} ({self.meaning})"


@dataclass(frozen=True)
class LabelDescription:
    """How one label is described in DICOM.

    Attributes:
        name: The label's name (SegmentLabel, ROIName).
        category: Segmented property category (CID 7150).
        type: Segmented property type.
        color: Display colour, RGB 0–255.
        modifier: Laterality modifier of the type (SCT Left/Right), or ``None``.
        source: ``manifest``, ``table`` or ``generic``: where the coding came from.
    """

    name: str
    category: Code
    type: Code
    color: tuple[int, int, int]
    modifier: Code | None = None
    source: str = "generic"

    @property
    def is_anatomy(self) -> bool:
        """Whether the label is an anatomical structure (an RT ROI of interpreted type ORGAN)."""
        return self.category.value == _category("AnatomicalStructure").value


def _sct(keyword: str) -> Code:
    from pydicom.sr.codedict import codes

    code = getattr(codes.SCT, keyword)
    return Code(str(code.value), str(code.scheme_designator), str(code.meaning))


def _category(keyword: str) -> Code:
    from pydicom.sr.codedict import codes

    code = getattr(codes.cid7150, keyword)
    return Code(str(code.value), str(code.scheme_designator), str(code.meaning))


#: Name → (category keyword of CID 7150, SNOMED CT keyword of pydicom's dictionary, RGB colour, other names).
KNOWN_STRUCTURES: dict[str, tuple[str, str, tuple[int, int, int], tuple[str, ...]]] = {
    "liver": ("AnatomicalStructure", "Liver", (221, 130, 101), ("hepar",)),
    "spleen": ("AnatomicalStructure", "Spleen", (157, 108, 162), ()),
    "kidney": ("AnatomicalStructure", "Kidney", (185, 102, 83), ("kidneys",)),
    "pancreas": ("AnatomicalStructure", "Pancreas", (249, 180, 111), ()),
    "gallbladder": ("AnatomicalStructure", "Gallbladder", (139, 150, 98), ("gall bladder",)),
    "stomach": ("AnatomicalStructure", "Stomach", (216, 132, 105), ()),
    "esophagus": ("AnatomicalStructure", "Esophagus", (211, 171, 143), ("oesophagus",)),
    "duodenum": ("AnatomicalStructure", "Duodenum", (255, 253, 229), ()),
    "small intestine": ("AnatomicalStructure", "SmallIntestine", (205, 167, 142), ("small bowel",)),
    "colon": ("AnatomicalStructure", "Colon", (204, 168, 143), ()),
    "rectum": ("AnatomicalStructure", "Rectum", (183, 156, 220), ()),
    "adrenal gland": ("AnatomicalStructure", "AdrenalGland", (249, 186, 150), ("adrenal",)),
    "urinary bladder": ("AnatomicalStructure", "Bladder", (222, 154, 132), ("bladder",)),
    "prostate": ("AnatomicalStructure", "Prostate", (230, 158, 140), ("prostate gland",)),
    "heart": ("AnatomicalStructure", "Heart", (206, 110, 84), ()),
    "left ventricle": ("AnatomicalStructure", "LeftVentricle", (196, 58, 67), ()),
    "right ventricle": ("AnatomicalStructure", "RightVentricle", (0, 151, 206), ()),
    "left atrium": ("AnatomicalStructure", "LeftAtrium", (255, 143, 133), ()),
    "right atrium": ("AnatomicalStructure", "RightAtrium", (117, 186, 227), ()),
    "lung": ("AnatomicalStructure", "Lung", (197, 165, 145), ("lungs",)),
    "trachea": ("AnatomicalStructure", "Trachea", (182, 228, 255), ()),
    "aorta": ("AnatomicalStructure", "Aorta", (224, 97, 76), ()),
    "inferior vena cava": ("AnatomicalStructure", "InferiorVenaCava", (0, 151, 206), ("ivc", "vena cava")),
    "portal vein": ("AnatomicalStructure", "PortalVein", (0, 112, 165), ()),
    "artery": ("AnatomicalStructure", "Artery", (216, 101, 79), ("arteries",)),
    "vein": ("AnatomicalStructure", "Vein", (0, 151, 206), ("veins",)),
    "blood vessel": ("AnatomicalStructure", "BloodVessel", (224, 97, 76), ("vessel", "vessels", "vasculature")),
    "thyroid gland": ("AnatomicalStructure", "Thyroid", (220, 245, 20), ("thyroid",)),
    "brain": ("AnatomicalStructure", "Brain", (250, 250, 225), ()),
    "white matter": ("AnatomicalStructure", "WhiteMatter", (245, 245, 245), ("wm", "cerebral white matter")),
    "gray matter": ("AnatomicalStructure", "GrayMatter", (128, 174, 128), ("grey matter", "gm")),
    "cerebral cortex": ("AnatomicalStructure", "CerebralCortex", (128, 174, 128), ("cortex",)),
    "cerebellum": ("AnatomicalStructure", "Cerebellum", (177, 140, 190), ()),
    "thalamus": ("AnatomicalStructure", "Thalamus", (0, 145, 30), ()),
    "hippocampus": ("AnatomicalStructure", "Hippocampus", (220, 216, 20), ()),
    "lateral ventricle": ("AnatomicalStructure", "LateralVentricle", (120, 18, 134), ()),
    "cerebrospinal fluid": ("BodySubstance", "CerebrospinalFluid", (85, 188, 255), ("csf",)),
    "spinal cord": ("AnatomicalStructure", "SpinalCord", (244, 214, 49), ("cord",)),
    "vertebra": ("AnatomicalStructure", "Vertebra", (241, 214, 145), ("vertebrae", "spine", "vertebral body")),
    "sacrum": ("AnatomicalStructure", "Sacrum", (212, 188, 102), ()),
    "femur": ("AnatomicalStructure", "Femur", (255, 238, 170), ()),
    "rib": ("AnatomicalStructure", "Rib", (253, 232, 158), ("ribs",)),
    "skull": ("AnatomicalStructure", "Skull", (241, 213, 144), ()),
    "bone": ("Tissue", "Bone", (241, 214, 145), ("bones", "skeleton")),
    "muscle": ("Tissue", "Muscle", (192, 104, 88), ("muscles",)),
    "fat": ("Tissue", "AdiposeTissue", (230, 220, 70), ("adipose tissue",)),
    "subcutaneous tissue": ("AnatomicalStructure", "SubcutaneousTissue", (244, 214, 49),
                            ("subcutaneous fat", "sat")),
    "skin": ("AnatomicalStructure", "Skin", (177, 122, 101), ()),
    "neoplasm": ("MorphologicallyAbnormalStructure", "Neoplasm", (255, 0, 0), ("tumor", "tumour", "cancer")),
    "lesion": ("MorphologicallyAbnormalStructure", "Lesion", (255, 64, 0), ("lesions",)),
    "metastasis": ("MorphologicallyAbnormalStructure", "Metastasis", (255, 0, 128), ("metastases",)),
    "mass": ("MorphologicallyAbnormalStructure", "Mass", (255, 100, 100), ()),
    "cyst": ("MorphologicallyAbnormalStructure", "Cyst", (0, 200, 255), ("cysts",)),
    "nodule": ("MorphologicallyAbnormalStructure", "Nodule", (255, 160, 0), ("nodules",)),
    "edema": ("MorphologicallyAbnormalStructure", "Edema", (255, 255, 0), ("oedema",)),
    "necrosis": ("MorphologicallyAbnormalStructure", "Necrosis", (128, 64, 0), ()),
    "hemorrhage": ("MorphologicallyAbnormalStructure", "Hemorrhage", (160, 0, 0), ("haemorrhage", "bleeding")),
}

_LATERALITY = (("left ", "Left"), ("right ", "Right"))
_LATERALITY_SUFFIX = ((" left", "Left"), (" right", "Right"), (" l", "Left"), (" r", "Right"))


def _normal(name: str) -> str:
    return " ".join(re.sub(r"[_\-.]+", " ", name.lower()).split())


def _lookup(name: str) -> tuple[str, tuple[str, str, tuple[int, int, int], tuple[str, ...]]] | None:
    wanted = _normal(name)
    for key, entry in KNOWN_STRUCTURES.items():
        if wanted == key or wanted in entry[3]:
            return key, entry
    return None


def _table_entry(name: str) -> tuple[tuple[str, str, tuple[int, int, int], tuple[str, ...]], str | None] | None:
    """The table entry for ``name`` and a laterality keyword (``Left``/``Right``) when the name carries one."""
    found = _lookup(name)
    if found is not None:
        return found[1], None
    normal = _normal(name)
    for prefix, side in _LATERALITY:
        if normal.startswith(prefix) and (found := _lookup(normal[len(prefix):])) is not None:
            return found[1], side
    for suffix, side in _LATERALITY_SUFFIX:
        if normal.endswith(suffix) and (found := _lookup(normal[: -len(suffix)])) is not None:
            return found[1], side
    return None


def _by_type_code(code: Code) -> tuple[str, str, tuple[int, int, int], tuple[str, ...]] | None:
    """The table entry whose SNOMED CT type has the value of ``code``."""
    for entry in KNOWN_STRUCTURES.values():
        if _sct(entry[1]).value == code.value:
            return entry
    return None


def parse_code(value: Any, what: str) -> Code:
    """A code from a manifest: ``"SCT:10200004"`` (meaning from pydicom's dictionary when known) or an object.

    Raises:
        ValueError: Neither form; the message says which is expected (callers re-raise their own error).
    """
    if isinstance(value, str):
        scheme, sep, code = value.partition(":")
        if not sep or not scheme.strip() or not code.strip():
            raise ValueError(f"{what} must be 'SCHEME:VALUE' (e.g. 'SCT:10200004') or an object "
                             f"{{\"scheme\", \"value\", \"meaning\"}}, not {value!r}")
        return Code(code.strip(), scheme.strip(), _meaning(scheme.strip(), code.strip()) or code.strip())
    if isinstance(value, Mapping):
        missing = [k for k in ("scheme", "value") if not str(value.get(k) or "").strip()]
        if missing:
            raise ValueError(f"{what} lacks {', '.join(missing)}")
        scheme, code = str(value["scheme"]).strip(), str(value["value"]).strip()
        meaning = str(value.get("meaning") or "").strip() or _meaning(scheme, code) or code
        return Code(code, scheme, meaning)
    raise ValueError(f"{what} must be 'SCHEME:VALUE' or an object, not {type(value).__name__}")


def _meaning(scheme: str, value: str) -> str | None:
    """The meaning pydicom's dictionary gives a code, when it knows it."""
    from pydicom.sr.codedict import codes

    try:
        table = getattr(codes, scheme)
    except AttributeError:
        return None
    for keyword in table.dir():
        code = getattr(table, keyword)
        if str(code.value) == value:
            return str(code.meaning)
    return None


def parse_color(value: Any, what: str) -> tuple[int, int, int]:
    """An RGB colour from ``#rrggbb`` or ``[r, g, b]`` (0–255).

    Raises:
        ValueError: Neither form.
    """
    if isinstance(value, str) and re.fullmatch(r"#?[0-9a-fA-F]{6}", value.strip()):
        text = value.strip().lstrip("#")
        return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))
    if (isinstance(value, list | tuple) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise ValueError(f"{what} must be '#rrggbb' or [r, g, b] with values 0-255, not {value!r}")


def describe_label(value: int, name: str, entry: Mapping[str, Any] | None = None) -> LabelDescription:
    """The DICOM description of label ``value`` named ``name`` (see the module docstring for the order).

    Args:
        value: The label value (picks the palette colour of unknown labels).
        name: The label's name.
        entry: The manifest's entry for the label (``code``, ``category``, ``color``), already validated.
    """
    entry = dict(entry or {})
    known = _table_entry(name)
    color = entry.get("color")
    if entry.get("code") is not None:
        type_code = entry["code"] if isinstance(entry["code"], Code) else parse_code(entry["code"], "code")
        category = entry.get("category")
        if category is not None:
            category_code = category if isinstance(category, Code) else parse_code(category, "category")
        else:
            same = _by_type_code(type_code) if type_code.scheme == "SCT" else None
            category_code = _category(same[0]) if same is not None else _category("Tissue")
            known = known or ((same, None) if same is not None else None)
        default_color = known[0][2] if known is not None else PALETTE[(value - 1) % len(PALETTE)]
        return LabelDescription(name, category_code, type_code,
                                parse_color(color, "color") if color is not None else default_color, None,
                                "manifest")
    if known is not None:
        (category, keyword, rgb, _), side = known
        modifier = _sct(side) if side else None
        return LabelDescription(name, _category(category), _sct(keyword),
                                parse_color(color, "color") if color is not None else rgb, modifier, "table")
    tissue = _category("Tissue")
    return LabelDescription(name, tissue, _sct("Tissue"),
                            parse_color(color, "color") if color is not None else PALETTE[(value - 1) % len(PALETTE)],
                            None, "generic")


def describe_labels(label_names: Mapping[int, str],
                    entries: Mapping[int, Mapping[str, Any]] | None = None) -> dict[int, LabelDescription]:
    """:func:`describe_label` for every foreground label (value > 0), by value."""
    entries = entries or {}
    return {int(v): describe_label(int(v), str(n), entries.get(int(v))) for v, n in sorted(label_names.items())
            if int(v) > 0}
