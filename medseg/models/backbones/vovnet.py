"""VoVNet-39/57 backbones (Lee et al., 2019): one-shot aggregation (OSA), 2D or 3D.

Paper: Y. Lee, J. Hwang, S. Lee, Y. Bae, J. Park, "An Energy and GPU-Computation Efficient Backbone Network for
Real-Time Object Detection", CVPR Workshops 2019 (arXiv:1904.09730), Section 3 and Table 1; official PyTorch code
github.com/stigma0617/VoVNet.pytorch (``models_vovnet/vovnet.py``), whose ImageNet weights
(``vovnet39_torchvision.pth``, ``vovnet57_torchvision.pth``) load into this module from a local file.

Layout (Table 1): a stem of three 3x3 convolutions (64 with stride 2, 64, 128 with stride 2), then four stages of
OSA modules. An OSA module runs five 3x3 convolutions in sequence (``stage`` channels each) and aggregates its input
and all five outputs *once*, by concatenation and a 1x1 convolution to the ``concat`` channels. Stage 2 to 5:
``stage`` channels 128/160/192/224, ``concat`` channels 256/512/768/1024; stages 3-5 start with 3x3 max pooling with
stride 2 (``ceil_mode``). VoVNet-39 has 1/1/2/2 OSA modules per stage, VoVNet-57 1/1/4/3. Every convolution is
followed by BN and ReLU. As in the official code, the second and later OSA modules of a stage add their input to their
output (identity mapping); the first of a stage does not.

Levels: the stem's stride-2 map (64 channels) and each stage (strides 4, 8, 16, 32; 256/512/768/1024 channels). With
``output_stride`` 16 or 8 the pooling of stage 5 (and 4) keeps the size (3x3, stride 1) and the stage's 3x3
convolutions are dilated by 2 (and 4).

Parameter figures (official code, ImageNet classifier ``Linear(1024, 1000)`` attached): VoVNet-39 22,600,296,
VoVNet-57 36,640,296; we count the same.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from monai.networks.layers import Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.base import Backbone, ConvNormActD, make_divisible
from medseg.models.backbones.registry import BackboneInfo, register_backbone

__all__ = ["OSAModule", "VoVNetBackbone"]

STAGE_CHANNELS = (128, 160, 192, 224)
CONCAT_CHANNELS = (256, 512, 768, 1024)


class OSAModule(nn.Module):
    """One-shot aggregation module: ``n_layers`` chained 3x3 convolutions, one concatenation, one 1x1 convolution.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, concat_channels, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        stage_channels: Channels of each 3x3 convolution.
        concat_channels: Channels of the aggregation (1x1) convolution.
        n_layers: Number of 3x3 convolutions (5 in VoVNet-39/57).
        dilation: Dilation of the 3x3 convolutions.
        identity: Add the input to the output (requires ``C_in == concat_channels``).
    """

    def __init__(self, spatial_dims: int, in_channels: int, stage_channels: int, concat_channels: int,
                 n_layers: int = 5, dilation: int = 1, identity: bool = False) -> None:
        super().__init__()
        if identity and in_channels != concat_channels:
            raise ModelError(f"OSAModule: identity mapping needs in_channels == concat_channels, got {in_channels} "
                             f"and {concat_channels}")
        self.identity = identity
        self.layers = nn.ModuleList()
        c = in_channels
        for _ in range(n_layers):
            self.layers.append(ConvNormActD(spatial_dims, c, stage_channels, 3, dilation=dilation))
            c = stage_channels
        self.concat = ConvNormActD(spatial_dims, in_channels + n_layers * stage_channels, concat_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Aggregate ``x`` and the outputs of every layer once."""
        outputs = [x]
        y = x
        for layer in self.layers:
            y = layer(y)
            outputs.append(y)
        out = self.concat(torch.cat(outputs, dim=1))
        return out + x if self.identity else out


