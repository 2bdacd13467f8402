"""``medseg models``: the registered architectures, their papers and parameter counts."""

from __future__ import annotations

import json
from typing import Any

import typer


def _rows(family: str | None) -> list[dict[str, Any]]:
    from medseg.models import get_model_info, list_models, paper_parameter_count

    rows = []
    for name in list_models(family):
        info = get_model_info(name)
        ours = paper_parameter_count(name)
        paper = info.paper.params
        rows.append({
            "name": name,
            "family": info.family,
            "spatial_dims": list(info.spatial_dims),
            "paper": info.paper_title,
            "year": info.paper_year,
            "paper_config": {
                "spatial_dims": info.paper.spatial_dims,
                "in_channels": info.paper.in_channels,
                "out_channels": info.paper.out_channels,
                "kwargs": dict(info.paper.kwargs),
            },
            "parameters": ours,
            "paper_parameters": paper,
            "paper_parameters_source": info.paper.source,
            "relative_difference": None if paper is None else (ours - paper) / paper,
            "divisor": {str(d): v for d, v in info.divisor.items()},
            "deep_supervision": info.deep_supervision,
        })
    return rows


def _millions(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f}M"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The model table in Markdown, as the README shows it."""
    lines = [
        "| name | family | dims | parameters at the paper's configuration | published figure | deep supervision |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        dims = ", ".join(f"{d}D" for d in r["spatial_dims"])
        supervision = "yes" if r["deep_supervision"] else "no"
        lines.append(
            f"| {r['name']} | {r['family']} | {dims} | {_millions(r['parameters'])} | "
            f"{_millions(r['paper_parameters'])} | {supervision} |"
        )
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add the ``models`` command to ``app``."""

    @app.command("models")
    def models(
        as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
        family: str | None = typer.Option(None, "--family", help="Only the models of this family."),
        as_markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table (as in the README)."),
    ) -> None:
        """List the model zoo: dims, parameters at the paper's configuration, the published figure, deep supervision."""
        rows = _rows(family)
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        if as_markdown:
            typer.echo(markdown_table(rows))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title="medseg models (parameters at each paper's configuration)", show_header=True)
        for col in ("name", "family", "dims", "params", "paper", "deep sup.", "year"):
            table.add_column(col, no_wrap=True)
        for r in rows:
            table.add_row(
                r["name"],
                r["family"],
                ", ".join(f"{d}D" for d in r["spatial_dims"]),
                _millions(r["parameters"]),
                _millions(r["paper_parameters"]),
                "yes" if r["deep_supervision"] else "no",
                str(r["year"]),
            )
        console = Console()
        console.width = max(console.width, 100)
        console.print(table)
