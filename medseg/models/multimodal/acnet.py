"""ACNet: attention complementary network for RGB-D segmentation (Hu et al., ICIP 2019), 2D and 3D.

Paper: X. Hu, K. Yang, L. Fei, K. Wang, "ACNet: Attention Based Network to Exploit Complementary Features for RGBD
Semantic Segmentation", ICIP 2019 (arXiv:1905.10089), Section 2 and Fig. 2-3; official PyTorch code
github.com/anheidelonghu/ACNet (``ACNet_models_V1.py``, ``ACNet_train_V1_nyuv2.py``).

Layout. Three ResNet-50 branches: an RGB branch and a depth branch (each a full ResNet-50: 7x7 stem, max pooling,
``layer1``-``layer4``) and a fusion branch (max pooling and ``layer1``-``layer4`` only). The attention complementary
module (ACM, Fig. 3) weights a feature map channel-wise by ``sigmoid(conv1x1(avgpool(x)))``. At the stem and after
each of the four stages the fusion branch receives ``rgb * ACM_rgb(rgb) + depth * ACM_depth(depth)`` (added to its own
stage output from ``layer1`` on); the RGB and depth branches run on unchanged. Decoder (the code's): each fused map is
reduced by an "agant" layer (1x1 convolution, BN, ReLU: 2048->512, 1024->256, 512->128, 256->64, 64->64); four
upsampling stages of transposed residual blocks (6, 4, 3, 3 blocks: 3x3 convolution, BN, ReLU, 3x3 convolution, or a
3x3 transposed convolution with stride 2 in the last block of a stage, BN, plus the identity or a 2x2 transposed
convolution with BN; 512->256->128->64->64 channels), each followed by adding the next agant map; three more blocks
at stride 2 and a 2x2 transposed convolution to the classes. With ``deep_supervision=True`` the 1x1 side outputs of the
four upsampling stages (strides 16, 8, 4, 2) are returned in training, weighted like the main output (the code sums
the five cross-entropies).

Input channels: the depth is a second channel group of the input. ``modality_channels`` gives the sizes of the two
groups (RGB, depth); the default puts the last channel in the depth branch and the others in the RGB branch (``(3, 1)``
for RGB-D; ``(1, 1)`` for two grey channels).

Pretrained weights: ``pretrained_backbone`` (a local torchvision/timm ResNet-50 file) initialises the three branches
as the code does: the stems from the ImageNet stem (the depth stem, and any group that is not 3 channels, with its
kernel averaged over the RGB channels), the stages of all three branches from the ImageNet stages.

Parameter figure: none in the paper; the official ``ACNet(num_class=40)`` (NYUv2, 40 classes, RGB + 1-channel depth)
has 116,628,168 parameters (counted with torch; the four side-output convolutions included). We count the same with
``deep_supervision=True`` (116,607,528 without the side outputs).

Dims: 2D (the paper) and 3D (the same network on volumes, e.g. two MRI sequences).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from monai.networks.layers import Conv, Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones import create_backbone, get_backbone_info, load_pretrained
from medseg.models.backbones.base import ConvNormActD, make_divisible
from medseg.models.backbones.pretrained import read_state_dict
from medseg.models.backbones.resnet import Bottleneck
from medseg.models.base import SegmentationModel
from medseg.models.blocks import make_conv, make_norm
from medseg.models.multimodal.ssma import split_two_modalities
from medseg.models.registry import PaperConfig, register_model

__all__ = ["ACM", "ACNet", "TransBasicBlock"]

RESNET50_LAYERS = (3, 4, 6, 3)


class ACM(nn.Sequential):
    """Attention complementary module: channel weights ``sigmoid(conv1x1(avgpool(x)))`` (with bias).

    Shapes: ``(B, C, *spatial)`` to the weights ``(B, C, 1, ...)``.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__(Pool[Pool.ADAPTIVEAVG, spatial_dims](1), make_conv(spatial_dims, channels, channels, 1),
                         nn.Sigmoid())


