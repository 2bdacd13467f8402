"""HRFormer + OCR: high-resolution transformer with local-window attention (Yuan et al., NeurIPS 2021), 2D and 3D.

Paper: Y. Yuan, R. Fu, L. Huang, W. Lin, C. Zhang, X. Chen, J. Wang, "HRFormer: High-Resolution Transformer for
Dense Prediction", NeurIPS 2021 (arXiv:2110.09408), Section 3 and Table 1. Official code: HRNet/HRFormer,
``seg/lib/models/backbones/hrt/hrt_backbone.py`` (``HighResolutionTransformer``), ``hrt_config.py`` (``hrt_small``,
``hrt_base``), ``modules/transformer_block.py``, ``modules/multihead_isa_pool_attention.py``,
``modules/ffn_block.py`` (``MlpDWBN``) and ``seg/lib/models/nets/hrt.py`` (``HRT_SMALL_OCR_V2`` /
``HRT_BASE_OCR_V2``, the segmentation networks of the paper's tables).

Backbone (HRNet's multi-resolution layout with transformer blocks):

* Stem: two 3x3 stride-2 convolutions (64 channels, BN, ReLU); stage 1: two bottleneck blocks (64 -> 256).
* Stages 2, 3, 4 with 2, 3, 4 parallel branches at strides 4, 8, 16, 32, made of 1, 4 and 2 modules; HRFormer-S
  has 32, 64, 128, 256 channels and 1, 2, 4, 8 heads, HRFormer-B 78, 156, 312, 624 channels and 2, 4, 8, 16 heads.
  A module runs two transformer blocks on each branch, then fuses the branches: from a lower resolution a 1x1 conv +
  BN and nearest up-sampling, from a higher one repeated {3x3 depthwise conv (stride 2) + BN, 1x1 conv + BN (+ ReLU
  between repeats)}; the sum goes through ReLU. Transitions as in HRNet (3x3 conv-BN-ReLU, strided for a new
  branch).
* Transformer block: ``x + drop_path(attention(LN(x)))``, then ``x + drop_path(FFN(LN(x)))``. The attention is
  **local-window multi-head self-attention**: the feature map is zero-padded (centred) to a multiple of the window
  (7x7) and split into non-overlapping windows; within each window, attention with separate q/k/v/out projections
  and a learned relative position bias (a table of ``(2w - 1)^2`` entries per head, as in Swin) -- here through
  ``scaled_dot_product_attention`` with the bias as additive mask, so memory grows with the window, not the image.
  The FFN is 1x1 conv-BN-GELU, 3x3 depthwise conv-BN-GELU, 1x1 conv-BN-GELU (MLP ratio 4). Stochastic depth rises
  linearly to 0.2 over the 14 transformer blocks.

OCR head (``HRT_*_OCR_V2``): the four branches, bilinearly up-sampled (``align_corners=True``) to stride 4 and
concatenated, feed an auxiliary head (3x3 conv + BN + ReLU to 512, 1x1 conv: soft object regions) and a 3x3 conv +
BN + ReLU to 512 pixel features; the object-contextual representation (Yuan et al., ECCV 2020) of these features
(keys 256, output 512, dropout 0.05) is classified by a 1x1 conv. Both outputs are up-sampled to the input size. The
OCR block is medseg's :class:`~medseg.models.natural.refine.ocrnet.ObjectContextualBlock`, whose 1x1 convolutions
carry no bias (as in the HRNet-OCR code); the openseg code used by HRFormer gives them biases (2,304 parameters).

Outputs: logits at the input size; with ``deep_supervision=True`` in training ``[main, soft_object_regions]`` with
loss weights (1, 0.4) (openseg's auxiliary loss weight).

Pretrained weights: ``pretrained`` is a local path to the official ImageNet checkpoint (``hrt_small.pth`` /
``hrt_base.pth``, ``{"model": state_dict}``); our backbone keeps the official key names (stage-1 bottlenecks mapped
to medseg's residual blocks), the classification head and the ``relative_position_index`` buffers are skipped, and
relative position tables of another window size are resampled bilinearly (the code's ``hrt_window`` loader). 2D
only. Nothing is downloaded.

Paper configuration: HRFormer-S + OCR on Cityscapes, 2D, 3 input channels, 19 classes. Parameter figure:
13,523,856, counted with the official ``HRT_SMALL_OCR_V2`` at that configuration; ours is 13,521,552 (without the
2,304 OCR biases; the backbone, 7,891,050, is identical). HRFormer-B + OCR: official 56,032,512, ours 56,030,208.
3D: the windows become cubes (``w^3`` tokens, a ``(2w - 1)^3`` bias table) and every convolution 3D, the same code
path; the paper is 2D. Each spatial size must be a multiple of 32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.resnet import Bottleneck, map_resnet_block_key
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, make_act, make_conv, make_norm
from medseg.models.natural.refine.ocrnet import ObjectContextualBlock, gather_object_regions
from medseg.models.registry import PaperConfig, register_model
from medseg.models.transformer._modules import DropPath, load_into, map_to_tokens, read_weights, tokens_to_map

__all__ = ["HRFormer", "HRFormerBackbone", "HRFormerBlock", "LocalWindowAttention", "relative_position_index"]

RELU = ("relu", {"inplace": True})
VARIANTS: dict[str, dict[str, tuple[int, ...]]] = {
    "s": {"channels": (32, 64, 128, 256), "heads": (1, 2, 4, 8)},
    "b": {"channels": (78, 156, 312, 624), "heads": (2, 4, 8, 16)},
}


def _interp(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    mode = "trilinear" if x.dim() == 5 else "bilinear"
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=True)


def relative_position_index(window: int, spatial_dims: int) -> torch.Tensor:
    """Index ``(w^d, w^d)`` into the ``(2w - 1)^d`` relative-position table for every pair of window positions."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(window)] * spatial_dims, indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    index = torch.zeros(rel.shape[:2], dtype=torch.long)
    for axis in range(spatial_dims):
        index = index * (2 * window - 1) + rel[..., axis]
    return index


