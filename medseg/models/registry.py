"""The model registry: one name per architecture, its paper, and the facts the contract tests check.

A model module registers its class with :func:`register_model` (a class decorator); importing
:mod:`medseg.models` imports every model module, so every architecture is registered once. Users build models with
:func:`create_model` and look them up with :func:`list_models` and :func:`get_model_info`.

Every registered class takes ``(spatial_dims, in_channels, out_channels, *, ...)`` and is a
:class:`medseg.models.base.SegmentationModel`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import torch
from torch import nn

from medseg.errors import ModelError

__all__ = [
    "TASKS",
    "ModelInfo",
    "PaperConfig",
    "count_parameters",
    "create_model",
    "get_model_info",
    "list_families",
    "list_models",
    "paper_parameter_count",
    "register_model",
]


@dataclass(frozen=True)
class PaperConfig:
    """The configuration a paper reports its own network in, and the paper's parameter figure for it.

    Attributes:
        spatial_dims: Spatial dimensions of the paper's network (2 or 3).
        in_channels: Input channels in the paper's experiment.
        out_channels: Output channels (classes) in the paper's experiment.
        kwargs: Keyword arguments of the registered class that reproduce the paper's network.
        params: The paper's own parameter count for that network, or ``None`` where the paper gives none.
        source: Where in the paper the configuration and the figure are stated.
    """

    spatial_dims: int
    in_channels: int
    out_channels: int
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    params: int | None = None
    source: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of one registered architecture.

    Attributes:
        name: Registry key (snake_case).
        family: Family the model belongs to (its folder under ``medseg/models``).
        cls: The model class.
        spatial_dims: The spatial dimensions the model supports.
        paper_title: Title of the paper the model implements.
        paper_year: Year of that paper.
        paper: The paper's configuration and parameter figure.
        divisor: Smallest input divisor at the default configuration, per spatial dims: each spatial size of the
            input must be a multiple of it (models with other options expose the exact value as
            ``model.input_divisor``).
        deep_supervision: Whether the model can return deep-supervision outputs (``deep_supervision=True``).
        test_kwargs: Keyword arguments of a small variant for the contract tests, per spatial dims.
        task: What the model outputs: ``"semantic"`` (one class per voxel: ``(B, out_channels, *spatial)``
            logits), ``"instance"`` or ``"panoptic"`` (separate objects with a class each) or ``"interactive"``
            (the object marked by user points); see :mod:`medseg.models.instance.base` for the other tasks' contract.
    """

    name: str
    family: str
    cls: type[nn.Module]
    spatial_dims: tuple[int, ...]
    paper_title: str
    paper_year: int
    paper: PaperConfig
    divisor: Mapping[int, int]
    deep_supervision: bool
    test_kwargs: Mapping[int, Mapping[str, Any]]
    task: str = "semantic"

    @property
    def summary(self) -> str:
        """First line of the model class's docstring."""
        return (inspect.getdoc(self.cls) or "").splitlines()[0] if inspect.getdoc(self.cls) else ""

    def accepted_kwargs(self) -> tuple[str, ...]:
        """Names of the keyword-only options the model class accepts."""
        params = inspect.signature(self.cls.__init__).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


_REGISTRY: dict[str, ModelInfo] = {}

#: The tasks a model can be registered for (see :class:`ModelInfo`).
TASKS = ("semantic", "instance", "panoptic", "interactive")

M = TypeVar("M", bound=type[nn.Module])


