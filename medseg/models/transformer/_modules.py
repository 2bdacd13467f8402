"""Layers shared by the transformer segmenters: ViT blocks, token/grid helpers, pretrained-weight loading.

Pretrained weights come only from a local file. Attention always goes through
:func:`torch.nn.functional.scaled_dot_product_attention`, so that PyTorch can pick a fused kernel (flash /
memory-efficient attention) whose memory grows with the number of tokens rather than with its square; an additive
bias (relative positions) is passed as ``attn_mask``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ModelError
from medseg.models.backbones.pretrained import read_state_dict

__all__ = [
    "DropPath",
    "Mlp",
    "MultiHeadSelfAttention",
    "ViTBlock",
    "load_into",
    "map_to_tokens",
    "read_weights",
    "resize_pos_embed",
    "tokens_to_map",
]


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability ``p`` in training (scaled by 1/(1-p)).

    Shapes: any ``(B, ...)`` to the same.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drop whole samples of ``x`` at random (training only)."""
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (the ViT / timm layout), via SDPA.

    Shapes: ``(B, N, dim)`` to ``(B, N, dim)``; an optional additive ``bias`` broadcastable to ``(B, heads, N, N)``.

    Args:
        dim: Token width.
        num_heads: Heads (``dim`` must be divisible by it).
        qkv_bias: Bias of the ``qkv`` projection.
        attn_drop: Dropout on the attention weights (training only).
        proj_drop: Dropout after the output projection.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ModelError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over the ``N`` tokens of ``x``."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    """Transformer MLP: ``fc1``, GELU, dropout, ``fc2``, dropout. Shapes: ``(B, N, dim)`` to the same."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP token-wise."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ViTBlock(nn.Module):
    """Pre-norm ViT encoder block (Dosovitskiy et al., ICLR 2021): ``x + attn(LN(x))``, then ``x + mlp(LN(x))``.

    Submodule names follow the timm / official layout (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
    ``mlp.fc1``, ``mlp.fc2``). Shapes: ``(B, N, dim)`` to the same.

    Args:
        dim: Token width.
        num_heads: Heads.
        mlp_dim: Hidden width of the MLP.
        qkv_bias: Bias of the ``qkv`` projection.
        drop: Dropout in the MLP (and after the attention projection unless ``proj_drop`` is given).
        attn_drop: Dropout on the attention weights.
        drop_path: Stochastic depth of both residual branches.
        eps: LayerNorm epsilon (1e-6 in ViT).
        proj_drop: Dropout after the attention projection (default: ``drop``).
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, eps: float = 1e-6,
                 proj_drop: float | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        proj = drop if proj_drop is None else proj_drop
        self.attn = MultiHeadSelfAttention(dim, num_heads, qkv_bias, attn_drop, proj)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim, drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block on tokens ``(B, N, dim)``."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def tokens_to_map(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Tokens ``(B, N, C)`` laid out row-major on ``grid`` to a feature map ``(B, C, *grid)``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """A feature map ``(B, C, *grid)`` to tokens ``(B, N, C)`` (row-major)."""
    return x.flatten(2).transpose(1, 2)


def resize_pos_embed(pos: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """Resample position embeddings ``(1, prod(old_grid), C)`` to ``new_grid`` by (bi/tri)linear interpolation."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(old_grid)]
    grid = tokens_to_map(pos, old_grid)
    return map_to_tokens(F.interpolate(grid, size=tuple(new_grid), mode=mode, align_corners=False))


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read pretrained weights from a local file (``.npz``, ``.pth``/``.pt`` or ``.safetensors``).

    A NumPy ``.npz`` archive holds the official JAX/Flax ViT checkpoints; other files are PyTorch / safetensors
    state dicts (:func:`medseg.models.backbones.pretrained.read_state_dict`).

    Raises:
        ModelError: The file is missing or cannot be read.
    """
    path = Path(path)
    if path.suffix == ".npz":
        if not path.is_file():
            raise ModelError(f"pretrained weights file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {k: torch.from_numpy(np.asarray(archive[k])) for k in archive.files}
        except (OSError, ValueError) as err:
            raise ModelError(f"{path}: cannot be read as a NumPy .npz archive ({err})") from err
    return read_state_dict(path)


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> list[str]:
    """Copy ``state`` (our key names) into ``module``; every given tensor must match a parameter or buffer in shape.

    Returns the keys of ``module`` that received nothing (buffers such as ``num_batches_tracked`` excepted).

    Raises:
        ModelError: A key is unknown or a shape differs; the message names them.
    """
    own = module.state_dict()
    unknown = sorted(set(state) - set(own))
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if unknown or mismatched:
        raise ModelError(f"{what}: pretrained weights do not fit; unknown keys {unknown[:5]}, shape mismatches "
                         f"{mismatched[:5]}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))
    return sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
