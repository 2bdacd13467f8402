"""nnU-Net v2's training augmentation built from MONAI transforms (Isensee et al., Nature Methods 2021).

One :class:`Augmenter` call transforms one sample; every random draw comes from the ``numpy.random.Generator``
passed in, so a sample is a pure function of its seed (see :mod:`medseg.training.data`). The pipeline follows
``nnUNetTrainer.get_training_transforms`` in order, with its probabilities and ranges (:class:`AugmentationConfig`):

========================  ====================================================================================
step                      implementation
========================  ====================================================================================
rotation + scaling        MONAI ``Affine`` (one resampling, centred, output = final patch; image bilinear, labels
                          nearest), rotation with p 0.2, scaling with p 0.2; otherwise a centre crop. The input is
                          the larger initial patch (:func:`initial_patch_size`), so rotated corners hold data.
gaussian noise            p 0.1, σ U(0, 0.1) — nnU-Net's ``noise_variance`` draw is used as the standard
                          deviation itself — same σ for all channels
gaussian blur             p 0.2, per channel p 0.5, σ U(0.5, 1) per axis (MONAI ``GaussianSmooth``)
brightness                p 0.15, per channel multiplier from (0.75, 1.25)
contrast                  p 0.15, per channel ``(x - mean) · f + mean`` clipped to the channel's range
low resolution            p 0.25, per channel p 0.5: MONAI ``Resize`` down (nearest) by U(0.5, 1), back up (linear)
gamma (inverted image)    p 0.1, MONAI ``AdjustContrast(invert_image=True, retain_stats=True)``, γ from (0.7, 1.5)
gamma                     p 0.3, ``AdjustContrast(retain_stats=True)``
mirroring                 each spatial axis with p 0.5 (MONAI ``Flip``)
========================  ====================================================================================

Factor ranges straddling 1 are drawn as nnU-Net's ``BGContrast``: with probability ½ below 1, else above.
Differences from nnU-Net: labels are rotated with nearest neighbour (nnU-Net v2 interpolates their one-hot map
linearly), and blurring uses MONAI's erf-based gaussian kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from medseg.training.config import AugmentationConfig

#: A patch counts as anisotropic ("dummy 2D" augmentation) when its largest edge exceeds 3× its first edge.
DUMMY_2D_THRESHOLD = 3.0


def is_dummy_2d(patch_size: Sequence[int]) -> bool:
    """nnU-Net's rule for in-plane-only spatial augmentation of anisotropic 3D patches."""
    return len(patch_size) == 3 and max(patch_size) / patch_size[0] > DUMMY_2D_THRESHOLD


def rotation_range(patch_size: Sequence[int], config: AugmentationConfig) -> float:
    """Maximum rotation in radians: ``rotation_degrees`` in 3D, 180° in 2D and dummy 2D."""
    if len(patch_size) == 2 or is_dummy_2d(patch_size):
        return math.pi
    return math.radians(config.rotation_degrees)


def _rot3d(coords: np.ndarray, angle: float, axis: int) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m @ coords


def initial_patch_size(patch_size: Sequence[int], max_angle: float, scale_range: Sequence[float] = (0.85, 1.25),
                       dummy_2d: bool = False) -> list[int]:
    """Patch to crop before the spatial transform (nnU-Net's ``get_patch_size``).

    The patch's extent is rotated by ``max_angle`` (capped at 90°) about each axis, the maximum absolute extent kept,
    and divided by the smallest scale (nnU-Net uses (0.85, 1.25) here). In dummy 2D mode only the last two axes are
    rotated and the first keeps its size.
    """
    angle = min(max_angle, math.pi / 2)
    if dummy_2d:
        inner = initial_patch_size(patch_size[1:], max_angle, scale_range)
        return [int(patch_size[0]), *inner]
    coords = np.asarray(patch_size, dtype=np.float64)
    final = coords.copy()
    if len(coords) == 3:
        for axis in range(3):
            for signed in (angle, -angle):
                final = np.maximum(final, np.abs(_rot3d(coords, signed, axis)))
    else:
        for signed in (angle, -angle):
            c, s = math.cos(signed), math.sin(signed)
            final = np.maximum(final, np.abs(np.array([[c, -s], [s, c]]) @ coords))
    final /= min(scale_range)
    return [int(v) for v in final]


