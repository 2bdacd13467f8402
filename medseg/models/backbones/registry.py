"""The backbone registry: one name per encoder, its paper and the published parameter figure it is checked against.

Backbones are not segmentation models and are not in :mod:`medseg.models.registry`; segmentation networks (FCN,
DeepLab, PSPNet, ...) build them with :func:`create_backbone`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from medseg.errors import ModelError
from medseg.models.backbones.base import Backbone

__all__ = [
    "BackboneInfo",
    "backbone_parameter_count",
    "create_backbone",
    "get_backbone_info",
    "list_backbones",
    "register_backbone",
]

KeyMap = Callable[[str, Backbone], "str | None"]


@dataclass(frozen=True)
class BackboneInfo:
    """Metadata of one registered backbone.

    Attributes:
        name: Registry key.
        family: Family (module) name.
        builder: ``builder(spatial_dims, in_channels, *, output_stride, **kwargs)`` returning the backbone.
        spatial_dims: Supported spatial dimensions.
        paper: Citation of the paper the backbone implements.
        paper_params: Published parameter count of the reference ImageNet network (2D, 3 input channels, the
            classifier of :meth:`Backbone.classifier_head` attached), or ``None`` where no figure could be verified.
        source: Where ``paper_params`` comes from.
        default_output_stride: Output stride when none is asked for.
        key_maps: Pretrained key layouts this backbone can load (``"torchvision"``, ``"timm"``): each maps a key of
            that layout to ours, or to ``None`` for keys that are ignored (the classifier head).
        test_kwargs: Options of a small variant for the tests (narrow widths).
    """

    name: str
    family: str
    builder: Callable[..., Backbone]
    spatial_dims: tuple[int, ...]
    paper: str
    paper_params: int | None
    source: str
    default_output_stride: int = 32
    key_maps: dict[str, KeyMap] = field(default_factory=dict)
    test_kwargs: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, BackboneInfo] = {}


def register_backbone(info: BackboneInfo) -> BackboneInfo:
    """Add ``info`` to the registry (each name once)."""
    if info.name in _REGISTRY:
        raise ModelError(f"backbone {info.name!r} is registered twice")
    _REGISTRY[info.name] = info
    return info


def list_backbones(family: str | None = None) -> list[str]:
    """Sorted names of the registered backbones (of one ``family`` when given)."""
    return sorted(n for n, i in _REGISTRY.items() if family is None or i.family == family)


def get_backbone_info(name: str) -> BackboneInfo:
    """Return the metadata of backbone ``name``.

    Raises:
        ModelError: No backbone has that name.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown backbone {name!r}; known: {', '.join(list_backbones())}") from None


def create_backbone(
    name: str,
    spatial_dims: int,
    in_channels: int,
    *,
    output_stride: int | None = None,
    pretrained: str | None = None,
    pretrained_layout: str = "auto",
    **kwargs: Any,
) -> Backbone:
    """Build backbone ``name``, optionally loading weights from a local file.

    Args:
        name: Registry key (see :func:`list_backbones`).
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        output_stride: 8, 16 or 32 (dilation replaces the last strides); ``None`` takes the backbone's own default
            (32, or 8 for the DRNs, which are dilated by design).
        pretrained: Path of a local torchvision/timm state dict (``.pth``/``.pt``/``.bin``/``.safetensors``) to load
            with :func:`medseg.models.backbones.pretrained.load_pretrained`; nothing is ever downloaded.
        pretrained_layout: ``"torchvision"``, ``"timm"`` or ``"auto"``.
        **kwargs: Backbone options (e.g. ``width``, ``norm``).

    Raises:
        ModelError: Unknown name, unsupported dims/options, or weights that do not fit.
    """
    info = get_backbone_info(name)
    if spatial_dims not in info.spatial_dims:
        raise ModelError(f"{name}: spatial_dims={spatial_dims} is not supported (supports {info.spatial_dims})")
    try:
        model = info.builder(spatial_dims, in_channels,
                             output_stride=info.default_output_stride if output_stride is None else output_stride,
                             **kwargs)
    except TypeError as err:
        raise ModelError(f"{name}: {err}") from err
    model.registry_name = name
    if pretrained is not None:
        from medseg.models.backbones.pretrained import load_pretrained

        load_pretrained(model, pretrained, layout=pretrained_layout)
    return model


def backbone_parameter_count(name: str, num_classes: int = 1000) -> int:
    """Parameters of the reference ImageNet network of ``name``: the 2D, 3-channel backbone plus its classifier head.

    Built on the meta device, so counting costs no memory and no initialisation. Compare with
    ``get_backbone_info(name).paper_params``.
    """
    get_backbone_info(name)
    with torch.device("meta"):
        model = create_backbone(name, 2, 3)
        head = model.classifier_head(num_classes)
    return sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in head.parameters())
