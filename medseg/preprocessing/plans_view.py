"""A typed, read-only view of ``plans.json``: every consumer reads the plans through these dataclasses.

The plans stay plain JSON data (``medseg/planning/PLANS.md`` documents every key; the planner writes them and
:func:`medseg.planning.load_plans` validates them); :func:`configuration_of` turns one configuration — with
``inherits_from`` resolved — into a :class:`Configuration` whose attributes name what training, preprocessing,
prediction and the command line use, so no module indexes the plans by string keys of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from medseg.errors import PlanningError

__all__ = ["Configuration", "ModelEntry", "Topology", "configuration_of", "label_names", "plain"]


@dataclass(frozen=True)
class ModelEntry:
    """The network a configuration plans: registry name, dims, channels, classes and constructor options."""

    name: str
    spatial_dims: int
    in_channels: int
    out_channels: int
    kwargs: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The plans' ``model`` entry (what :func:`medseg.models.create_model_from_plans` takes)."""
        return {"name": self.name, "spatial_dims": self.spatial_dims, "in_channels": self.in_channels,
                "out_channels": self.out_channels, "kwargs": dict(self.kwargs)}


@dataclass(frozen=True)
class Topology:
    """The planned network's shape: stages, per-stage kernels and strides, features, encoder depth per stage."""

    n_stages: int
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    features_per_stage: tuple[int, ...]
    num_pool_per_axis: tuple[int, ...]
    n_conv_per_stage: tuple[int, ...] | None
    n_blocks_per_stage: tuple[int, ...] | None


@dataclass(frozen=True)
class Configuration:
    """One planned configuration (``2d``, ``3d_fullres``, ``3d_lowres``, …), ``inherits_from`` resolved.

    Attributes:
        name: The configuration's name.
        data_identifier: Folder name of its preprocessed cache.
        spatial_dims: 2 or 3.
        spacing: Target spacing, transposed axis order (2D: the in-plane axes).
        transpose_forward: Axis order the data is transposed to; ``transpose_backward`` undoes it.
        median_image_size_in_voxels: Median image size at the target spacing.
        patch_size: Training patch.
        batch_size: Training batch.
        batch_dice: Whether Dice is computed over the whole batch.
        normalization: One scheme per channel (``{"scheme": "ct" | "zscore" | …, …}``).
        resampling: Interpolation orders and the separate-z rule.
        topology: Stages, kernels, strides, features.
        model: The planned network.
        previous_stage: The configuration whose prediction a cascade stage takes (``None`` otherwise).
        next_stage: The cascade stage that takes this configuration's prediction (``None`` otherwise).
        labels: Label name → value of the dataset (the objects' classes for an instance dataset).
        channels: The dataset's input channels.
        task: ``"semantic"`` (label maps hold classes) or ``"instance"`` (label maps hold objects).
    """

    name: str
    data_identifier: str
    spatial_dims: int
    spacing: tuple[float, ...]
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    median_image_size_in_voxels: tuple[float, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    batch_dice: bool
    normalization: tuple[Mapping[str, Any], ...]
    resampling: Mapping[str, Any]
    topology: Topology
    model: ModelEntry
    previous_stage: str | None
    next_stage: str | None
    labels: Mapping[str, int]
    channels: tuple[Any, ...]
    task: str = "semantic"

    @property
    def is_instance(self) -> bool:
        """Whether the configuration trains on objects (an instance dataset)."""
        return self.task == "instance"

    @property
    def num_classes(self) -> int:
        """Output classes, background included."""
        return self.model.out_channels

    @property
    def num_channels(self) -> int:
        """Input channels."""
        return len(self.normalization)

    @property
    def label_names(self) -> dict[int, str]:
        """Label value → name."""
        return {int(v): str(k) for k, v in self.labels.items()}


def plain(value: Any) -> Any:
    """JSON-ready copy of a view's value (read-only mappings and tuples back to dicts and lists)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def _ints(values: Any) -> tuple[int, ...] | None:
    return None if values is None else tuple(int(v) for v in values)


def _topology(raw: Mapping[str, Any]) -> Topology:
    return Topology(
        n_stages=int(raw["n_stages"]),
        kernel_sizes=tuple(tuple(int(k) for k in ks) for ks in raw["kernel_sizes"]),
        strides=tuple(tuple(int(k) for k in ks) for ks in raw["strides"]),
        features_per_stage=tuple(int(f) for f in raw["features_per_stage"]),
        num_pool_per_axis=_ints(raw.get("num_pool_per_axis")) or (),
        n_conv_per_stage=_ints(raw.get("n_conv_per_stage")),
        n_blocks_per_stage=_ints(raw.get("n_blocks_per_stage")),
    )


def configuration_of(plans: Mapping[str, Any], configuration: str) -> Configuration:
    """The plans' configuration ``configuration`` as a :class:`Configuration`.

    Raises:
        PlanningError: No such configuration, or an entry is missing or of the wrong kind (a hand-edited file).
    """
    configs = plans.get("configurations") or {}
    if configuration not in configs:
        raise PlanningError(f"the plans have no configuration {configuration!r} (they have {', '.join(configs)})")
    raw = dict(configs[configuration])
    parent = raw.get("inherits_from")
    if parent and parent in configs:
        raw = {**configs[parent], **raw}
    try:
        model = raw["model"]
        entry = ModelEntry(name=str(model["name"]), spatial_dims=int(model["spatial_dims"]),
                           in_channels=int(model["in_channels"]), out_channels=int(model["out_channels"]),
                           kwargs=_frozen(dict(model.get("kwargs") or {})))
        return Configuration(
            name=configuration,
            data_identifier=str(raw["data_identifier"]),
            spatial_dims=int(raw["spatial_dims"]),
            spacing=tuple(float(s) for s in raw["spacing"]),
            transpose_forward=tuple(int(a) for a in raw["transpose_forward"]),
            transpose_backward=tuple(int(a) for a in raw["transpose_backward"]),
            median_image_size_in_voxels=tuple(float(s) for s in raw.get("median_image_size_in_voxels") or ()),
            patch_size=tuple(int(p) for p in raw["patch_size"]),
            batch_size=int(raw["batch_size"]),
            batch_dice=bool(raw["batch_dice"]),
            normalization=_frozen(list(raw["normalization"])),
            resampling=_frozen(dict(raw.get("resampling") or {})),
            topology=_topology(raw["topology"]),
            model=entry,
            previous_stage=raw.get("previous_stage"),
            next_stage=raw.get("next_stage"),
            labels=_frozen(dict(plans.get("labels") or {})),
            channels=_frozen(list(plans.get("channels") or [])),
            task=str(plans.get("task") or "semantic"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanningError(f"configuration {configuration!r} of the plans is malformed ({exc!r} missing or wrong)"
                            ) from None


def label_names(plans: Mapping[str, Any]) -> dict[int, str]:
    """Label value → name of the plans' dataset."""
    return {int(v): str(k) for k, v in (plans.get("labels") or {}).items()}