class TransBasicBlock(nn.Module):
    """ACNet's decoder block: 3x3 conv-BN-ReLU, 3x3 (transposed, stride 2) conv-BN, plus shortcut, ReLU.

    Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial * stride)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvNormActD(spatial_dims, in_channels, in_channels, 3)
        if stride != 1:
            conv2: nn.Module = Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels, kernel_size=3,
                                                                  stride=stride, padding=1, output_padding=1,
                                                                  bias=False)
        else:
            conv2 = make_conv(spatial_dims, in_channels, out_channels, 3, bias=False)
        self.conv2 = nn.Sequential(conv2, make_norm("batch", spatial_dims, out_channels))
        self.upsample: nn.Module | None = None
        if stride != 1:
            self.upsample = nn.Sequential(
                Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels, kernel_size=stride, stride=stride,
                                                   bias=False),
                make_norm("batch", spatial_dims, out_channels))
        elif in_channels != out_channels:
            self.upsample = ConvNormActD(spatial_dims, in_channels, out_channels, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial * stride)``."""
        out = self.conv2(self.conv1(x))
        return torch.relu(out + (x if self.upsample is None else self.upsample(x)))


def _transpose_stage(spatial_dims: int, in_channels: int, out_channels: int, blocks: int,
                     stride: int = 2) -> nn.Sequential:
    """``blocks - 1`` blocks at ``in_channels`` and a last block to ``out_channels`` with ``stride``."""
    layers = [TransBasicBlock(spatial_dims, in_channels, in_channels) for _ in range(blocks - 1)]
    layers.append(TransBasicBlock(spatial_dims, in_channels, out_channels, stride))
    return nn.Sequential(*layers)


