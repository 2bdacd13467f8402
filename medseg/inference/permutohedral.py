"""Gaussian filtering in a feature space with the permutohedral lattice (Adams, Baek and Davis, Eurographics 2010).

A fully connected CRF's mean-field step needs, for every voxel ``i`` and class ``l``, the sum
``Σ_j exp(-½ |f_i - f_j|²) Q_j(l)`` over all voxels ``j`` — a gaussian filter in the space of the features ``f``
(position over θα and intensity over θβ for the appearance kernel). Krähenbühl and Koltun (NIPS 2011) compute it
in linear time with the permutohedral lattice; this module is that algorithm written with whole-tensor torch
operations (no compiled extension), so it runs on the CPU and on CUDA alike:

1. **Elevate** each ``d``-dimensional feature onto the hyperplane ``Σ x = 0`` of ``R^(d+1)`` (the matrix ``E`` of
   Adams et al., scaled so that the lattice blur below has unit standard deviation in feature units).
2. **Enclosing simplex**: round to the nearest remainder-0 lattice point, order the residual's coordinates (the
   *rank*), and read the ``d + 1`` vertices of the simplex holding the point and its barycentric weights.
3. **Splat** every value onto its simplex's vertices with those weights (``index_add``), **blur** along each of the
   ``d + 1`` lattice directions with the kernel ``[½, 1, ½]`` (vertices missing from the sparse lattice count as
   0), and **slice** (interpolate back with the same weights, times Adams' constant ``1 / (1 + 2^-d)``).

The sparse lattice is a sorted table of the vertices' integer keys: vertices are numbered with ``torch.unique`` and
the neighbours of a vertex found with ``searchsorted`` on one int64 code per key (mixed radix), or with a joint
``unique`` of rows when the keys do not fit in 62 bits. Building the lattice costs ``O(N (d+1) log N)`` once per
image; each filtering then costs ``O(N (d+1) K)`` for ``K`` values per voxel.
"""

from __future__ import annotations

import math

import torch


def _elevate(features: torch.Tensor) -> torch.Tensor:
    """``(N, d)`` features → ``(N, d+1)`` points of the plane ``Σ x = 0`` (Adams et al., p. 5; ``E·f``)."""
    n, d = features.shape
    i = torch.arange(d, device=features.device, dtype=features.dtype)
    scale = (d + 1) * math.sqrt(2.0 / 3.0) / torch.sqrt((i + 1) * (i + 2))
    cf = features * scale
    # suffix[j] = Σ_{m >= j} cf[m]  (j = 0 … d, suffix[d] = 0)
    suffix = torch.cat([cf.flip(1).cumsum(1).flip(1), cf.new_zeros(n, 1)], 1)
    elevated = suffix.clone()
    elevated[:, 1:] -= (i + 1) * cf
    return elevated


