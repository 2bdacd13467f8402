"""The base class every registered model derives from: the constructor contract and the input checks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError

__all__ = ["SegmentationModel"]


class SegmentationModel(nn.Module):
    """Base class of the model zoo: ``(spatial_dims, in_channels, out_channels, *, ...)``.

    Subclasses set :attr:`input_divisor` (per spatial axis) in their constructor and call :meth:`check_input` at the
    start of ``forward``. Models that support deep supervision set :attr:`deep_supervision_scales`: the downsampling
    factor of each deep-supervision output per axis, highest resolution (the full-resolution output) first.

    Args:
        spatial_dims: Number of spatial dimensions (2 or 3).
        in_channels: Input channels C_in of ``(B, C_in, *spatial)``.
        out_channels: Output channels C_out of ``(B, C_out, *spatial)``.
    """

    registry_name: str = ""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        name = self.registry_name or type(self).__name__
        if spatial_dims not in (2, 3):
            raise ModelError(f"{name}: spatial_dims must be 2 or 3, got {spatial_dims!r}")
        for what, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelError(f"{name}: {what} must be a positive integer, got {value!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.input_divisor: tuple[int, ...] = (1,) * spatial_dims
        self.deep_supervision_scales: list[tuple[int, ...]] = []
        #: Loss weight of each training-mode output (main first) where the paper states them, e.g. PSPNet's
        #: auxiliary head ``(1.0, 0.4)``; empty: the trainer uses nnU-Net's deep-supervision weights.
        self.loss_weights: tuple[float, ...] = ()

    @property
    def model_name(self) -> str:
        """Registry key of the model (the class name when it is not registered)."""
        return self.registry_name or type(self).__name__

    def check_input(self, x: torch.Tensor) -> None:
        """Check the rank, the channels and that each spatial size is a multiple of :attr:`input_divisor`.

        Raises:
            ModelError: The input does not fit; the message names the expected shape or the divisor.
        """
        self.check_rank_and_channels(x)
        self._check_divisible(tuple(x.shape[2:]), self.input_divisor)

    def check_rank_and_channels(self, x: torch.Tensor) -> None:
        """Check that ``x`` is ``(B, in_channels, *spatial)`` with ``spatial_dims`` spatial axes.

        Raises:
            ModelError: The rank or the channel count is wrong.
        """
        expected_rank = 2 + self.spatial_dims
        if x.dim() != expected_rank:
            raise ModelError(f"{self.model_name}: expected a {expected_rank}-d input (B, C, *spatial) for "
                             f"spatial_dims={self.spatial_dims}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ModelError(f"{self.model_name}: expected {self.in_channels} input channels, got shape "
                             f"{tuple(x.shape)}")

    def _check_divisible(self, spatial: Sequence[int], divisor: Sequence[int]) -> None:
        bad = [i for i, (s, d) in enumerate(zip(spatial, divisor, strict=True)) if s % d != 0]
        if bad:
            div = divisor[0] if len(set(divisor)) == 1 else tuple(divisor)
            fixed = tuple(-(-s // d) * d for s, d in zip(spatial, divisor, strict=True))
            raise ModelError(f"{self.model_name}: input spatial size {tuple(spatial)} is not divisible by {div} "
                             f"(the smallest input divisor of this configuration); pad the input to e.g. {fixed}")
