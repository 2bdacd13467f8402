"""TransUNet: a hybrid ResNet-50 + ViT-B/16 encoder with a cascaded up-sampling decoder (Chen et al., 2021).

Paper: J. Chen, Y. Lu, Q. Yu, X. Luo, E. Adeli, Y. Wang, L. Lu, A. L. Yuille, Y. Zhou, "TransUNet: Transformers Make
Strong Encoders for Medical Image Segmentation", arXiv:2102.04306 (2021), Section 3 and Figure 1. Official code:
Beckschen/TransUNet, ``networks/vit_seg_modeling.py``, ``networks/vit_seg_modeling_resnet_skip.py`` and the
``R50-ViT-B_16`` entry of ``networks/vit_seg_configs.py`` with ``train.py``'s defaults (224x224 input, ``n_skip=3``,
9 Synapse classes).

Layout:

* CNN part (ResNet-50 v2 style of "Big Transfer", as in the code): every convolution is weight-standardised (each
  filter normalised to zero mean and unit variance, eps 1e-5, before use) and followed by group norm (32 groups,
  eps 1e-6). Root: 7x7 stride-2 convolution (64 channels), GN, ReLU, 3x3 stride-2 max pooling without padding. Three
  stages of 3, 4 and 9 bottleneck units (conv1x1-GN-ReLU, conv3x3(stride)-GN-ReLU, conv1x1-GN, plus a projection
  shortcut conv1x1(stride) + GN(one group per channel) when the shape changes, then ReLU), 256, 512 and 1024
  output channels, the last two with stride 2: output stride 16. The root, stage-1 and stage-2 outputs (strides 2,
  4, 8) are the skips; as in the code, a skip one pixel short (the unpadded max pooling) is zero-padded at the end.
* Transformer: the stride-16 feature map is embedded by a 1x1 convolution (the "patch" of 16x16 image pixels) to
  768 channels, learned position embeddings are added (dropout 0.1), then 12 pre-norm ViT-B blocks (12 heads, MLP
  3072, GELU, dropout 0.1 in the MLP) and a final LayerNorm (eps 1e-6).
* Cascaded upsampler (CUP): the tokens are reshaped to the grid, a 3x3 convolution + BN + ReLU gives 512 channels,
  then four blocks of 2x (bi/tri)linear up-sampling (``align_corners=True``), concatenation with the skip (512, 256,
  64 channels; none for the last block) and two 3x3 conv + BN + ReLU (256, 128, 64, 16 channels); a 3x3 convolution
  gives the logits at full resolution.

Attention runs through ``scaled_dot_product_attention`` (memory linear in the tokens with fused kernels). The code
repeats a one-channel image to three channels; here the root convolution takes ``in_channels`` directly.

Pretrained weights: ``pretrained`` is a local path to the official ImageNet-21k checkpoint ``R50+ViT-B_16.npz`` (the
JAX/Flax layout TransUNet's ``load_from`` reads: ``embedding/kernel``, ``Transformer/encoderblock_{i}/...``,
``conv_root/kernel``, ``block{b}/unit{u}/conv{1,2,3}/kernel``, ``gn*/scale``, ...; a ``.pth`` / ``.safetensors``
state dict with the same keys also works). Position embeddings are resampled to the model's grid, a class-token
entry is dropped, and the RGB root filters are summed over colour (then spread over ``in_channels``) when the input
is not RGB. 2D only (the checkpoint is 2D). Nothing is downloaded.

Paper configuration: 2D, 224x224, three input channels (the code's repeated grey image), 9 classes (Synapse).
Parameter figure: 105,277,081, counted with the official code at that configuration (``VisionTransformer(
CONFIGS['R50-ViT-B_16'], img_size=224, num_classes=9)``, ``n_skip=3``, ``patches.grid=(14, 14)``); ours is the
same. 3D works by the same code path (3D convolutions, a 3D grid of tokens); the paper is 2D. Each spatial size
must be a multiple of 16; inputs of another size than ``img_size`` get (bi/tri)linearly resampled position
embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv, Pool
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, as_tuple, make_act, make_conv, make_norm
from medseg.models.registry import PaperConfig, register_model
from medseg.models.transformer._modules import (
    ViTBlock,
    load_into,
    map_to_tokens,
    read_weights,
    resize_pos_embed,
    tokens_to_map,
)

__all__ = ["ResNetV2Hybrid", "StdConv", "TransUNet", "map_official_transunet"]

RELU = ("relu", {"inplace": True})


class StdConv(nn.Module):
    """Weight-standardised convolution (Qiao et al., 2019; used by Big Transfer and TransUNet's ResNet).

    Each output filter is normalised to zero mean and unit variance (biased variance, ``eps`` 1e-5) before the
    convolution. Shapes: ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial / stride)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: Kernel size.
        stride: Stride.
        padding: Zero padding.
        eps: Epsilon of the standardisation.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                                                 padding=padding, bias=False)
        self.eps = eps
        self._fn = F.conv3d if spatial_dims == 3 else F.conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` with the standardised filters."""
        w = self.conv.weight
        var, mean = torch.var_mean(w, dim=tuple(range(1, w.dim())), keepdim=True, unbiased=False)
        w = (w - mean) / torch.sqrt(var + self.eps)
        return self._fn(x, w, None, self.conv.stride, self.conv.padding)


class _Bottleneck(nn.Module):
    """TransUNet's ResNet-v2 unit: 1x1, 3x3 (stride), 1x1 weight-standardised convs with GN; projection shortcut."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, cmid: int, stride: int, groups: int) -> None:
        super().__init__()

        def gn(c: int) -> nn.Module:
            return make_norm(("group", {"num_groups": groups, "eps": 1e-6}), spatial_dims, c)

        self.conv1, self.gn1 = StdConv(spatial_dims, cin, cmid, 1), gn(cmid)
        self.conv2, self.gn2 = StdConv(spatial_dims, cmid, cmid, 3, stride, 1), gn(cmid)
        self.conv3, self.gn3 = StdConv(spatial_dims, cmid, cout, 1), gn(cout)
        self.relu = make_act(RELU)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = StdConv(spatial_dims, cin, cout, 1, stride)
            self.gn_proj = make_norm(("group", {"num_groups": cout}), spatial_dims, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.gn_proj(self.downsample(x))
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        return self.relu(residual + self.gn3(self.conv3(y)))


def _pad_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero-pad ``x`` at the end of each spatial axis to ``size`` (the code's fix for the unpadded max pooling)."""
    pad = [p for have, want in zip(reversed(x.shape[2:]), reversed(size), strict=True) for p in (0, want - have)]
    return F.pad(x, pad) if any(pad) else x


class ResNetV2Hybrid(nn.Module):
    """The CNN of TransUNet's hybrid encoder: root and three stages of bottleneck units (output stride 16).

    Shapes: ``(B, C_in, *spatial)`` to ``(y, skips)``: ``y`` ``(B, 16 * width, *spatial / 16)`` and the skips
    ``[(B, 8 * width, *spatial / 8), (B, 4 * width, *spatial / 4), (B, width, *spatial / 2)]`` (deepest first).

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        units: Bottleneck units per stage (R50: 3, 4, 9).
        width: Root width (64); stages output 4x, 8x and 16x it.
        groups: Groups of the group norms (32).
    """

    def __init__(self, spatial_dims: int, in_channels: int, units: Sequence[int] = (3, 4, 9), width: int = 64,
                 groups: int = 32) -> None:
        super().__init__()
        self.root_conv = StdConv(spatial_dims, in_channels, width, 7, 2, 3)
        self.root_gn = make_norm(("group", {"num_groups": groups, "eps": 1e-6}), spatial_dims, width)
        self.relu = make_act(RELU)
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=0)
        self.stages = nn.ModuleList()
        cin = width
        for n, mult, stride in zip(units, (1, 2, 4), (1, 2, 2), strict=True):
            cout, cmid = 4 * width * mult, width * mult
            self.stages.append(nn.Sequential(*[
                _Bottleneck(spatial_dims, cin if u == 0 else cout, cout, cmid, stride if u == 0 else 1, groups)
                for u in range(n)
            ]))
            cin = cout
        self.out_channels = cin
        self.skip_channels = [8 * width, 4 * width, width]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the stride-16 map and the three skips (deepest first)."""
        size = x.shape[2:]
        y = self.relu(self.root_gn(self.root_conv(x)))
        skips = [y]
        y = self.pool(y)
        for i, stage in enumerate(self.stages[:-1]):
            y = stage(y)
            skips.append(_pad_to(y, [s // (4 * 2**i) for s in size]))
        return self.stages[-1](y), skips[::-1]


class _DecoderBlock(nn.Module):
    """CUP block: 2x linear up-sampling (``align_corners=True``), optional skip concatenation, two conv-BN-ReLU."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, skip: int) -> None:
        super().__init__()
        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"
        self.conv1 = ConvNormAct(spatial_dims, cin + skip, cout, 3, bias=False, norm="batch", act=RELU)
        self.conv2 = ConvNormAct(spatial_dims, cout, cout, 3, bias=False, norm="batch", act=RELU)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


@register_model(
    "transunet",
    family="transformer",
    spatial_dims=(2, 3),
    paper_title="TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation",
    paper_year=2021,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=3,
        out_channels=9,
        kwargs={"img_size": 224},
        params=105_277_081,
        source="official code Beckschen/TransUNet, networks/vit_seg_modeling.py VisionTransformer(CONFIGS["
               "'R50-ViT-B_16'], img_size=224, num_classes=9) with n_skip=3 and patches.grid=(14, 14) (train.py "
               "defaults), counted with that code",
    ),
    divisor=16,
    test_kwargs={
        2: {"img_size": 64, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "mlp_dim": 64,
            "resnet_units": (1, 1, 1), "resnet_width": 8, "norm_groups": 4, "decoder_channels": (16, 8, 8, 4),
            "head_channels": 16},
        3: {"img_size": 32, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "mlp_dim": 64,
            "resnet_units": (1, 1, 1), "resnet_width": 4, "norm_groups": 2, "decoder_channels": (8, 8, 4, 4),
            "head_channels": 8},
    },
)
class TransUNet(SegmentationModel):
    """TransUNet (Chen et al., 2021): R50-ViT-B/16 hybrid encoder and cascaded up-sampler with skips.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of 16.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels (the code: 3, a grey image repeated).
        out_channels: Classes (Synapse: 9).
        img_size: Input size the position embeddings are laid out for (paper: 224).
        hidden_size: ViT width (ViT-B: 768).
        num_layers: Transformer layers (12).
        num_heads: Attention heads (12).
        mlp_dim: MLP width (3072).
        resnet_units: Bottleneck units of the three ResNet stages (R50: 3, 4, 9).
        resnet_width: ResNet root width (64).
        norm_groups: Groups of the ResNet's group norms (32).
        decoder_channels: Output channels of the four CUP blocks (256, 128, 64, 16).
        head_channels: Channels of the convolution after the transformer (512).
        n_skip: Skips used, deepest first (3).
        dropout: Dropout of the embeddings and the MLPs (0.1).
        attention_dropout: Dropout of the attention weights (0).
        pretrained: Local path of the official ``R50+ViT-B_16.npz`` checkpoint (2D only).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        img_size: int | Sequence[int] = 224,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        resnet_units: Sequence[int] = (3, 4, 9),
        resnet_width: int = 64,
        norm_groups: int = 32,
        decoder_channels: Sequence[int] = (256, 128, 64, 16),
        head_channels: int = 512,
        n_skip: int = 3,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        pretrained: str | None = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        self.img_size = as_tuple(img_size, spatial_dims)
        if any(s % 16 for s in self.img_size) or len(decoder_channels) != 4 or not 0 <= n_skip <= 3:
            raise ModelError(f"{self.model_name}: img_size must be a multiple of 16, decoder_channels four widths and "
                             f"n_skip in 0..3, got {self.img_size}, {tuple(decoder_channels)}, {n_skip}")
        if hidden_size % num_heads or len(resnet_units) != 3:
            raise ModelError(f"{self.model_name}: hidden_size must be divisible by num_heads and resnet_units have "
                             f"three entries, got {hidden_size}, {num_heads}, {tuple(resnet_units)}")
        self.grid = tuple(s // 16 for s in self.img_size)
        self.resnet = ResNetV2Hybrid(spatial_dims, in_channels, resnet_units, resnet_width, norm_groups)
        self.patch_embeddings = make_conv(spatial_dims, self.resnet.out_channels, hidden_size, 1)
        n_patches = 1
        for g in self.grid:
            n_patches *= g
        self.position_embeddings = nn.Parameter(torch.zeros(1, n_patches, hidden_size))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(ViTBlock(hidden_size, num_heads, mlp_dim, True, dropout, attention_dropout,
                                             proj_drop=attention_dropout) for _ in range(num_layers))
        self.encoder_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.conv_more = ConvNormAct(spatial_dims, hidden_size, head_channels, 3, bias=False, norm="batch", act=RELU)
        skips = [*self.resnet.skip_channels, 0][:4]
        skips = [c if i < n_skip else 0 for i, c in enumerate(skips)]
        cins = [head_channels, *decoder_channels[:-1]]
        self.decoder = nn.ModuleList(_DecoderBlock(spatial_dims, ci, co, sk)
                                     for ci, co, sk in zip(cins, decoder_channels, skips, strict=True))
        self.n_skip = n_skip
        self.segmentation_head = make_conv(spatial_dims, decoder_channels[-1], out_channels, 3)
        self.input_divisor = (16,) * spatial_dims
        if pretrained is not None:
            self.load_pretrained(pretrained)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``; returns full-resolution logits."""
        self.check_input(x)
        y, skips = self.resnet(x)
        y = self.patch_embeddings(y)
        grid = tuple(y.shape[2:])
        tokens = map_to_tokens(y) + resize_pos_embed(self.position_embeddings, self.grid, grid)
        tokens = self.dropout(tokens)
        for block in self.blocks:
            tokens = block(tokens)
        y = self.conv_more(tokens_to_map(self.encoder_norm(tokens), grid))
        for i, block in enumerate(self.decoder):
            y = block(y, skips[i] if i < self.n_skip else None)
        return self.segmentation_head(y)

    def load_pretrained(self, path: str) -> list[str]:
        """Load the official ``R50+ViT-B_16.npz`` (see the module docstring); returns our keys left untouched.

        Raises:
            ModelError: 3D model, missing file, or weights that do not fit.
        """
        if self.spatial_dims != 2:
            raise ModelError(f"{self.model_name}: the official checkpoint is 2D; pretrained weights need "
                             f"spatial_dims=2")
        state = map_official_transunet(read_weights(path), self)
        return load_into(self, state, f"{self.model_name} ({path})")


def _conv_kernel(w: torch.Tensor) -> torch.Tensor:
    """A Flax convolution kernel ``(H, W, I, O)`` to PyTorch's ``(O, I, H, W)``."""
    return w.permute(3, 2, 0, 1)


def map_official_transunet(weights: Mapping[str, torch.Tensor], model: TransUNet) -> dict[str, torch.Tensor]:
    """Translate the official ``R50+ViT-B_16.npz`` keys (as TransUNet's ``load_from`` reads them) to ours.

    Keys absent from the file are skipped (e.g. a ViT-only checkpoint leaves the ResNet alone); the classifier head
    and the pre-logits of the checkpoint are ignored.
    """
    out: dict[str, torch.Tensor] = {}
    w = {k.replace("\\", "/"): v for k, v in weights.items()}

    def put(ours: str, key: str, fn=lambda t: t) -> None:
        if key in w:
            out[ours] = fn(w[key].float())

    put("patch_embeddings.weight", "embedding/kernel", _conv_kernel)
    put("patch_embeddings.bias", "embedding/bias")
    put("encoder_norm.weight", "Transformer/encoder_norm/scale")
    put("encoder_norm.bias", "Transformer/encoder_norm/bias")
    pos_key = "Transformer/posembed_input/pos_embedding"
    if pos_key in w:
        pos = w[pos_key].float()
        n = pos.shape[1]
        side = round((n - 1) ** 0.5)
        if n - 1 == side * side and n != model.position_embeddings.shape[1]:
            pos = pos[:, 1:]  # drop the class token's entry
        old = round(pos.shape[1] ** 0.5)
        out["position_embeddings"] = resize_pos_embed(pos, (old, old), model.grid)
    dim = model.position_embeddings.shape[-1]
    for i in range(len(model.blocks)):
        root = f"Transformer/encoderblock_{i}"
        att = f"{root}/MultiHeadDotProductAttention_1"
        if f"{att}/query/kernel" in w:
            qkv = [w[f"{att}/{n}/kernel"].float().reshape(dim, dim).t() for n in ("query", "key", "value")]
            out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(qkv, 0)
            out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([w[f"{att}/{n}/bias"].float().reshape(-1)
                                                          for n in ("query", "key", "value")])
        put(f"blocks.{i}.attn.proj.weight", f"{att}/out/kernel", lambda t: t.reshape(dim, dim).t())
        put(f"blocks.{i}.attn.proj.bias", f"{att}/out/bias", lambda t: t.reshape(-1))
        for j, fc in ((0, "fc1"), (1, "fc2")):
            put(f"blocks.{i}.mlp.{fc}.weight", f"{root}/MlpBlock_3/Dense_{j}/kernel", lambda t: t.t())
            put(f"blocks.{i}.mlp.{fc}.bias", f"{root}/MlpBlock_3/Dense_{j}/bias")
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            put(f"blocks.{i}.{norm}.weight", f"{root}/{ln}/scale")
            put(f"blocks.{i}.{norm}.bias", f"{root}/{ln}/bias")

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1)

    in_ch = model.in_channels

    def root_kernel(t: torch.Tensor) -> torch.Tensor:
        k = _conv_kernel(t)
        if k.shape[1] != in_ch:  # grey or multi-channel input: the RGB filters summed, spread over the channels
            k = k.sum(1, keepdim=True).repeat(1, in_ch, 1, 1) / in_ch
        return k

    put("resnet.root_conv.conv.weight", "conv_root/kernel", root_kernel)
    put("resnet.root_gn.weight", "gn_root/scale", flat)
    put("resnet.root_gn.bias", "gn_root/bias", flat)
    for b, stage in enumerate(model.resnet.stages, start=1):
        for u in range(len(stage)):
            src, dst = f"block{b}/unit{u + 1}", f"resnet.stages.{b - 1}.{u}"
            for k in (1, 2, 3):
                put(f"{dst}.conv{k}.conv.weight", f"{src}/conv{k}/kernel", _conv_kernel)
                put(f"{dst}.gn{k}.weight", f"{src}/gn{k}/scale", flat)
                put(f"{dst}.gn{k}.bias", f"{src}/gn{k}/bias", flat)
            put(f"{dst}.downsample.conv.weight", f"{src}/conv_proj/kernel", _conv_kernel)
            put(f"{dst}.gn_proj.weight", f"{src}/gn_proj/scale", flat)
            put(f"{dst}.gn_proj.bias", f"{src}/gn_proj/bias", flat)
    return out
