"""The planned U-Net topology as the zoo's U-Net variants take it: features per stage and per-stage strides.

nnU-Net-style plans describe a network by ``features_per_stage`` (channels of each resolution stage, highest
resolution first) and ``strides`` (the downsampling into each stage, one int or one per axis; stage 0 has stride 1).
:func:`medseg.models.create_model_from_plans` passes a model the planned options it accepts, so a model that accepts
``features_per_stage`` and ``strides`` is built with the planned number of stages, widths and (possibly anisotropic)
strides. :func:`resolve_stages` is the one validator of such a pair; it fills in the model's defaults.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from medseg.errors import ModelError
from medseg.models.blocks import as_tuple

__all__ = ["StagePlan", "resolve_stages"]


class StagePlan:
    """Validated stages: ``features`` (one int per stage) and ``strides`` (one tuple per stage, stage 0 all ones).

    Attributes:
        features: Channels per stage, highest resolution first.
        strides: Downsampling into each stage per axis; ``strides[0]`` is all ones.
        pools: ``strides[1:]``: the downsampling between consecutive stages.
        scales: Total downsampling of each stage relative to the input, per axis.
        divisor: Total downsampling per axis (``scales[-1]``): every input size must be a multiple of it.
    """

    def __init__(self, features: tuple[int, ...], strides: list[tuple[int, ...]]) -> None:
        self.features = features
        self.strides = strides
        self.pools = strides[1:]
        scales = [strides[0]]
        for s in strides[1:]:
            scales.append(tuple(a * b for a, b in zip(scales[-1], s, strict=True)))
        self.scales = tuple(scales)
        self.divisor = self.scales[-1]

    def __len__(self) -> int:
        return len(self.features)

    @property
    def n_stages(self) -> int:
        """Number of stages (resolution levels)."""
        return len(self.features)

    def cumulative(self, stage: int) -> tuple[int, ...]:
        """Downsampling factor of ``stage`` relative to the input, per axis."""
        return self.scales[stage]

    def between(self, fine: int, coarse: int) -> tuple[int, ...]:
        """Downsampling factor from stage ``fine`` to stage ``coarse`` (``fine <= coarse``), per axis."""
        return tuple(math.prod(s[a] for s in self.strides[fine + 1: coarse + 1]) for a in range(len(self.strides[0])))


def resolve_stages(
    name: str,
    spatial_dims: int,
    features_per_stage: Sequence[int] | None,
    strides: Sequence[int | Sequence[int]] | None,
    default_features: Sequence[int] | None = None,
    min_stages: int = 2,
    *,
    allowed_strides: tuple[int, ...] | None = None,
    multiple_of: int = 1,
) -> StagePlan:
    """Validate ``features_per_stage`` and ``strides`` and fill in the defaults.

    Args:
        name: Model name for the error messages.
        spatial_dims: 2 or 3.
        features_per_stage: Channels per stage, or ``None`` for ``default_features`` — truncated, or extended by
            doubling the last width, to the number of ``strides`` when those are given.
        strides: Stride into each stage (``strides[0]`` must be 1), or ``None`` for 2 per axis at every stage
            after the first.
        default_features: The model's default channels per stage (needed when ``features_per_stage`` is ``None``).
        min_stages: Fewest stages the model supports.
        allowed_strides: Stride values the model can take (e.g. ``(1, 2)`` for wavelet pooling), or ``None``.
        multiple_of: Every width must be a multiple of it (e.g. a growth rate).

    Returns:
        The validated :class:`StagePlan`.

    Raises:
        ModelError: Lengths differ, too few stages, a non-positive value, a first-stage stride other than 1, a stride
            the model cannot take, or a width that is not a multiple of ``multiple_of``.
    """
    if features_per_stage is None:
        if default_features is None:
            raise ModelError(f"{name}: features_per_stage is required")
        base = [int(f) for f in default_features]
        n = len(strides) if strides is not None else len(base)
        features = tuple(base[:n] + [base[-1] * 2 ** (i + 1) for i in range(n - len(base))])
    else:
        features = tuple(int(f) for f in features_per_stage)
    if strides is None:
        strides = [1] + [2] * (len(features) - 1)
    try:
        st = [as_tuple(s, spatial_dims) for s in strides]
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{name}: each stride must be an int or {spatial_dims} ints ({exc})") from None
    if len(st) != len(features):
        raise ModelError(f"{name}: features_per_stage and strides need one entry per stage, got {len(features)} and "
                         f"{len(st)} (pass features_per_stage with {len(st)} entries)")
    if len(features) < min_stages:
        raise ModelError(f"{name}: needs at least {min_stages} stages, got {len(features)}")
    if any(f < 1 for f in features) or any(s < 1 for ss in st for s in ss):
        raise ModelError(f"{name}: features and strides must be positive, got {features} and {st}")
    if any(f % multiple_of for f in features):
        raise ModelError(f"{name}: every stage width must be a positive multiple of {multiple_of}, got {features}")
    if any(s != 1 for s in st[0]):
        raise ModelError(f"{name}: the first stage keeps the input resolution (stride 1), got {st[0]}")
    if allowed_strides is not None and any(s not in allowed_strides for ss in st for s in ss):
        raise ModelError(f"{name}: strides must be in {allowed_strides} on every axis, got {st}")
    return StagePlan(features, st)