class _FusionStages(nn.Module):
    """The fusion branch: ResNet ``layer1``-``layer4`` (bottleneck stages) without a stem."""

    def __init__(self, spatial_dims: int, in_channels: int, width: float) -> None:
        super().__init__()
        c = in_channels
        for i, n in enumerate(RESNET50_LAYERS):
            planes = make_divisible((64 << i) * width)
            blocks = [Bottleneck(spatial_dims, c if j == 0 else planes * 4, planes, 2 if (i > 0 and j == 0) else 1)
                      for j in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            c = planes * 4


@register_model(
    "acnet",
    family="multimodal",
    spatial_dims=(2, 3),
    paper_title="ACNet: Attention Based Network to Exploit Complementary Features for RGBD Semantic Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2, in_channels=4, out_channels=40, kwargs={"deep_supervision": True}, params=116_628_168,
        source="no figure in the paper; official code github.com/anheidelonghu/ACNet ACNet_models_V1.py, "
               "ACNet(num_class=40) as in ACNet_train_V1_nyuv2.py (NYUv2, RGB + depth), counted with torch",
    ),
    divisor=32,
    deep_supervision=True,
    test_kwargs={"width": 0.125},
)
class ACNet(SegmentationModel):
    """ACNet (Hu et al., ICIP 2019): RGB, depth and fusion ResNet-50 branches joined by attention modules.

    Shapes: ``(B, in_channels, *spatial)`` (RGB and depth channel groups) to ``(B, out_channels, *spatial)``, each
    spatial size a multiple of 32; in training with ``deep_supervision=True`` a list of five maps at strides 1, 2, 4,
    8, 16.

    Args:
        spatial_dims: 2 or 3.
        in_channels: Input channels of both groups (paper: 3 + 1).
        out_channels: Classes (official NYUv2 configuration: 40).
        modality_channels: Channels of the RGB and the depth group (default: ``(in_channels - 1, 1)``).
        width: Multiplier of every channel count (1 = the paper).
        pretrained_backbone: Local torchvision/timm ResNet-50 weights for the three branches.
        deep_supervision: Build the four side outputs and return them in training.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        modality_channels: Sequence[int] | None = None,
        width: float = 1.0,
        pretrained_backbone: str | None = None,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.groups = split_two_modalities(self.model_name, in_channels, modality_channels,
                                           (in_channels - 1, 1))
        self.rgb = create_backbone("resnet50", spatial_dims, self.groups[0], width=width)
        self.depth = create_backbone("resnet50", spatial_dims, self.groups[1], width=width)
        chs = self.rgb.out_channels  # stem, layer1..layer4
        self.pool_fused = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
        self.fusion = _FusionStages(spatial_dims, chs[0], width)
        self.acm_rgb = nn.ModuleList(ACM(spatial_dims, c) for c in chs)
        self.acm_depth = nn.ModuleList(ACM(spatial_dims, c) for c in chs)

        def w(c: int) -> int:
            return make_divisible(c * width)

        agant = [w(64), w(64), w(128), w(256), w(512)]
        self.agant = nn.ModuleList(ConvNormActD(spatial_dims, c, a, 1) for c, a in zip(chs, agant, strict=True))
        self.up = nn.ModuleList([
            _transpose_stage(spatial_dims, agant[4], agant[3], 6),
            _transpose_stage(spatial_dims, agant[3], agant[2], 4),
            _transpose_stage(spatial_dims, agant[2], agant[1], 3),
            _transpose_stage(spatial_dims, agant[1], agant[0], 3),
        ])
        self.final_conv = _transpose_stage(spatial_dims, agant[0], agant[0], 3, stride=1)
        self.final_deconv = Conv[Conv.CONVTRANS, spatial_dims](agant[0], out_channels, kernel_size=2, stride=2)
        self.deep_supervision = deep_supervision
        if deep_supervision:
            self.side = nn.ModuleList(make_conv(spatial_dims, c, out_channels, 1)
                                      for c in (agant[3], agant[2], agant[1], agant[0]))
            self.deep_supervision_scales = [(s,) * spatial_dims for s in (1, 2, 4, 8, 16)]
            self.loss_weights = (1.0, 1.0, 1.0, 1.0, 1.0)
        self.input_divisor = (32,) * spatial_dims
        if pretrained_backbone is not None:
            self._load_pretrained(pretrained_backbone)

    def _load_pretrained(self, path: str | Path) -> None:
        """Initialise the three branches from one ImageNet ResNet-50 file, as the official code."""
        state = read_state_dict(path)
        key_map = get_backbone_info("resnet50").key_maps["torchvision"]
        stem_key = "conv1.weight"
        for branch, channels in ((self.rgb, self.groups[0]), (self.depth, self.groups[1])):
            adapted = dict(state)
            if stem_key in state and state[stem_key].shape[1] != channels:
                mean = state[stem_key].mean(1, keepdim=True)
                adapted[stem_key] = mean.repeat(1, channels, *([1] * (mean.dim() - 2)))
            load_pretrained(branch, adapted, layout="torchvision", inflate=self.spatial_dims == 3)
        stages = {}
        for key, value in state.items():
            ours = key_map(key, self.rgb)
            if ours is not None and ours.startswith("layer"):
                stages[ours] = value
        own = self.fusion.state_dict()
        loaded = {}
        for k, v in stages.items():
            if k in own:
                if v.shape != own[k].shape and v.dim() + 1 == own[k].dim():  # 2D weights into a 3D network
                    depth = own[k].shape[2]
                    v = v.unsqueeze(2).repeat(1, 1, depth, *([1] * (v.dim() - 2))) / depth
                if v.shape != own[k].shape:
                    raise ModelError(f"{self.model_name}: pretrained tensor {k} has shape {tuple(v.shape)}, the "
                                     f"fusion branch needs {tuple(own[k].shape)}")
                loaded[k] = v
        self.fusion.load_state_dict(loaded, strict=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x``; in training with ``deep_supervision=True`` also return the four side outputs."""
        self.check_input(x)
        x_rgb, x_depth = x.split(self.groups, dim=1)
        rgb = self.rgb(x_rgb)
        depth = self.depth(x_depth)
        fused = [rgb[0] * self.acm_rgb[0](rgb[0]) + depth[0] * self.acm_depth[0](depth[0])]
        m = self.pool_fused(fused[0])
        for i in range(1, 5):
            m = getattr(self.fusion, f"layer{i}")(m)
            m = m + rgb[i] * self.acm_rgb[i](rgb[i]) + depth[i] * self.acm_depth[i](depth[i])
            fused.append(m)
        y = self.agant[4](fused[4])
        sides = []
        for k, up in enumerate(self.up):
            y = up(y)
            sides.append(y)
            y = y + self.agant[3 - k](fused[3 - k])
        out = self.final_deconv(self.final_conv(y))
        if not (self.training and self.deep_supervision):
            return out
        side_outs = [head(s) for head, s in zip(self.side, sides, strict=True)]  # strides 16, 8, 4, 2
        return [out, *reversed(side_outs)]

