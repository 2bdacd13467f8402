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


def method_rows() -> list[dict[str, Any]]:
    """The training and post-processing methods (:data:`medseg.methods.METHODS`) as plain rows."""
    from dataclasses import asdict

    from medseg.methods import METHODS

    return [{**asdict(m), "seed_rows": list(m.seed_rows), "seed_items": list(m.seed_items),
             "commands": list(m.commands)} for m in METHODS]


def methods_markdown(rows: list[dict[str, Any]]) -> str:
    """The methods table in Markdown, as the README shows it."""
    lines = ["| method | seed rows | papers | how to use it |", "|---|---|---|---|"]
    for r in rows:
        seeds = "; ".join(f"{n} {item}" for n, item in zip(r["seed_rows"], r["seed_items"], strict=True))
        commands = "; ".join(f"`{c}`" for c in r["commands"])
        lines.append(f"| {r['key']} | {seeds} | {r['papers']} | {commands} ({r['note']}) |")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add the ``models`` command to ``app``."""

    @app.command("models")
    def models(
        as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
        family: str | None = typer.Option(None, "--family", help="Only the models of this family."),
        as_markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table (as in the README)."),
        methods: bool = typer.Option(False, "--methods",
                                     help="List the training and post-processing methods usable with any model "
                                          "(CRFs, adversarial training, domain adaptation, ...) and the seed rows "
                                          "they implement."),
    ) -> None:
        """List the model zoo: dims, parameters at the paper's configuration, the published figure, deep supervision."""
        if methods:
            _print_methods(as_json, as_markdown)
            return
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


def _print_methods(as_json: bool, as_markdown: bool) -> None:
    rows = method_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if as_markdown:
        typer.echo(methods_markdown(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="medseg methods (options of any model)", show_header=True)
    for col in ("method", "seed rows", "stage", "how to use it"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["key"], ", ".join(str(n) for n in r["seed_rows"]), r["stage"],
                      "\n".join(r["commands"]) + f"\n({r['note']})")
    console = Console()
    console.width = max(console.width, 100)
    console.print(table)