class _ProjectedAttention(nn.Module):
    """Parameters of the windowed attention, named as the official ``MHA_``: q/k/v/out projections, bias table."""

    def __init__(self, dim: int, num_heads: int, table_size: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_size, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)


class LocalWindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows with a relative position bias (HRFormer, Swin).

    The token map is zero-padded (centred) to a multiple of ``window`` per axis, split into windows of ``window^d``
    tokens, attended window by window (``scaled_dot_product_attention``, bias as additive mask) and un-padded.

    Shapes: tokens ``(B, N, dim)`` on a grid ``spatial`` (``N = prod(spatial)``) to the same.

    Args:
        spatial_dims: 2 or 3.
        dim: Token width.
        num_heads: Heads.
        window: Window side (7).
        attn_drop: Dropout on the attention weights.
    """

    def __init__(self, spatial_dims: int, dim: int, num_heads: int, window: int = 7, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ModelError(f"window attention: width {dim} is not divisible by {num_heads} heads")
        self.spatial_dims, self.num_heads, self.window, self.attn_drop = spatial_dims, num_heads, window, attn_drop
        self.attn = _ProjectedAttention(dim, num_heads, (2 * window - 1) ** spatial_dims)
        self.register_buffer("rel_index", relative_position_index(window, spatial_dims), persistent=False)

    def forward(self, x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
        """Attend within windows; ``x`` is ``(B, N, dim)`` laid out row-major on ``spatial``."""
        b, n, c = x.shape
        w, d = self.window, self.spatial_dims
        x = x.view(b, *spatial, c)
        pads = [(-s) % w for s in spatial]
        if any(pads):
            flat = [p for pad in reversed(pads) for p in (pad // 2, pad - pad // 2)]
            x = F.pad(x, [0, 0, *flat])
        padded = x.shape[1:-1]
        counts = [s // w for s in padded]
        # (B, n1, w, n2, w[, n3, w], C) -> (B * windows, w^d, C)
        shape = [b] + [v for cnt in counts for v in (cnt, w)] + [c]
        order = [0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1]
        windows = x.reshape(shape).permute(order).reshape(-1, w**d, c)
        heads, hd = self.num_heads, c // self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(t.shape[0], w**d, heads, hd).transpose(1, 2)

        q, k, v = split(self.attn.q_proj(windows)), split(self.attn.k_proj(windows)), split(self.attn.v_proj(windows))
        bias = self.attn.relative_position_bias_table[self.rel_index.view(-1)].view(w**d, w**d, heads)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.permute(2, 0, 1).unsqueeze(0).to(q.dtype),
                                           dropout_p=self.attn_drop if self.training else 0.0)
        y = self.attn.out_proj(y.transpose(1, 2).reshape(-1, w**d, c))
        # back to (B, *padded, C)
        y = y.view(b, *counts, *([w] * d), c)
        inverse = [0] + [v for i in range(d) for v in (1 + i, 1 + d + i)] + [2 * d + 1]
        y = y.permute(inverse).reshape(b, *padded, c)
        if any(pads):
            y = y[(slice(None), *(slice(p // 2, p // 2 + s) for p, s in zip(pads, spatial, strict=True)))]
        return y.reshape(b, n, c)


class _MlpDWBN(nn.Module):
    """HRFormer's FFN: 1x1 conv-BN-GELU, 3x3 depthwise conv-BN-GELU, 1x1 conv-BN-GELU (official ``MlpDWBN``)."""

    def __init__(self, spatial_dims: int, dim: int, hidden: int) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.fc1, self.norm1 = conv(dim, hidden, 1), make_norm("batch", spatial_dims, hidden)
        self.dw3x3 = conv(hidden, hidden, 3, padding=1, groups=hidden)
        self.norm2 = make_norm("batch", spatial_dims, hidden)
        self.fc2, self.norm3 = conv(hidden, dim, 1), make_norm("batch", spatial_dims, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.fc1(x)))
        x = self.act(self.norm2(self.dw3x3(x)))
        return self.act(self.norm3(self.fc2(x)))


