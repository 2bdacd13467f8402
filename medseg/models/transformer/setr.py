"""SETR: segmentation as sequence-to-sequence prediction with a ViT-L/16 encoder (Zheng et al., CVPR 2021), 2D/3D.

Paper: S. Zheng, J. Lu, H. Zhao, X. Zhu, Z. Luo, Y. Wang, Y. Fu, J. Feng, T. Xiang, P. H. S. Torr, L. Zhang,
"Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with Transformers", CVPR 2021
(arXiv:2012.15840), Section 3 and Figure 1. Official code: fudan-zvg/SETR (mmsegmentation):
``mmseg/models/backbones/vit.py`` and ``vit_mla.py``, ``mmseg/models/decode_heads/vit_up_head.py``,
``vit_mla_head.py``, ``vit_mla_auxi_head.py``; configurations ``configs/SETR/SETR_{Naive,PUP,MLA}_512x512_160k_
ade20k_bs_16.py``.

Encoder: the image is cut into 16x16 patches, linearly projected (a 16x16 stride-16 convolution) to 1024 channels,
a learned position embedding is added, and 24 pre-norm ViT-L blocks (16 heads, MLP 4096, LayerNorm eps 1e-6, qkv
bias) process the ``H/16 x W/16`` tokens; attention runs through ``scaled_dot_product_attention``. As in the code,
the Naive and PUP models prepend a class token (dropped before decoding) and the MLA model does not.

Decoders (``decoder`` option; batch norm is the code's SyncBN):

* ``"naive"``: LayerNorm on the last layer's tokens, 1x1 conv to 256 + BN + ReLU, 1x1 conv to the classes, bilinear
  up-sampling to the input size.
* ``"pup"`` (progressive up-sampling): LayerNorm, then four times {3x3 conv to 256 + BN + ReLU, 2x bilinear
  up-sampling} with the class 1x1 conv before the last up-sampling (x16 in total).
* ``"mla"`` (multi-level feature aggregation): the tokens of layers 6, 12, 18 and 24 each get a LayerNorm and a 1x1
  conv to 256 + BN + ReLU; top-down sums (24, 24+18, 24+18+12, ...), a 3x3 conv + BN + ReLU per stream; per stream a
  head of two 3x3 convs to 128 + BN + ReLU and 4x bilinear up-sampling (``align_corners=True``); the four streams
  are concatenated (512) and a 3x3 conv gives the classes, up-sampled bilinearly to the input size.

Auxiliary heads (``deep_supervision=True``; loss weight 0.4 each, as in the configurations): Naive and PUP put a
head on the tokens of layers 10, 15, 20 and 24 (Naive: the naive head; PUP: LayerNorm, 3x3 conv to 256 + BN + ReLU,
4x up-sampling, 1x1 conv to the classes, up-sampling to the input size); MLA puts a bias-free 1x1 conv on each of its
four streams. In training forward then returns ``[main, aux1, aux2, aux3, aux4]``, all at the input size.

Pretrained weights: ``pretrained`` is a local ViT-L/16 state dict in the timm layout the code loads
(``jx_vit_large_p16_384``: ``patch_embed.proj.*``, ``cls_token``, ``pos_embed``, ``blocks.{i}.norm1/attn.qkv/
attn.proj/norm2/mlp.fc1/mlp.fc2``; the final ``norm`` and ``head`` are ignored); the position embeddings are
resampled to the model's grid (the code's ``pos_embed_interp``). 2D only. Nothing is downloaded.

Paper configuration: SETR-PUP on ADE20K, 2D, 512x512, 3 input channels, 150 classes, auxiliary heads included.
Parameter figure: 318,307,292, counted with the official code at that configuration (ViT-L backbone 304,147,456,
PUP head 4,249,388, four auxiliary heads 9,910,448). The code's heads also each build a 1x1 ``conv_seg`` from 512
channels that their forward never uses (five times 76,950 parameters); we leave these out, so our count is
317,922,542 (-0.12%). SETR-MLA at the same configuration: official 310,568,836; ours 310,182,038 (unused
``conv_seg`` and the MLA's unused class token left out). 3D: 16x16x16 patches and trilinear up-sampling, the same
code path. Each spatial size must be a multiple of 16; inputs of another size than ``img_size`` get (bi/tri)linearly
resampled position embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, as_tuple, make_conv, resample_linear
from medseg.models.registry import PaperConfig, register_model
from medseg.models.transformer._modules import (
    ViTBlock,
    load_into,
    map_to_tokens,
    read_weights,
    resize_pos_embed,
    tokens_to_map,
)

__all__ = ["SETR"]

RELU = ("relu", {"inplace": True})
DECODERS = ("naive", "pup", "mla")
PATCH = 16


def _up(x: torch.Tensor, factor: int, align_corners: bool = False) -> torch.Tensor:
    mode = "trilinear" if x.dim() == 5 else "bilinear"
    return F.interpolate(x, size=[s * factor for s in x.shape[2:]], mode=mode, align_corners=align_corners)


class _NaiveHead(nn.Module):
    """LayerNorm, 1x1 conv + BN + ReLU, 1x1 conv to the classes (up-sampled by the caller)."""

    def __init__(self, spatial_dims: int, dim: int, channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.conv = ConvNormAct(spatial_dims, dim, channels, 1, norm="batch", act=RELU)
        self.cls = make_conv(spatial_dims, channels, out_channels, 1)

    def forward(self, tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        return self.cls(self.conv(tokens_to_map(self.norm(tokens), grid)))


class _PUPHead(nn.Module):
    """Progressive up-sampling head (PUP) and its auxiliary form.

    Main head (``n_conv=4``): four {3x3 conv + BN + ReLU, 2x up-sampling}, the class conv before the last
    up-sampling. Auxiliary head (``n_conv=1``): one 3x3 conv + BN + ReLU, 4x up-sampling, the class conv.
    """

    def __init__(self, spatial_dims: int, dim: int, channels: int, out_channels: int, n_conv: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.convs = nn.ModuleList(ConvNormAct(spatial_dims, dim if i == 0 else channels, channels, 3, norm="batch",
                                               act=RELU) for i in range(n_conv))
        self.cls = make_conv(spatial_dims, channels, out_channels, 1)
        self.n_conv = n_conv

    def forward(self, tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        x = tokens_to_map(self.norm(tokens), grid)
        if self.n_conv == 1:  # the auxiliary PUP head
            return self.cls(_up(self.convs[0](x), 4))
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < self.n_conv - 1:
                x = _up(x, 2)
        return _up(self.cls(x), 2)


class _MLANeck(nn.Module):
    """MLA: per level LayerNorm + 1x1 conv-BN-ReLU, top-down sums, 3x3 conv-BN-ReLU per stream."""

    def __init__(self, spatial_dims: int, dim: int, channels: int) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-6) for _ in range(4))
        self.lateral = nn.ModuleList(ConvNormAct(spatial_dims, dim, channels, 1, bias=False, norm="batch", act=RELU)
                                     for _ in range(4))
        self.smooth = nn.ModuleList(ConvNormAct(spatial_dims, channels, channels, 3, bias=False, norm="batch",
                                                act=RELU) for _ in range(4))

    def forward(self, levels: Sequence[torch.Tensor], grid: Sequence[int]) -> list[torch.Tensor]:
        lat = [conv(tokens_to_map(norm(t), grid)) for norm, conv, t in zip(self.norms, self.lateral, levels,
                                                                          strict=True)]
        summed = [lat[3]]
        for i in (2, 1, 0):  # deepest first: p5, p4 + p5, p3 + (p4 + p5), ...
            summed.append(summed[-1] + lat[i])
        summed = summed[::-1]  # shallowest first, like the levels
        return [smooth(s) for smooth, s in zip(self.smooth, summed, strict=True)]


class _MLAHead(nn.Module):
    """Two 3x3 conv-BN-ReLU per stream, 4x up-sampling, concatenation, 3x3 class conv."""

    def __init__(self, spatial_dims: int, channels: int, head_channels: int, out_channels: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(
            ConvNormAct(spatial_dims, channels, head_channels, 3, bias=False, norm="batch", act=RELU),
            ConvNormAct(spatial_dims, head_channels, head_channels, 3, bias=False, norm="batch", act=RELU),
        ) for _ in range(4))
        self.cls = make_conv(spatial_dims, 4 * head_channels, out_channels, 3)

    def forward(self, streams: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.cls(torch.cat([_up(h(s), 4, align_corners=True) for h, s in zip(self.heads, streams,
                                                                                     strict=True)], dim=1))


@register_model(
    "setr",
    family="transformer",
    spatial_dims=(2, 3),
    paper_title="Rethinking Semantic Segmentation from a Sequence-to-Sequence Perspective with Transformers",
    paper_year=2021,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=3,
        out_channels=150,
        kwargs={"img_size": 512, "decoder": "pup", "deep_supervision": True},
        params=318_307_292,
        source="official code fudan-zvg/SETR, configs/SETR/SETR_PUP_512x512_160k_ade20k_bs_16.py (ViT-L/16 "
               "VisionTransformer + VisionTransformerUpHead with 4 auxiliary heads), counted with that code",
    ),
    divisor=16,
    deep_supervision=True,
    test_kwargs={
        2: {"img_size": 64, "embed_dim": 64, "depth": 4, "num_heads": 2, "mlp_ratio": 2.0, "mla_indices": (0, 1, 2, 3),
            "aux_indices": (0, 1, 2, 3), "decoder_channels": 16, "mla_channels": 8, "mla_head_channels": 4},
        3: {"img_size": 32, "embed_dim": 32, "depth": 4, "num_heads": 2, "mlp_ratio": 2.0, "mla_indices": (0, 1, 2, 3),
            "aux_indices": (0, 1, 2, 3), "decoder_channels": 8, "mla_channels": 8, "mla_head_channels": 4},
    },
)
class SETR(SegmentationModel):
    """SETR (Zheng et al., CVPR 2021): a pure ViT-L/16 encoder with the Naive, PUP or MLA decoder.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of 16.
    With ``deep_supervision=True`` in training: ``[main, aux1, aux2, aux3, aux4]``, all full size.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels (3).
        out_channels: Classes (ADE20K: 150).
        decoder: ``"pup"`` (default), ``"mla"`` or ``"naive"``.
        img_size: Input size the position embeddings are laid out for (ADE20K: 512; Cityscapes: 768).
        embed_dim: ViT width (ViT-L: 1024).
        depth: Transformer layers (24).
        num_heads: Attention heads (16).
        mlp_ratio: MLP width over ``embed_dim`` (4).
        qkv_bias: Bias of the qkv projection (True).
        dropout: Dropout in the transformer (the configurations: 0).
        drop_path: Stochastic depth (0).
        decoder_channels: Channels of the Naive / PUP heads (256).
        mla_channels: Channels of the MLA streams (256).
        mla_head_channels: Channels of each MLA stream head (128).
        mla_indices: Layers (0-based) feeding MLA (5, 11, 17, 23).
        aux_indices: Layers (0-based) of the Naive / PUP auxiliary heads (9, 14, 19, 23).
        deep_supervision: Build and return the four auxiliary heads in training (loss weight 0.4 each).
        pretrained: Local path of a timm-layout ViT state dict (2D only).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        decoder: str = "pup",
        img_size: int | Sequence[int] = 512,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        decoder_channels: int = 256,
        mla_channels: int = 256,
        mla_head_channels: int = 128,
        mla_indices: Sequence[int] = (5, 11, 17, 23),
        aux_indices: Sequence[int] = (9, 14, 19, 23),
        deep_supervision: bool = False,
        pretrained: str | None = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if decoder not in DECODERS:
            raise ModelError(f"{self.model_name}: decoder must be one of {DECODERS}, got {decoder!r}")
        self.img_size = as_tuple(img_size, spatial_dims)
        self.mla_indices, self.aux_indices = tuple(mla_indices), tuple(aux_indices)
        if any(s % PATCH for s in self.img_size) or embed_dim % num_heads:
            raise ModelError(f"{self.model_name}: img_size must be a multiple of {PATCH} and embed_dim divisible by "
                             f"num_heads, got {self.img_size}, {embed_dim}, {num_heads}")
        used = self.mla_indices if decoder == "mla" else (self.aux_indices if deep_supervision else (0, 0, 0, 0))
        if len(used) != 4 or any(not 0 <= i < depth for i in used):
            which = "mla_indices" if decoder == "mla" else "aux_indices"
            raise ModelError(f"{self.model_name}: {which} needs four layers in 0..{depth - 1}, got {used}")
        self.decoder_name = decoder
        self.grid = tuple(s // PATCH for s in self.img_size)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = make_conv(spatial_dims, in_channels, embed_dim, PATCH, stride=PATCH, padding=0)
        n_patches = 1
        for g in self.grid:
            n_patches *= g
        self.use_cls_token = decoder != "mla"
        if self.use_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + int(self.use_cls_token), embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(dropout)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(ViTBlock(embed_dim, num_heads, int(embed_dim * mlp_ratio), qkv_bias, dropout,
                                             0.0, rates[i]) for i in range(depth))
        self.deep_supervision = deep_supervision
        self.aux_heads = nn.ModuleList()
        if decoder == "mla":
            self.mla = _MLANeck(spatial_dims, embed_dim, mla_channels)
            self.decode_head = _MLAHead(spatial_dims, mla_channels, mla_head_channels, out_channels)
            if deep_supervision:
                self.aux_heads.extend(make_conv(spatial_dims, mla_channels, out_channels, 1, bias=False)
                                      for _ in range(4))
        elif decoder == "pup":
            self.decode_head = _PUPHead(spatial_dims, embed_dim, decoder_channels, out_channels, 4)
            if deep_supervision:
                self.aux_heads.extend(_PUPHead(spatial_dims, embed_dim, decoder_channels, out_channels, 1)
                                      for _ in range(4))
        else:
            self.decode_head = _NaiveHead(spatial_dims, embed_dim, decoder_channels, out_channels)
            if deep_supervision:
                self.aux_heads.extend(_NaiveHead(spatial_dims, embed_dim, decoder_channels, out_channels)
                                      for _ in range(4))
        self.input_divisor = (PATCH,) * spatial_dims
        if deep_supervision:
            self.deep_supervision_scales = [(1,) * spatial_dims] * 5
            self.loss_weights = (1.0, 0.4, 0.4, 0.4, 0.4)
        if pretrained is not None:
            self.load_pretrained(pretrained)

    def _tokens(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, ...]]:
        """Patch-embed ``x`` and run the transformer; returns every layer's patch tokens and the token grid."""
        y = self.patch_embed.proj(x)
        grid = tuple(y.shape[2:])
        tokens = map_to_tokens(y)
        if self.use_cls_token:
            pos = torch.cat([self.pos_embed[:, :1], resize_pos_embed(self.pos_embed[:, 1:], self.grid, grid)], 1)
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + pos
        else:
            tokens = tokens + resize_pos_embed(self.pos_embed, self.grid, grid)
        tokens = self.pos_drop(tokens)
        layers = []
        for block in self.blocks:
            tokens = block(tokens)
            layers.append(tokens[:, 1:] if self.use_cls_token else tokens)
        return layers, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, out_channels, *spatial)``; with deep supervision in training, main and four auxiliary."""
        self.check_input(x)
        layers, grid = self._tokens(x)
        size = x.shape[2:]
        aux_wanted = self.deep_supervision and self.training
        aux: list[torch.Tensor] = []
        if self.decoder_name == "mla":
            streams = self.mla([layers[i] for i in self.mla_indices], grid)
            out = self.decode_head(streams)
            if aux_wanted:
                aux = [head(s) for head, s in zip(self.aux_heads, streams, strict=True)]
        else:
            out = self.decode_head(layers[-1], grid)
            if aux_wanted:
                aux = [head(layers[i], grid) for head, i in zip(self.aux_heads, self.aux_indices, strict=True)]
        out = resample_linear(out, size)
        if aux_wanted:
            return [out, *(resample_linear(a, size) for a in aux)]
        return out

    def load_pretrained(self, path: str) -> list[str]:
        """Load a timm-layout ViT state dict into the encoder (see the module docstring); returns untouched keys.

        Raises:
            ModelError: 3D model, missing file, or weights that do not fit.
        """
        if self.spatial_dims != 2:
            raise ModelError(f"{self.model_name}: ViT checkpoints are 2D; pretrained weights need spatial_dims=2")
        weights = read_weights(path)
        state: dict[str, torch.Tensor] = {}
        for k, v in weights.items():
            if k.startswith(("blocks.", "patch_embed.proj.")) or (k == "cls_token" and self.use_cls_token):
                state[k] = v
        if "patch_embed.proj.weight" in state and state["patch_embed.proj.weight"].shape[1] != self.in_channels:
            w = state["patch_embed.proj.weight"]
            state["patch_embed.proj.weight"] = w.sum(1, keepdim=True).repeat(1, self.in_channels, 1, 1) / \
                self.in_channels
        if "pos_embed" in weights:
            pos = weights["pos_embed"].float()
            cls, grid_tokens = pos[:, :1], pos[:, 1:]
            side = round(grid_tokens.shape[1] ** 0.5)
            grid_tokens = resize_pos_embed(grid_tokens, (side, side), self.grid)
            state["pos_embed"] = torch.cat([cls, grid_tokens], 1) if self.use_cls_token else grid_tokens
        return load_into(self, state, f"{self.model_name} ({path})")
