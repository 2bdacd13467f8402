"""``medseg info``: versions of the libraries medseg runs on and the compute devices it can use."""

from __future__ import annotations

import json

import typer

from medseg.utils.environment import environment_report


def register(app: typer.Typer) -> None:
    """Add the ``info`` command to ``app``."""

    @app.command("info")
    def info(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
        """Print library versions and the available devices (CUDA name and memory when present)."""
        report = environment_report()
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        console = Console()
        table = Table(title=f"medseg {report['medseg']}", show_header=True)
        table.add_column("library")
        table.add_column("version")
        for name, version in report["libraries"].items():
            table.add_row(name, version or "not installed")
        console.print(table)
        console.print(f"python {report['python']} on {report['platform']}")
        devices = Table(title="devices", show_header=True)
        for col in ("device", "name", "memory"):
            devices.add_column(col)
        for dev in report["devices"]:
            mem = f"{dev['memory_gb']:.1f} GiB" if dev.get("memory_gb") else ""
            devices.add_row(dev["device"], dev["name"], mem)
        console.print(devices)

