"""CRF post-processing of a prediction: the fully connected CRF and the ConvCRF, 2D and 3D, in torch.

``medseg predict --crf dense`` refines the stitched prediction on the preprocessed grid, before it is resampled to
the native grid, with the image it was predicted from:

- **Fully connected CRF** (DeepLab v1/v2, Chen et al., ICLR 2015 / TPAMI 2018, after Krähenbühl and Koltun, NIPS
  2011; the structured models of Lin et al., "Efficient piecewise training of deep structured models", CVPR 2016,
  use the same dense CRF as their post-processing): every pair of voxels interacts through

  ``k(i, j) = w_a · exp(-|p_i - p_j|²/2θα² - |I_i - I_j|²/2θβ²) + w_s · exp(-|p_i - p_j|²/2θγ²)``

  (appearance and smoothness kernels; positions ``p`` in millimetres, intensities ``I`` of the preprocessed image,
  every channel) with the Potts compatibility. Mean-field inference starts from the network's probabilities and
  repeats ``Q ← softmax(log P + Σ_m w_m · k̃_m * Q)``. The appearance kernel is a gaussian in the joint
  position–intensity space, filtered with the permutohedral lattice (:mod:`medseg.inference.permutohedral`); the
  smoothness kernel is an exact separable gaussian convolution on the grid. Both are normalised symmetrically
  (``D^-½ K D^-½``, the reference implementation's default ``NORMALIZE_SYMMETRIC``).
- **ConvCRF** (Teichmann and Cipolla 2018; :class:`medseg.models.convcrf.ConvCRF`): the same CRF with messages
  truncated to a ``window`` of voxels, positions in millimetres.

Axes of length 1 (a 2D picture is a one-slice volume) are dropped, so a picture gets a 2D CRF.

Memory of the dense CRF: the lattice keeps an int64 vertex index and a float32 weight for each of the ``d + 1``
vertices of every voxel (``d`` = spatial axes + image channels), about ``12 (d + 1)`` bytes per voxel, plus a few
``K``-class float32 volumes; a 256×256×128 CT with one channel and 3 classes needs about 1 GiB. It runs on the
predictor's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from medseg.inference.permutohedral import PermutohedralLattice

METHODS = ("dense", "conv")


@dataclass
class CRFConfig:
    """Settings of CRF post-processing (``medseg predict --crf METHOD --crf-set key=value``).

    Attributes:
        method: ``dense`` (fully connected, permutohedral lattice) or ``conv`` (ConvCRF, local window).
        iterations: Mean-field iterations (DeepLab: 10; ConvCRF: 5).
        appearance_weight: ``w_a``, weight of the appearance (bilateral) kernel.
        appearance_sigma_mm: ``θα``, its spatial width in millimetres.
        intensity_sigma: ``θβ``, its intensity width in units of the preprocessed image (z-scores for MR, the
            dataset's standard deviations for CT).
        smoothness_weight: ``w_s``, weight of the smoothness kernel.
        smoothness_sigma_mm: ``θγ``, its width in millimetres.
        window: ``conv`` only: window edge in voxels (odd).
        blur: ``conv`` only: down-sampling factor of the message passing.
    """

    method: Literal["dense", "conv"] = "dense"
    iterations: int = 5
    appearance_weight: float = 5.0
    appearance_sigma_mm: float = 10.0
    intensity_sigma: float = 0.3
    smoothness_weight: float = 1.0
    smoothness_sigma_mm: float = 1.0
    window: int = 7
    blur: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        for name in ("appearance_sigma_mm", "intensity_sigma", "smoothness_sigma_mm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"window must be a positive odd number, got {self.window}")
        if self.blur < 1:
            raise ValueError(f"blur must be at least 1, got {self.blur}")


def gaussian_filter(values: torch.Tensor, sigmas: Sequence[float], truncate: float = 4.0) -> torch.Tensor:
    """Separable gaussian of ``(K, *spatial)`` values, ``σ`` in voxels per axis, zero outside the grid."""
    out = values[None]
    dims = values.ndim - 1
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    k = values.shape[0]
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0 or values.shape[axis + 1] == 1:
            continue
        radius = max(1, math.ceil(truncate * sigma))
        x = torch.arange(-radius, radius + 1, dtype=values.dtype, device=values.device)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        shape = [1] * dims
        shape[axis] = kernel.numel()
        weight = kernel.view(1, 1, *shape).repeat(k, 1, *([1] * dims))
        padding = [0] * dims
        padding[axis] = radius
        out = conv(out, weight, padding=padding, groups=k)
    return out[0]


def dense_crf(unary: torch.Tensor, image: torch.Tensor, spacing: Sequence[float], config: CRFConfig) -> torch.Tensor:
    """Mean-field inference of the fully connected CRF (see the module docstring).

    Args:
        unary: ``(K, *spatial)`` log-probabilities of the prediction.
        image: ``(C, *spatial)`` image on the same grid.
        spacing: Voxel size in millimetres per spatial axis.
        config: Weights, widths and iterations.

    Returns:
        ``(K, *spatial)`` float32 logits of the refined marginals (``softmax`` gives ``Q``).
    """
    k, spatial = unary.shape[0], list(unary.shape[1:])
    n = math.prod(spatial)
    grids = torch.meshgrid(*[torch.arange(s, device=unary.device, dtype=torch.float32) * float(sp)
                             for s, sp in zip(spatial, spacing, strict=True)], indexing="ij")
    positions = torch.stack([g.reshape(-1) for g, s in zip(grids, spatial, strict=True) if s > 1], 1)
    intensities = image.reshape(image.shape[0], n).T.float().to(unary.device)
    features = torch.cat([positions / config.appearance_sigma_mm, intensities / config.intensity_sigma], 1)
    lattice = PermutohedralLattice(features)
    ones = torch.ones(n, 1, device=unary.device)
    norm_a = lattice.filter(ones).clamp(min=1e-20).rsqrt()
    sigmas = [config.smoothness_sigma_mm / float(sp) for sp in spacing]
    norm_s = gaussian_filter(ones.T.reshape(1, *spatial), sigmas).clamp(min=1e-20).rsqrt()
    u = unary.float()
    z = u
    for _ in range(config.iterations):
        q = torch.softmax(z, 0)
        appearance = (norm_a * lattice.filter(norm_a * q.reshape(k, n).T)).T.reshape(k, *spatial)
        smooth = norm_s * gaussian_filter(norm_s * q, sigmas)
        z = u + config.appearance_weight * appearance + config.smoothness_weight * smooth
    return z


def conv_crf(unary: torch.Tensor, image: torch.Tensor, spacing: Sequence[float], config: CRFConfig) -> torch.Tensor:
    """The ConvCRF (:class:`medseg.models.convcrf.ConvCRF`) with ``config``'s settings, positions in millimetres."""
    from medseg.models.convcrf import ConvCRF

    layer = ConvCRF(unary.shape[0], unary.ndim - 1, window=config.window, iterations=config.iterations,
                    appearance_weight=config.appearance_weight, appearance_sigma=config.appearance_sigma_mm,
                    intensity_sigma=config.intensity_sigma, smoothness_weight=config.smoothness_weight,
                    smoothness_sigma=config.smoothness_sigma_mm, blur=config.blur).to(unary.device)
    with torch.no_grad():
        return layer(unary[None].float(), image[None].float().to(unary.device), spacing)[0]


def crf_refine(values: torch.Tensor, kind: str, image: torch.Tensor, spacing: Sequence[float],
               config: CRFConfig) -> torch.Tensor:
    """Refine a stitched prediction with a CRF.

    Args:
        values: ``(K, *spatial)`` logits (one model) or probabilities (an ensemble), on any device.
        kind: ``logits`` or ``probabilities``.
        image: ``(C, *spatial)`` image the prediction was made from (the preprocessed image channels).
        spacing: Voxel size in millimetres per spatial axis.
        config: The CRF settings.

    Returns:
        ``(K, *spatial)`` float32 logits of the refined marginals, on ``values``' device.
    """
    if values.shape[1:] != image.shape[1:]:
        raise ValueError(f"prediction {tuple(values.shape[1:])} and image {tuple(image.shape[1:])} grids differ")
    if len(spacing) != values.ndim - 1:
        raise ValueError(f"{len(spacing)} spacings for {values.ndim - 1} spatial axes")
    values = values.float()
    unary = torch.log_softmax(values, 0) if kind == "logits" else torch.log(
        (values / values.sum(0, keepdim=True).clamp(min=1e-12)).clamp(min=1e-8))
    keep = [a for a, s in enumerate(values.shape[1:]) if s > 1]
    if config.method == "conv" and len(keep) < 2:  # the ConvCRF is 2D or 3D
        keep = list(range(values.ndim - 1))
    shape = values.shape[1:]
    squeezed_unary = unary.reshape(unary.shape[0], *[shape[a] for a in keep])
    squeezed_image = image.float().to(values.device).reshape(image.shape[0], *[shape[a] for a in keep])
    kept_spacing = [float(spacing[a]) for a in keep]
    if not keep:  # a single voxel: nothing to interact with
        return unary
    refine = dense_crf if config.method == "dense" else conv_crf
    return refine(squeezed_unary, squeezed_image, kept_spacing, config).reshape(values.shape)