class HRFormerBlock(nn.Module):
    """HRFormer transformer block on a feature map: local-window attention and the depthwise-conv FFN.

    Shapes: ``(B, C, *spatial)`` to the same.

    Args:
        spatial_dims: 2 or 3.
        dim: C.
        num_heads: Heads.
        window: Window side.
        mlp_ratio: FFN width over C (4).
        drop_path: Stochastic depth of both branches.
    """

    def __init__(self, spatial_dims: int, dim: int, num_heads: int, window: int = 7, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = LocalWindowAttention(spatial_dims, dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _MlpDWBN(spatial_dims, dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block on ``(B, C, *spatial)``."""
        spatial = tuple(x.shape[2:])
        t = map_to_tokens(x)
        t = t + self.drop_path(self.attn(self.norm1(t), spatial))
        t = t + self.drop_path(map_to_tokens(self.mlp(tokens_to_map(self.norm2(t), spatial))))
        return tokens_to_map(t, spatial)


def _cbr(spatial_dims: int, cin: int, cout: int, stride: int, relu: bool = True) -> nn.Sequential:
    """3x3 conv (no bias), BN, optional ReLU, as an ``nn.Sequential`` with the official key layout (0, 1, 2)."""
    layers = [make_conv(spatial_dims, cin, cout, 3, stride=stride, padding=1, bias=False),
              make_norm("batch", spatial_dims, cout)]
    if relu:
        layers.append(make_act(RELU))
    return nn.Sequential(*layers)


class _HRModule(nn.Module):
    """Branches of transformer blocks and the multi-resolution fusion (``HighResolutionTransformerModule``)."""

    def __init__(self, spatial_dims: int, channels: Sequence[int], heads: Sequence[int], num_blocks: int,
                 window: int, mlp_ratio: float, drop_paths: Sequence[float]) -> None:
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(
            nn.Sequential(*[HRFormerBlock(spatial_dims, c, h, window, mlp_ratio, drop_paths[k])
                            for k in range(num_blocks)]) for c, h in zip(channels, heads, strict=True))
        conv = Conv[Conv.CONV, spatial_dims]
        self.fuse_layers = nn.ModuleList()
        for i in range(n if n > 1 else 0):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(conv(channels[j], channels[i], 1, bias=False),
                                             make_norm("batch", spatial_dims, channels[i]),
                                             nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        cout = channels[i] if last else channels[j]
                        step = [conv(channels[j], channels[j], 3, stride=2, padding=1, groups=channels[j],
                                     bias=False),
                                make_norm("batch", spatial_dims, channels[j]),
                                conv(channels[j], cout, 1, bias=False),
                                make_norm("batch", spatial_dims, cout)]
                        if not last:
                            step.append(nn.ReLU(False))
                        steps.append(nn.Sequential(*step))
                    row.append(nn.Sequential(*steps))
            self.fuse_layers.append(row)
        self.relu = make_act(RELU)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        if len(xs) == 1:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = xs[i]
            for j, layer in enumerate(row):
                if j == i:
                    continue
                z = layer(xs[j])
                if z.shape[2:] != xs[i].shape[2:]:
                    z = _interp(z, xs[i].shape[2:])
                y = y + z
            out.append(self.relu(y))
        return out


class HRFormerBackbone(nn.Module):
    """The HRFormer backbone (official ``HighResolutionTransformer`` without the ImageNet head).

    Shapes: ``(B, C_in, *spatial)`` to four maps ``(B, channels[i], *spatial / 2**(i + 2))``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        channels: Branch widths (S: 32, 64, 128, 256; B: 78, 156, 312, 624).
        heads: Heads per branch (S: 1, 2, 4, 8; B: 2, 4, 8, 16).
        modules: Modules of stages 2, 3, 4 (1, 4, 2).
        num_blocks: Transformer blocks per branch and module (2).
        window: Attention window side (7).
        mlp_ratio: FFN ratio (4).
        drop_path_rate: Final stochastic-depth rate (0.2).
        stem_channels: Stem width (64); stage 1 has two bottlenecks of this width (output 4x).
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int], heads: Sequence[int],
                 modules: Sequence[int] = (1, 4, 2), num_blocks: int = 2, window: int = 7, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.2, stem_channels: int = 64) -> None:
        super().__init__()
        self.conv1 = make_conv(spatial_dims, in_channels, stem_channels, 3, stride=2, padding=1, bias=False)
        self.bn1 = make_norm("batch", spatial_dims, stem_channels)
        self.conv2 = make_conv(spatial_dims, stem_channels, stem_channels, 3, stride=2, padding=1, bias=False)
        self.bn2 = make_norm("batch", spatial_dims, stem_channels)
        self.relu = make_act(RELU)
        self.layer1 = nn.Sequential(Bottleneck(spatial_dims, stem_channels, stem_channels),
                                    Bottleneck(spatial_dims, 4 * stem_channels, stem_channels))
        depths = [num_blocks * m for m in modules]
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        pre = [4 * stem_channels]
        start = 0
        for s, n_modules in enumerate(modules, start=2):
            cur = list(channels[:s])
            transition = nn.ModuleList()
            for i, c in enumerate(cur):
                if i < len(pre):
                    transition.append(nn.Identity() if c == pre[i] else _cbr(spatial_dims, pre[i], c, 1))
                else:
                    transition.append(nn.Sequential(_cbr(spatial_dims, pre[-1], c, 2)))
            self.add_module(f"transition{s - 1}", transition)
            stage = []
            for m in range(n_modules):
                drops = rates[start + num_blocks * m: start + num_blocks * (m + 1)]
                stage.append(_HRModule(spatial_dims, cur, heads[:s], num_blocks, window, mlp_ratio, drops))
            start += depths[s - 2]
            self.add_module(f"stage{s}", nn.Sequential(*stage))
            pre = cur
        self.out_channels = list(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four branches of ``x`` (highest resolution first)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(self.relu(self.bn2(self.conv2(x))))
        ys = [x]
        for s in (2, 3, 4):
            transition = getattr(self, f"transition{s - 1}")
            xs = [t(ys[i]) if i < len(ys) else t(ys[-1]) for i, t in enumerate(transition)]
            ys = getattr(self, f"stage{s}")(xs)
        return ys


@register_model(
    "hrformer",
    family="transformer",
    spatial_dims=(2, 3),
    paper_title="HRFormer: High-Resolution Transformer for Dense Prediction",
    paper_year=2021,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=3,
        out_channels=19,
        kwargs={"variant": "s", "deep_supervision": True},
        params=13_523_856,
        source="official code HRNet/HRFormer, seg/lib/models/nets/hrt.py HRT_SMALL_OCR_V2 with the hrt_small "
               "backbone (hrt_config.py), 19 Cityscapes classes, counted with that code",
    ),
    divisor=32,
    deep_supervision=True,
    test_kwargs={
        2: {"channels": (8, 16, 16, 16), "heads": (2, 2, 2, 2), "modules": (1, 1, 1), "num_blocks": 1, "window": 4,
            "mlp_ratio": 2.0, "drop_path_rate": 0.0, "stem_channels": 16, "ocr_channels": 16, "key_channels": 8},
        3: {"channels": (4, 4, 4, 4), "heads": (1, 1, 1, 1), "modules": (1, 1, 1), "num_blocks": 1, "window": 2,
            "mlp_ratio": 2.0, "drop_path_rate": 0.0, "stem_channels": 4, "ocr_channels": 4, "key_channels": 4},
    },
)
class HRFormer(SegmentationModel):
    """HRFormer + OCR (Yuan et al., NeurIPS 2021): high-resolution transformer backbone with the OCR head.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of 32.
    With ``deep_supervision=True`` in training: ``[main, soft_object_regions]``, both full size.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels (3).
        out_channels: Classes (Cityscapes: 19).
        variant: ``"s"`` (HRFormer-S) or ``"b"`` (HRFormer-B); sets ``channels`` and ``heads``.
        channels: Branch widths, overriding the variant's.
        heads: Heads per branch, overriding the variant's.
        modules: Modules of stages 2, 3, 4 (1, 4, 2).
        num_blocks: Transformer blocks per branch and module (2).
        window: Attention window side (7).
        mlp_ratio: FFN ratio (4).
        drop_path_rate: Final stochastic-depth rate (0.2).
        stem_channels: Stem width (64).
        ocr_channels: Width of the OCR pixel features and of the auxiliary head (512).
        key_channels: Width of the OCR keys/queries (256).
        deep_supervision: Return the soft object regions too in training (loss weight 0.4).
        pretrained: Local path of the official ImageNet checkpoint (2D only).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        variant: str = "s",
        channels: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        modules: Sequence[int] = (1, 4, 2),
        num_blocks: int = 2,
        window: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        stem_channels: int = 64,
        ocr_channels: int = 512,
        key_channels: int = 256,
        deep_supervision: bool = False,
        pretrained: str | None = None,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if variant not in VARIANTS:
            raise ModelError(f"{self.model_name}: variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        ch = tuple(channels) if channels is not None else VARIANTS[variant]["channels"]
        hd = tuple(heads) if heads is not None else VARIANTS[variant]["heads"]
        if len(ch) != 4 or len(hd) != 4 or len(tuple(modules)) != 3 or window < 1:
            raise ModelError(f"{self.model_name}: needs four branch widths, four head counts, three module counts "
                             f"and window >= 1, got {ch}, {hd}, {tuple(modules)}, {window}")
        if any(c % h for c, h in zip(ch, hd, strict=True)):
            raise ModelError(f"{self.model_name}: every branch width must be divisible by its heads, got {ch}, {hd}")
        self.backbone = HRFormerBackbone(spatial_dims, in_channels, ch, hd, modules, num_blocks, window, mlp_ratio,
                                         drop_path_rate, stem_channels)
        feat = sum(ch)
        self.aux_head = nn.Sequential(ConvNormAct(spatial_dims, feat, ocr_channels, 3, norm="batch", act=RELU),
                                      make_conv(spatial_dims, ocr_channels, out_channels, 1))
        self.conv3x3 = ConvNormAct(spatial_dims, feat, ocr_channels, 3, norm="batch", act=RELU)
        self.ocr = ObjectContextualBlock(spatial_dims, ocr_channels, key_channels, ocr_channels, dropout=0.05)
        self.cls_head = make_conv(spatial_dims, ocr_channels, out_channels, 1)
        self.deep_supervision = deep_supervision
        self.input_divisor = (32,) * spatial_dims
        if deep_supervision:
            self.deep_supervision_scales = [(1,) * spatial_dims] * 2
            self.loss_weights = (1.0, 0.4)
        if pretrained is not None:
            self.load_pretrained(pretrained)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits ``(B, out_channels, *spatial)``; ``[main, soft_object_regions]`` in training with supervision."""
        self.check_input(x)
        branches = self.backbone(x)
        size = branches[0].shape[2:]
        feats = torch.cat([branches[0], *(_interp(b, size) for b in branches[1:])], dim=1)
        regions = self.aux_head(feats)
        pixels = self.conv3x3(feats)
        out = _interp(self.cls_head(self.ocr(pixels, gather_object_regions(pixels, regions))), x.shape[2:])
        if self.deep_supervision and self.training:
            return [out, _interp(regions, x.shape[2:])]
        return out

    def load_pretrained(self, path: str) -> list[str]:
        """Load the official ImageNet checkpoint into the backbone (see the module docstring).

        Returns the backbone keys left untouched.

        Raises:
            ModelError: 3D model, missing file, no matching key, or weights that do not fit.
        """
        if self.spatial_dims != 2:
            raise ModelError(f"{self.model_name}: the official checkpoints are 2D; pretrained weights need "
                             f"spatial_dims=2")
        state = map_official_hrformer(read_weights(path), self.backbone)
        if not state:
            raise ModelError(f"{self.model_name}: no key of {path} matches the HRFormer backbone")
        return load_into(self.backbone, state, f"{self.model_name} ({path})")


_HEAD_KEYS = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.", "head.")


def map_official_hrformer(weights: Mapping[str, torch.Tensor], backbone: HRFormerBackbone) -> dict[str, torch.Tensor]:
    """Translate official HRFormer checkpoint keys to our backbone's (keys we do not have are dropped)."""
    own = backbone.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if key.startswith(_HEAD_KEYS) or key.endswith("relative_position_index"):
            continue
        ours = (map_resnet_block_key(key) or key) if key.startswith("layer1.") else key
        if ours not in own:
            continue
        if ours.endswith("relative_position_bias_table") and value.shape != own[ours].shape:
            side, heads = round(value.shape[0] ** 0.5), value.shape[1]
            target = round(own[ours].shape[0] ** 0.5)
            grid = value.float().permute(1, 0).reshape(1, heads, side, side)
            value = F.interpolate(grid, size=(target, target), mode="bilinear").reshape(heads, -1).permute(1, 0)
        out[ours] = value
    return out
