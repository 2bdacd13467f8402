"""The planned U-Net topology as the medical U-Net variants take it: features per stage and per-stage strides.

nnU-Net-style plans describe a network by ``features_per_stage`` (channels of each resolution stage, highest
resolution first) and ``strides`` (the downsampling into each stage, one int or one per axis; stage 0 has stride 1).
:func:`medseg.models.create_model_from_plans` passes a model the planned options it accepts, so a model that accepts
``features_per_stage`` and ``strides`` is built with the planned number of stages, widths and (possibly anisotropic)
strides. :func:`resolve_stages` validates such a pair and fills in the model's defaults.
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
        divisor: Total downsampling per axis: every input size must be a multiple of it.
    """

    def __init__(self, features: tuple[int, ...], strides: list[tuple[int, ...]]) -> None:
        self.features = features
        self.strides = strides
        self.divisor = tuple(math.prod(s[a] for s in strides) for a in range(len(strides[0])))

    def __len__(self) -> int:
        return len(self.features)

    def cumulative(self, stage: int) -> tuple[int, ...]:
        """Downsampling factor of ``stage`` relative to the input, per axis."""
        return tuple(math.prod(s[a] for s in self.strides[: stage + 1]) for a in range(len(self.strides[0])))

    def between(self, fine: int, coarse: int) -> tuple[int, ...]:
        """Downsampling factor from stage ``fine`` to stage ``coarse`` (``fine <= coarse``), per axis."""
        return tuple(math.prod(s[a] for s in self.strides[fine + 1: coarse + 1]) for a in range(len(self.strides[0])))


def resolve_stages(
    name: str,
    spatial_dims: int,
    features_per_stage: Sequence[int] | None,
    strides: Sequence[int | Sequence[int]] | None,
    default_features: Sequence[int],
    min_stages: int = 2,
) -> StagePlan:
    """Validate ``features_per_stage`` and ``strides`` and fill in the defaults.

    Args:
        name: Model name for the error messages.
        spatial_dims: 2 or 3.
        features_per_stage: Channels per stage, or ``None`` for ``default_features`` (or, when only ``strides`` is
            given and its length differs, an error).
        strides: Stride into each stage (``strides[0]`` must be 1), or ``None`` for 2 per axis at every stage
            after the first.
        default_features: The model's default channels per stage.
        min_stages: Fewest stages the model supports.

    Returns:
        The validated :class:`StagePlan`.

    Raises:
        ModelError: Lengths differ, too few stages, a non-positive value, or a first-stage stride other than 1.
    """
    features = tuple(int(f) for f in (default_features if features_per_stage is None else features_per_stage))
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
    if any(s != 1 for s in st[0]):
        raise ModelError(f"{name}: the first stage keeps the input resolution (stride 1), got {st[0]}")
    return StagePlan(features, st)