class VoVNetStage(nn.Module):
    """A VoVNet stage: optional 3x3 max pooling, then OSA modules (identity mapping from the second on)."""

    def __init__(self, spatial_dims: int, in_channels: int, stage_channels: int, concat_channels: int,
                 n_modules: int, pool: str, dilation: int) -> None:
        super().__init__()
        if pool == "none":
            self.pool: nn.Module = nn.Identity()
        elif pool == "stride2":
            self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, ceil_mode=True)
        else:  # "stride1": the stride is replaced by dilation
            self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=1, padding=1)
        self.blocks = nn.ModuleList(
            OSAModule(spatial_dims, in_channels if i == 0 else concat_channels, stage_channels, concat_channels,
                      dilation=dilation, identity=i > 0)
            for i in range(n_modules)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool (stages 3-5) and run the OSA modules."""
        x = self.pool(x)
        for block in self.blocks:
            x = block(x)
        return x


class VoVNetBackbone(Backbone):
    """VoVNet encoder (Lee et al., 2019) returning the stem's stride-2 map and the four stages' maps.

    Shapes: ``(B, in_channels, *spatial)`` to 5 maps ``(B, out_channels[i], *spatial / strides[i])`` with strides
    ``(2, 4, 8, 16, 32)`` at ``output_stride=32`` (sizes rounded up by the ``ceil_mode`` pooling).

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels.
        modules_per_stage: OSA modules of stages 2-5 ((1, 1, 2, 2) for VoVNet-39, (1, 1, 4, 3) for VoVNet-57).
        output_stride: 8, 16 or 32.
        width: Multiplier of every channel count.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        modules_per_stage: Sequence[int] = (1, 1, 2, 2),
        output_stride: int = 32,
        width: float = 1.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, output_stride)

        def w(c: int) -> int:
            return make_divisible(c * width)

        self.stem = nn.Sequential(
            ConvNormActD(spatial_dims, in_channels, w(64), 3, 2),
            ConvNormActD(spatial_dims, w(64), w(64), 3),
            ConvNormActD(spatial_dims, w(64), w(128), 3, 2),
        )
        self.out_channels, self.strides = [w(64)], [2]
        c, total, dilation = w(128), 4, 1
        for i, n in enumerate(modules_per_stage):
            if i == 0:
                pool = "none"
            elif total * 2 > output_stride:
                pool, dilation = "stride1", dilation * 2
            else:
                pool, total = "stride2", total * 2
            stage = VoVNetStage(spatial_dims, c, w(STAGE_CHANNELS[i]), w(CONCAT_CHANNELS[i]), n, pool, dilation)
            self.add_module(f"stage{i + 2}", stage)
            c = w(CONCAT_CHANNELS[i])
            self.out_channels.append(c)
            self.strides.append(total)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the 5 feature maps of ``x`` (``(B, in_channels, *spatial)``), highest resolution first."""
        self.check_input(x)
        x = self.stem[1](self.stem[0](x))
        features = [x]
        x = self.stem[2](x)
        for i in range(2, 6):
            x = getattr(self, f"stage{i}")(x)
            features.append(x)
        return features

    def classifier_head(self, num_classes: int = 1000) -> nn.Module:
        """The official ``classifier``: a linear layer on the globally pooled last map."""
        return nn.Linear(self.out_channels[-1], num_classes)


_STEM_KEY = re.compile(r"^stem\.stem_(\d)/(conv|norm)\.(\w+)$")
_OSA_KEY = re.compile(r"^stage(\d)\.OSA\d_(\d+)\.(layers\.(\d+)|concat)\.OSA\d_\d+_(?:\d+|concat)/(conv|norm)\.(\w+)$")


def _map_official(key: str, backbone: Backbone) -> str | None:
    """Map a key of the official ``vovnet*_torchvision.pth`` files to ours (``None`` for the classifier)."""
    if key.startswith("classifier."):
        return None
    m = _STEM_KEY.match(key)
    if m:
        return f"stem.{int(m.group(1)) - 1}.{m.group(2)}.{m.group(3)}"
    m = _OSA_KEY.match(key)
    if m:
        stage, module, part, layer, kind, param = m.groups()
        where = f"layers.{layer}" if part.startswith("layers") else "concat"
        return f"stage{stage}.blocks.{int(module) - 1}.{where}.{kind}.{param}"
    return key


def _builder(modules_per_stage: tuple[int, ...]):
    def build(spatial_dims: int, in_channels: int, *, output_stride: int = 32, **kwargs: object) -> VoVNetBackbone:
        return VoVNetBackbone(spatial_dims, in_channels, modules_per_stage=modules_per_stage,
                              output_stride=output_stride, **kwargs)  # type: ignore[arg-type]

    return build


_PAPER = ("Lee, Hwang, Lee, Bae, Park, 'An Energy and GPU-Computation Efficient Backbone Network for Real-Time Object "
          "Detection', CVPR Workshops 2019 (arXiv:1904.09730)")
for _name, _modules, _params in (("vovnet39", (1, 1, 2, 2), 22_600_296), ("vovnet57", (1, 1, 4, 3), 36_640_296)):
    register_backbone(BackboneInfo(
        name=_name, family="vovnet", builder=_builder(_modules), spatial_dims=(2, 3), paper=_PAPER,
        paper_params=_params,
        source=f"official code github.com/stigma0617/VoVNet.pytorch models_vovnet/vovnet.py, {_name}() with its "
               "ImageNet classifier (1000 classes), counted with torch",
        key_maps={"torchvision": _map_official}, test_kwargs={"width": 0.125},
    ))
