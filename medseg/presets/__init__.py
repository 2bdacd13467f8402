"""Training presets shipped with medseg (``--preset NAME``), resolved by :func:`resolve_preset`."""

from __future__ import annotations

from pathlib import Path

from medseg.errors import ConfigError

__all__ = ["PRESETS_DIR", "list_presets", "resolve_preset"]

#: The folder of the shipped presets (``<name>.yaml``).
PRESETS_DIR = Path(__file__).resolve().parent


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_preset(value: str | Path) -> Path:
    """The YAML file of a preset: an existing file path as given, else a shipped preset by name.

    ``cpu_small``, ``cpu_small.yaml`` and ``train_cpu_small`` name the same shipped preset.

    Raises:
        ConfigError: Neither a file nor a shipped preset; the message lists the shipped names.
    """
    path = Path(value)
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml").removeprefix("train_")
    shipped = PRESETS_DIR / f"{name}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise ConfigError(f"no such preset file, and no shipped preset of that name (shipped: {', '.join(list_presets())})",
                      str(value))