def _plain(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor (MONAI transforms may return a MetaTensor)."""
    return value.as_tensor() if hasattr(value, "as_tensor") else torch.as_tensor(value)


def _bg_factor(rng: np.random.Generator, low: float, high: float) -> float:
    """nnU-Net's ``BGContrast``: below 1 or above 1 with probability ½ each, when the range straddles 1."""
    if rng.random() < 0.5 and low < 1:
        return float(rng.uniform(low, 1.0))
    return float(rng.uniform(max(low, 1.0), high))


def noise_sigma(config: AugmentationConfig, rng: np.random.Generator) -> float:
    """The gaussian-noise standard deviation of one sample: nnU-Net's draw from ``noise_variance`` used as σ itself.

    nnU-Net names the range a variance but passes the drawn value as the standard deviation (batchgenerators'
    ``augment_gaussian_noise``, ``GaussianNoiseTransform(noise_variance=(0, 0.1))``), so σ is at most 0.1, not √0.1.
    """
    return float(rng.uniform(*config.noise_variance))


class Augmenter:
    """Transform one sample ``(C, *initial_patch)`` image and ``(1, *initial_patch)`` labels to the final patch.

    Args:
        patch_size: Final patch.
        config: Probabilities and ranges.
    """

    def __init__(self, patch_size: Sequence[int], config: AugmentationConfig) -> None:
        self.patch_size = [int(p) for p in patch_size]
        self.config = config
        self.dims = len(self.patch_size)
        self.dummy_2d = is_dummy_2d(self.patch_size)
        self.max_angle = rotation_range(self.patch_size, config)

    def spatial(self, image: torch.Tensor, seg: torch.Tensor, rng: np.random.Generator) -> tuple[
        torch.Tensor, torch.Tensor
    ]:
        """Rotation and scaling (or a centre crop) to the final patch."""
        from monai.transforms import Affine

        cfg = self.config
        rotate = cfg.enabled and rng.random() < cfg.p_rotation
        scale = cfg.enabled and rng.random() < cfg.p_scaling
        if rotate or scale:
            if self.dims == 3:
                angles = [float(rng.uniform(-self.max_angle, self.max_angle)) if rotate else 0.0 for _ in range(3)]
                if self.dummy_2d:
                    angles[1] = angles[2] = 0.0
            else:
                angles = [float(rng.uniform(-self.max_angle, self.max_angle)) if rotate else 0.0]
            factor = float(rng.uniform(*cfg.scaling)) if scale else 1.0
            scales = [factor] * self.dims
            if self.dummy_2d:
                scales[0] = 1.0
            affine = Affine(rotate_params=angles, scale_params=scales, spatial_size=self.patch_size,
                            padding_mode="zeros", image_only=True)
            image = affine(image, mode="bilinear")
            seg = affine(seg.float(), mode="nearest")
            return _plain(image), torch.round(_plain(seg)).to(torch.int16)
        slicer = [slice(None)]
        for have, want in zip(image.shape[1:], self.patch_size, strict=True):
            start = (have - want) // 2
            slicer.append(slice(start, start + want))
        return image[tuple(slicer)], seg[tuple(slicer)]

    def intensity(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Noise, blur, brightness, contrast, low resolution and gamma, with nnU-Net's probabilities."""
        from monai.transforms import AdjustContrast, GaussianSmooth, Resize

        cfg = self.config
        channels = image.shape[0]
        image = image.clone()
        if rng.random() < cfg.p_noise:
            sigma = noise_sigma(cfg, rng)
            noise = rng.normal(0.0, sigma, size=tuple(image.shape)).astype(np.float32)
            image += torch.from_numpy(noise)
        if rng.random() < cfg.p_blur:
            for c in range(channels):
                if rng.random() < cfg.p_blur_per_channel:
                    sigmas = [float(rng.uniform(*cfg.blur_sigma)) for _ in range(self.dims)]
                    if self.dummy_2d:
                        sigmas[0] = 0.0
                    image[c] = _plain(GaussianSmooth(sigma=sigmas)(image[c : c + 1]))[0]
        if rng.random() < cfg.p_brightness:
            for c in range(channels):
                image[c] *= _bg_factor(rng, *cfg.brightness)
        if rng.random() < cfg.p_contrast:
            for c in range(channels):
                factor = _bg_factor(rng, *cfg.contrast)
                mean, lo, hi = image[c].mean(), image[c].min(), image[c].max()
                image[c] = torch.clamp((image[c] - mean) * factor + mean, lo, hi)
        if rng.random() < cfg.p_lowres:
            shape = list(image.shape[1:])
            for c in range(channels):
                if rng.random() < cfg.p_lowres_per_channel:
                    zoom = float(rng.uniform(*cfg.lowres_scale))
                    small = [max(1, round(s * zoom)) for s in shape]
                    if self.dummy_2d:
                        small[0] = shape[0]
                    down = Resize(small, mode="nearest-exact")(image[c : c + 1])
                    up = Resize(shape, mode="trilinear" if self.dims == 3 else "bilinear")(down)
                    image[c] = _plain(up)[0]
        for p, invert in ((cfg.p_gamma_inverted, True), (cfg.p_gamma, False)):
            if rng.random() < p:
                for c in range(channels):
                    gamma = _bg_factor(rng, *cfg.gamma)
                    image[c] = _plain(AdjustContrast(gamma, invert_image=invert, retain_stats=True)(
                        image[c : c + 1]))[0]
        return image

    def mirror(self, image: torch.Tensor, seg: torch.Tensor, rng: np.random.Generator) -> tuple[
        torch.Tensor, torch.Tensor
    ]:
        """Flip each spatial axis with probability ``p_mirror`` (MONAI ``Flip``)."""
        from monai.transforms import Flip

        axes = [a for a in range(self.dims) if rng.random() < self.config.p_mirror]
        if not axes:
            return image, seg
        flip = Flip(spatial_axis=axes)
        return _plain(flip(image)), _plain(flip(seg))

    def __call__(self, image: torch.Tensor, seg: torch.Tensor, rng: np.random.Generator,
                 spatial_only: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one sample; with ``enabled=False`` only the centre crop to the final patch is applied.

        The last ``spatial_only`` channels (coordinate channels) get the spatial transforms and the mirroring but
        no intensity transform.
        """
        image, seg = self.spatial(image, seg, rng)
        if self.config.enabled:
            if spatial_only:
                keep = image.shape[0] - spatial_only
                image = torch.cat([self.intensity(image[:keep], rng), image[keep:]])
            else:
                image = self.intensity(image, rng)
            if self.config.mirror:
                image, seg = self.mirror(image, seg, rng)
        return image.contiguous(), seg.contiguous()
