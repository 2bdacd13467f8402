"""One table of image endings and one case-id rule: every listed ending round-trips, ids are safe and collisions named;
the io modules import without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from medseg.io import load_image, save_image
from medseg.io.meta import make_image
from medseg.io.naming import (
    LABEL_SUFFIXES,
    PICTURE_READ_ONLY_SUFFIXES,
    PICTURE_WRITE_SUFFIXES,
    READ_SUFFIXES,
    WRITE_SUFFIXES,
    case_id,
    case_id_of,
    unique_case_ids,
)

IO = Path(__file__).resolve().parents[2] / "medseg" / "io"


@pytest.mark.parametrize("ending", WRITE_SUFFIXES)
def test_every_written_ending_round_trips(tmp_path: Path, ending: str) -> None:
    picture = ending in PICTURE_WRITE_SUFFIXES
    shape = (1, 7, 5, 1) if picture else (1, 7, 5, 3)
    data = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    if picture:  # pictures store pixels only: the geometry a picture loads with (LPS-style frame, 1 mm, origin 0)
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    else:
        affine = np.diag([0.5, 0.75, 2.5, 1.0])
        affine[:3, 3] = (-3.0, 4.0, 7.5)
    path = save_image(make_image(data, affine), tmp_path / f"case 01{ending}")
    back = load_image(path)
    np.testing.assert_array_equal(np.asarray(back), data)
    np.testing.assert_allclose(back.meta["affine"], affine, atol=1e-6)
    assert case_id_of(path) == "case_01"


@pytest.mark.parametrize("ending", PICTURE_READ_ONLY_SUFFIXES)
def test_every_read_only_ending_loads(tmp_path: Path, ending: str) -> None:
    import SimpleITK as sitk

    data = np.full((6, 4), 200, dtype=np.uint8)
    path = tmp_path / f"photo{ending}"
    sitk.WriteImage(sitk.GetImageFromArray(data), str(path))
    image = load_image(path)
    assert image.shape[1:] == (4, 6, 1)  # BMP may be stored as RGB
    assert case_id_of(path) == "photo"


def test_the_tables_agree() -> None:
    assert set(WRITE_SUFFIXES) <= set(READ_SUFFIXES)
    assert ".jpg" not in LABEL_SUFFIXES and ".png" in LABEL_SUFFIXES
    assert ".mgz" not in READ_SUFFIXES  # listed nowhere unless load_image reads it
    from medseg.inference.writers import FORMATS

    assert {e for f, e in FORMATS.items() if not f.startswith("dicom-")} <= set(WRITE_SUFFIXES)


@pytest.mark.parametrize(("name", "expected"), [
    ("a b.nii.gz", "a_b"), ("a_b.nii.gz", "a_b"), ("c.NRRD", "c"), ("x.y.nii", "x.y"), (".hidden.mha", "hidden"),
    ("1.2.840.113619.2.55", None), ("weird__(1).png", "weird___1"),
])
def test_case_id_of(name: str, expected: str | None) -> None:
    assert case_id_of(name) == expected


def test_case_id_is_safe_and_never_empty() -> None:
    assert case_id("../../etc/passwd") == "etc_passwd"
    assert case_id("___") == "case"
    assert case_id("1.2.840.113619.2.55") == "1.2.840.113619.2.55"


def test_collisions_name_both_sources() -> None:
    with pytest.raises(ValueError, match=r"'a_b': in/a b.nii.gz and in/a_b.nii.gz"):
        unique_case_ids([("a_b", "in/a b.nii.gz"), ("a_b", "in/a_b.nii.gz")])


def _io_imports(path: Path) -> set[str]:
    """medseg.io modules a file imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medseg.io."):
            found.add(node.module.split(".")[2])
    return found


def test_io_modules_import_without_cycles() -> None:
    graph = {p.stem: _io_imports(p) - {p.stem} for p in IO.glob("*.py") if p.stem != "__init__"}
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(module: str, chain: list[str]) -> None:
        assert module not in visiting, f"import cycle: {' -> '.join([*chain, module])}"
        if module in done:
            return
        visiting.add(module)
        for target in graph.get(module, ()):
            visit(target, [*chain, module])
        visiting.discard(module)
        done.add(module)

    for module in graph:
        visit(module, [])
    assert graph["naming"] == set() and graph["meta"] <= {"geometry"}  # the leaves