def register_model(
    name: str,
    *,
    family: str,
    spatial_dims: tuple[int, ...],
    paper_title: str,
    paper_year: int,
    paper: PaperConfig,
    divisor: int | Mapping[int, int],
    deep_supervision: bool = False,
    test_kwargs: Mapping[str, Any] | Mapping[int, Mapping[str, Any]] | None = None,
    task: str = "semantic",
) -> Callable[[M], M]:
    """Class decorator that registers a model class under ``name``.

    Args:
        name: Registry key; registering the same key twice raises :class:`~medseg.errors.ModelError`.
        family: Family (folder) name.
        spatial_dims: Supported spatial dimensions, e.g. ``(2, 3)`` or ``(3,)``.
        paper_title: Title of the implemented paper.
        paper_year: Year of the paper.
        paper: The paper's configuration and parameter figure.
        divisor: Smallest input divisor at the default configuration, one int for all dims or one per dims.
        deep_supervision: Whether ``deep_supervision=True`` is supported.
        test_kwargs: Options of a small variant for the contract tests: one mapping for all dims, or a mapping
            from spatial dims to options.
        task: ``"semantic"`` (default), ``"instance"``, ``"panoptic"`` or ``"interactive"``.

    Returns:
        The decorator, which returns the class unchanged.
    """
    if task not in TASKS:
        raise ModelError(f"model {name!r}: task must be one of {', '.join(TASKS)}, got {task!r}")

    def decorator(cls: M) -> M:
        if name in _REGISTRY:
            raise ModelError(f"model name {name!r} is registered twice ({_REGISTRY[name].cls.__qualname__} and "
                             f"{cls.__qualname__})")
        dims = tuple(sorted(spatial_dims))
        if not dims or any(d not in (1, 2, 3) for d in dims):
            raise ModelError(f"model {name!r}: spatial_dims must be a non-empty subset of (1, 2, 3), got {dims}")
        div = {d: int(divisor) for d in dims} if isinstance(divisor, int) else {d: int(divisor[d]) for d in dims}
        if test_kwargs is None:
            tk: dict[int, Mapping[str, Any]] = {d: {} for d in dims}
        elif all(isinstance(k, int) for k in test_kwargs):
            tk = {d: dict(test_kwargs.get(d, {})) for d in dims}  # type: ignore[call-overload]
        else:
            tk = {d: dict(test_kwargs) for d in dims}
        _REGISTRY[name] = ModelInfo(
            name=name,
            family=family,
            cls=cls,
            spatial_dims=dims,
            paper_title=paper_title,
            paper_year=paper_year,
            paper=paper,
            divisor=MappingProxyType(div),
            deep_supervision=deep_supervision,
            test_kwargs=MappingProxyType({d: MappingProxyType(dict(v)) for d, v in tk.items()}),
            task=task,
        )
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def list_models(family: str | None = None, *, task: str | None = None) -> list[str]:
    """Return the registered model names, sorted, optionally only those of one family and/or one task.

    Args:
        family: Only the models of this family.
        task: Only the models of this task (``"semantic"``, ``"instance"``, ``"panoptic"``, ``"interactive"``).

    Raises:
        ModelError: ``family`` is given and no model belongs to it, or ``task`` is not a task.
    """
    if task is not None and task not in TASKS:
        raise ModelError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    names = sorted(n for n, info in _REGISTRY.items() if task is None or info.task == task)
    if family is None:
        return names
    names = [n for n in names if _REGISTRY[n].family == family]
    if not names and not any(info.family == family for info in _REGISTRY.values()):
        raise ModelError(f"unknown model family {family!r}; choose one of: {', '.join(list_families())}")
    return names


def list_families() -> list[str]:
    """Return the families of the registered models, sorted."""
    return sorted({info.family for info in _REGISTRY.values()})


def get_model_info(name: str) -> ModelInfo:
    """Return the metadata of the model registered as ``name``.

    Raises:
        ModelError: No model is registered under ``name``; the message lists the registered names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}") from None


def create_model(name: str, spatial_dims: int, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name``.

    Args:
        name: Registry key (see :func:`list_models`).
        spatial_dims: 2 or 3; must be one the model supports.
        in_channels: Input channels (image modalities).
        out_channels: Output channels (classes, background included).
        **kwargs: Model-specific keyword options.

    Returns:
        The model; its forward maps ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``.

    Raises:
        ModelError: Unknown name, unsupported ``spatial_dims`` or an option the model does not accept.
    """
    info = get_model_info(name)
    if spatial_dims not in info.spatial_dims:
        supported = ", ".join(f"{d}D" for d in info.spatial_dims)
        raise ModelError(f"model {name!r} supports {supported} only, not spatial_dims={spatial_dims!r}")
    accepted = info.accepted_kwargs()
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ModelError(f"model {name!r} has no option {', '.join(map(repr, unknown))}; its options are: "
                         f"{', '.join(accepted) or 'none'}")
    return info.cls(spatial_dims, in_channels, out_channels, **kwargs)


def create_model_from_plans(
    entry: Mapping[str, Any],
    name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    deep_supervision: bool = True,
) -> nn.Module:
    """Build the network a plans configuration describes: the one function training and inference share.

    Args:
        entry: The configuration's ``model`` entry: ``name``, ``spatial_dims``, ``in_channels``, ``out_channels``,
            ``kwargs`` (plain data).
        name: Another registry model instead of ``entry["name"]``; it takes the planned options it accepts.
        overrides: Keyword options replacing the planned ones (``model_kwargs`` of a training config).
        deep_supervision: Whether deep-supervision heads are wanted (built only when the model supports them).

    Returns:
        The model, freshly initialised.

    Raises:
        ModelError: Unknown model, unsupported dims or options.
    """
    name = name or str(entry["name"])
    info = get_model_info(name)
    accepted = set(info.accepted_kwargs())
    kwargs = {k: v for k, v in dict(entry.get("kwargs") or {}).items() if k in accepted}
    kwargs.update(dict(overrides or {}))
    if "deep_supervision" in accepted:
        kwargs["deep_supervision"] = bool(deep_supervision and info.deep_supervision)
    return create_model(name, int(entry["spatial_dims"]), int(entry["in_channels"]), int(entry["out_channels"]),
                        **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model`` (``sum(p.numel() for p in model.parameters())``)."""
    return sum(p.numel() for p in model.parameters())


def paper_parameter_count(name: str) -> int:
    """Parameter count of the model ``name`` built at its paper configuration.

    The model is built on the meta device (no memory, no initialisation); models whose constructors need real
    tensors are built on the CPU instead.
    """
    info = get_model_info(name)
    cfg = info.paper
    try:
        with torch.device("meta"):
            model = create_model(name, cfg.spatial_dims, cfg.in_channels, cfg.out_channels, **cfg.kwargs)
    except (RuntimeError, NotImplementedError):
        model = create_model(name, cfg.spatial_dims, cfg.in_channels, cfg.out_channels, **cfg.kwargs)
    return count_parameters(model)