class PermutohedralLattice:
    """The lattice of one set of features; :meth:`filter` applies the gaussian to any values on the same points.

    Args:
        features: ``(N, d)`` float features, already divided by the kernel's standard deviations.
    """

    def __init__(self, features: torch.Tensor) -> None:
        if features.ndim != 2:
            raise ValueError(f"features must be (N, d), got shape {tuple(features.shape)}")
        features = features.double()  # exact ranks and rounding, as the reference's double comparisons
        n, d = features.shape
        self.n, self.d = n, d
        device = features.device
        dp1 = d + 1
        elevated = _elevate(features)
        v = elevated / dp1
        up, down = torch.ceil(v) * dp1, torch.floor(v) * dp1
        rem0 = torch.where(up - elevated < elevated - down, up, down)
        total = (rem0 / dp1).sum(1).round().long()
        residual = elevated - rem0
        # rank[i] = #{j > i: r_j > r_i} + #{j < i: r_j >= r_i}  (ties resolved by index, as the reference)
        ri, rj = residual[:, :, None], residual[:, None, :]
        idx = torch.arange(dp1, device=device)
        later = (idx[None, :] > idx[:, None])[None]
        rank = ((later & (rj > ri)) | (~later & (idx[None, :] != idx[:, None])[None] & (rj >= ri))).sum(2)
        rank = rank + total[:, None]
        below, above = rank < 0, rank > d
        rank = torch.where(below, rank + dp1, torch.where(above, rank - dp1, rank))
        rem0 = torch.where(below, rem0 + dp1, torch.where(above, rem0 - dp1, rem0))
        # barycentric coordinates (Adams et al., p. 10)
        weights = (elevated - rem0) / dp1
        bary = features.new_zeros(n, d + 2)
        bary.scatter_add_(1, d - rank, weights)
        bary.scatter_add_(1, d - rank + 1, -weights)
        bary[:, 0] += 1.0 + bary[:, d + 1]
        self.weights = bary[:, :dp1].float().reshape(-1)  # (N·(d+1),)
        # vertex keys: rem0 + canonical[remainder][rank], first d coordinates (the last follows from Σ = 0)
        remainder = torch.arange(dp1, device=device)[None, :, None]  # (1, d+1, 1)
        r = rank[:, None, :d]  # (N, 1, d)
        canonical = torch.where(r <= d - remainder, remainder, remainder - dp1)
        keys = (rem0[:, None, :d].round().long() + canonical).reshape(-1, d)  # (N·(d+1), d)
        self._index(keys)

    def _index(self, keys: torch.Tensor) -> None:
        """Number the distinct vertices and find each one's two neighbours along every lattice direction."""
        d = self.d
        lo = keys.min(0).values - d - 1
        span = keys.max(0).values - lo + d + 2
        fits = float(torch.prod(span.double())) < 2.0**62
        if fits:
            radix = torch.cumprod(torch.cat([span.new_ones(1), span[:-1]]), 0)
            codes = ((keys - lo) * radix).sum(1)
            unique, inverse = torch.unique(codes, return_inverse=True)
        else:
            unique_rows, inverse = torch.unique(keys, dim=0, return_inverse=True)
        self.offsets = inverse  # (N·(d+1),) vertex of each (point, remainder)
        m = int(inverse.max()) + 1 if inverse.numel() else 0
        self.m = m
        vertex_keys = torch.empty(m, d, dtype=keys.dtype, device=keys.device)
        vertex_keys[inverse] = keys
        neighbours = []
        for j in range(d + 1):
            step = torch.full((d,), -1, dtype=keys.dtype, device=keys.device)
            if j < d:
                step[j] = d
            for sign in (1, -1):
                neighbour = vertex_keys + sign * step
                if fits:
                    code = ((neighbour - lo) * radix).sum(1)
                    pos = torch.searchsorted(unique, code).clamp(max=m - 1)
                    found = unique[pos] == code
                else:
                    both, inv = torch.unique(torch.cat([unique_rows, neighbour]), dim=0, return_inverse=True)
                    slot = torch.full((both.shape[0],), m, dtype=torch.long, device=keys.device)
                    slot[inv[:m]] = torch.arange(m, device=keys.device)
                    pos = slot[inv[m:]]
                    found = pos < m
                neighbours.append(torch.where(found, pos, torch.full_like(pos, m)))
        self.neighbours = neighbours  # 2·(d+1) tensors (M,): index of the neighbour, M where absent

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """``out_i ≈ Σ_j exp(-½ |f_i - f_j|²) · values_j`` for ``(N, K)`` values (the point itself included)."""
        if values.shape[0] != self.n:
            raise ValueError(f"{values.shape[0]} values for a lattice of {self.n} points")
        k = values.shape[1]
        dp1 = self.d + 1
        splat = values.new_zeros(self.m + 1, k)  # the last row stays 0: absent neighbours
        contributions = (values[:, None, :] * self.weights.view(-1, dp1, 1).to(values.dtype)).reshape(-1, k)
        splat.index_add_(0, self.offsets, contributions)
        for j in range(dp1):
            n1, n2 = self.neighbours[2 * j], self.neighbours[2 * j + 1]
            blurred = splat[: self.m] + 0.5 * (splat[n1] + splat[n2])
            splat = torch.cat([blurred, splat.new_zeros(1, k)])
        alpha = 1.0 / (1.0 + 2.0 ** (-self.d))
        sliced = splat[self.offsets].view(-1, dp1, k) * (self.weights.view(-1, dp1, 1).to(values.dtype) * alpha)
        return sliced.sum(1)
