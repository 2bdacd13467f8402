"""The README shows what the code does: its model table is the registry's own."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_model_table_matches_the_registry() -> None:
    from medseg.cli.models import _rows, markdown_table

    text = README.read_text()
    block = re.search(r"<!-- models-table -->\n(.*?)\n<!-- /models-table -->", text, re.S)
    assert block, "README.md lost its models-table markers"
    expected = markdown_table(_rows(None))
    assert block.group(1).strip() == expected, "regenerate the README table with: medseg models --markdown"


def test_readme_shows_the_test_command() -> None:
    text = README.read_text()
    assert "make test" in text
    assert "pip install torch==2.13.0" in text
