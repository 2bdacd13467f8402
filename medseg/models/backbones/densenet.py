"""DenseNet-121/161 backbones (Huang et al., 2017): the backbone interface over the zoo's DenseNet-BC encoder.

Paper: G. Huang, Z. Liu, L. van der Maaten, K. Q. Weinberger, "Densely Connected Convolutional Networks", CVPR 2017
(arXiv:1608.06993), Table 1. The network is :class:`medseg.models.dense.densenet.DenseNetEncoder` (2D or 3D); this
module gives it the backbone contract (levels, strides, ``output_stride``, pretrained key maps) and registers
``densenet121``, ``densenet161`` and ``densenet`` (an alias of DenseNet-121, the zoo's "densenet" backbone key).

Levels: the stem (stride 2; 64 or 96 channels), each dense block's output before its transition (strides 4, 8, 16)
and the last block after the final BN-ReLU (stride 32). With ``output_stride`` 16 or 8 the last transitions' 2x2
average pooling becomes stride 1 and the following blocks' 3x3 convolutions are dilated by 2 (and 4). Published counts
with the classifier (torchvision ``num_params``): DenseNet-121 7,978,856; DenseNet-161 28,681,000.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from medseg.models.backbones.base import Backbone, stage_schedule
from medseg.models.backbones.registry import BackboneInfo, register_backbone
from medseg.models.dense.densenet import DENSENET121, DENSENET161, DenseNetEncoder

__all__ = ["DenseNetBackbone"]


class DenseNetBackbone(Backbone):
    """DenseNet-BC encoder with the backbone contract.

    Shapes: ``(B, in_channels, *spatial)`` to ``len(block_config) + 1`` maps ``(B, out_channels[i], *spatial /
    strides[i])``, strides ``(2, 4, 8, 16, 32)`` for four blocks at ``output_stride=32``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        block_config: Layers per dense block.
        growth_rate: Growth rate k.
        init_features: Stem channels.
        output_stride: 8, 16 or 32.
        **kwargs: Further :class:`DenseNetEncoder` options (``bottleneck_factor``, ``compression``, ``dropout``,
            ``norm``).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        block_config: tuple[int, ...] = DENSENET121["block_config"],
        growth_rate: int = 32,
        init_features: int = 64,
        output_stride: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(spatial_dims, in_channels, output_stride)
        schedule = stage_schedule([2] * (len(block_config) - 1), output_stride, start_stride=4)
        self.encoder = DenseNetEncoder(
            spatial_dims, in_channels, block_config=block_config, growth_rate=growth_rate,
            init_features=init_features, transition_strides=[(s,) * spatial_dims for s, _, _ in schedule],
            block_dilations=[1] + [d for _, _, d in schedule], **kwargs,
        )
        self.out_channels = list(self.encoder.feature_channels)
        self.strides = [s[0] for s in self.encoder.feature_strides]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the feature maps of ``x`` (``(B, in_channels, *spatial)``), highest resolution first."""
        self.check_input(x)
        return self.encoder(x)

    def classifier_head(self, num_classes: int = 1000) -> nn.Module:
        """The classifier of torchvision's model: a linear layer on the pooled final features."""
        return nn.Linear(self.out_channels[-1], num_classes)


_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
_RULES = [
    (re.compile(r"^features\.conv0\.(\w+)$"), lambda m: f"encoder.stem.conv.{m[1]}"),
    (re.compile(r"^features\.norm0\.(\w+)$"), lambda m: f"encoder.stem.norm.{m[1]}"),
    (re.compile(r"^features\.denseblock(\d+)\.denselayer(\d+)\.(norm|conv)([12])\.(\w+)$"),
     lambda m: f"encoder.blocks.{int(m[1]) - 1}.layers.{int(m[2]) - 1}.{int(m[4]) - 1}.{m[3]}.{m[5]}"),
    (re.compile(r"^features\.transition(\d+)\.(norm|conv)\.(\w+)$"),
     lambda m: f"encoder.transitions.{int(m[1]) - 1}.0.{m[2]}.{m[3]}"),
    (re.compile(r"^features\.norm5\.(\w+)$"), lambda m: f"encoder.final.0.{m[1]}"),
]


def _map_torchvision(key: str, backbone: Backbone) -> str | None:
    """Map torchvision (and timm, same names) DenseNet keys to ours; also the legacy ``norm.1`` spelling."""
    if key.startswith(("classifier.", "head.")):
        return None
    if m := _LEGACY.match(key):
        key = m[1] + m[2]
    for pattern, fn in _RULES:
        if m := pattern.match(key):
            return fn(m)
    return key


def _builder(preset: dict[str, Any]):
    def build(spatial_dims: int, in_channels: int, *, output_stride: int = 32, **kwargs: Any) -> DenseNetBackbone:
        opts = {**preset, **kwargs}
        return DenseNetBackbone(spatial_dims, in_channels, output_stride=output_stride, **opts)

    return build


_PAPER = "Huang, Liu, van der Maaten, Weinberger, 'Densely Connected Convolutional Networks', CVPR 2017"
_TEST = {"growth_rate": 8, "init_features": 16, "block_config": (2, 2, 2, 2)}
for _name, _preset, _params, _src in (
    ("densenet121", DENSENET121, 7_978_856, "DenseNet121_Weights.IMAGENET1K_V1"),
    ("densenet", DENSENET121, 7_978_856, "DenseNet121_Weights.IMAGENET1K_V1 (densenet = DenseNet-121)"),
    ("densenet161", DENSENET161, 28_681_000, "DenseNet161_Weights.IMAGENET1K_V1"),
):
    register_backbone(BackboneInfo(
        name=_name, family="densenet", builder=_builder(_preset), spatial_dims=(2, 3), paper=_PAPER,
        paper_params=_params, source=f"torchvision torchvision/models/densenet.py, {_src} meta num_params",
        key_maps={"torchvision": _map_torchvision, "timm": _map_torchvision}, test_kwargs=_TEST,
    ))
