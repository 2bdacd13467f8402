"""Convolutional CRFs (Teichmann and Cipolla, "Convolutional CRFs for Semantic Segmentation", BMVC 2019 / arXiv 2018).

A ConvCRF is the fully connected CRF of Krähenbühl and Koltun (NIPS 2011) with its pairwise messages truncated to a
local window: two voxels interact only when their distance along every axis is at most ``window // 2`` (the paper's
conditional-independence assumption). Mean-field inference then needs no lattice: each message is a locally
connected convolution whose weights are gaussians of the feature differences, so it runs on the GPU, in 2D and 3D,
and can be trained end to end with the network that produces the unary (Teichmann §3–4).

Energy and inference (Potts compatibility, as in both papers). With ``U = log_softmax(logits)`` and ``Q_0 =
softmax(U)``, each of the ``iterations`` steps computes

``m_i(l) = w_a(l) · A_i[Q(l)] + w_s(l) · S_i[Q(l)]``,  ``z = U + m + C·m``,  ``Q = softmax(z)``,

where ``A`` is the appearance (bilateral) kernel ``exp(-|p_i - p_j|²/2θα² - |I_i - I_j|²/2θβ²)`` and ``S`` the
smoothness kernel ``exp(-|p_i - p_j|²/2θγ²)``, both over the window and normalised by their sum at ``i`` (so that a
message is a weighted mean of the neighbours' beliefs and the weights mean the same for any window or
dimensionality; Teichmann's reference leaves them unnormalised). ``C`` is a learnable 1×1 compatibility transform
that starts at zero (the Potts model); ``w_a`` and ``w_s`` are per class (Teichmann's ``weight='vector'``). The
layer returns the last ``z``: logits, so the usual losses apply. Positions are in voxels, or in millimetres when a
spacing is given; ``θ`` and ``w`` are buffers, or parameters (``trainable``: the kernel widths as their logarithms).

``blur`` (Teichmann's down-sampling trick) runs the message passing on an average-pooled grid and upsamples the
messages linearly, dividing the cost by ``blur^dims``.

:class:`CRFLayerModel` puts a ConvCRF after any registered network: the refined logits are its output (the first of
a deep-supervision list), and it exposes the wrapped model's contract attributes, so the trainer, the sliding window
and the predictor use it as the model itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CRFLayerModel", "ConvCRF", "create_run_model", "with_crf_layer"]

#: Largest number of values one slab of the message passing may hold without gradients (slabs of the first axis).
SLAB_ELEMENTS = 1 << 25


class ConvCRF(nn.Module):
    """Mean-field inference of a CRF with gaussian edge potentials truncated to a local window.

    Args:
        num_classes: Classes ``K`` of the unary logits.
        spatial_dims: 2 or 3.
        window: Window edge in voxels (odd; Teichmann: 7 or 11 at ``blur`` 4 in 2D).
        iterations: Mean-field iterations (5).
        appearance_weight: ``w_a`` (initial value for every class).
        appearance_sigma: ``θα``: spatial width of the appearance kernel (voxels, or mm with a spacing).
        intensity_sigma: ``θβ``: intensity width of the appearance kernel, in the image's units.
        smoothness_weight: ``w_s``.
        smoothness_sigma: ``θγ``: width of the smoothness kernel.
        blur: Down-sampling factor of the message passing (1: none).
        trainable: Learn the weights, the kernel widths and the compatibility transform.
    """

    def __init__(self, num_classes: int, spatial_dims: int, *, window: int = 5, iterations: int = 5,
                 appearance_weight: float = 3.0, appearance_sigma: float = 3.0, intensity_sigma: float = 0.5,
                 smoothness_weight: float = 1.0, smoothness_sigma: float = 1.0, blur: int = 1,
                 trainable: bool = False) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be a positive odd number, got {window}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if blur < 1:
            raise ValueError(f"blur must be at least 1, got {blur}")
        self.num_classes, self.spatial_dims = int(num_classes), int(spatial_dims)
        self.window, self.iterations, self.blur, self.trainable = int(window), int(iterations), int(blur), trainable
        weights = torch.tensor([appearance_weight, smoothness_weight], dtype=torch.float32)[:, None]
        log_sigmas = torch.log(torch.tensor([appearance_sigma, intensity_sigma, smoothness_sigma],
                                            dtype=torch.float32))
        if trainable:
            self.weights = nn.Parameter(weights.repeat(1, self.num_classes))
            self.log_sigmas = nn.Parameter(log_sigmas)
            conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
            self.compatibility: nn.Module | None = conv(self.num_classes, self.num_classes, 1, bias=False)
            nn.init.zeros_(self.compatibility.weight)  # type: ignore[arg-type]
        else:
            self.register_buffer("weights", weights.repeat(1, self.num_classes))
            self.register_buffer("log_sigmas", log_sigmas)
            self.compatibility = None

    def _appearance(self, image: torch.Tensor, inside: torch.Tensor, position2: torch.Tensor) -> torch.Tensor:
        """The appearance kernel ``(B, W, *rows)`` of a slab from its image neighbourhood ``(B, C, W, *rows)``."""
        sigma_a, sigma_i, _ = torch.exp(self.log_sigmas).unbind()
        centre = image[:, :, position2.numel() // 2][:, :, None]
        diff2 = ((image - centre) ** 2).sum(1) / sigma_i**2
        position2 = position2.reshape(1, -1, *([1] * self.spatial_dims))
        return torch.exp(-0.5 * (position2 / sigma_a**2 + diff2)) * inside

    def _smooth(self, q: torch.Tensor, position2: torch.Tensor) -> torch.Tensor:
        """The normalised smoothness message: a depthwise gaussian convolution, divided by its sum inside the image."""
        sigma_s = torch.exp(self.log_sigmas[2])
        kernel = torch.exp(-0.5 * position2 / sigma_s**2)
        conv = F.conv3d if self.spatial_dims == 3 else F.conv2d
        k = q.shape[1]
        span = self.window // 2
        message = conv(q, kernel.expand(k, 1, *kernel.shape), padding=span, groups=k)
        norm = conv(torch.ones_like(q[:1, :1]), kernel[None, None], padding=span)
        return message / norm

    def _slabs(self, shape: Sequence[int], batch: int) -> list[tuple[int, int]]:
        """Row ranges of the first spatial axis processed at once (all rows while gradients are needed)."""
        rows = int(shape[0])
        if torch.is_grad_enabled():
            return [(0, rows)]
        per_row = batch * math.prod(int(s) for s in shape[1:]) * self.window**self.spatial_dims * (
            self.num_classes + 3)
        step = max(1, min(rows, SLAB_ELEMENTS // max(per_row, 1)))
        return [(r, min(r + step, rows)) for r in range(0, rows, step)]

    def _neighbours(self, padded: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``(B, C, W, rows, *rest)``: the ``W = window^dims`` neighbours of each voxel of rows ``[start, stop)``.

        ``padded`` is zero-padded by ``window // 2`` on every spatial side; the window index runs over the offsets in
        C order (first axis slowest). im2col (``F.unfold``) over the last two axes, stacked over the first in 3D.
        """
        w = self.window
        b, c = padded.shape[:2]
        rows = stop - start
        inner = [s - w + 1 for s in padded.shape[3:]]
        if self.spatial_dims == 2:
            cols = F.unfold(padded[:, :, start : stop + w - 1], w)
            return cols.view(b, c, w * w, rows, *inner)
        stacked = []
        for dz in range(w):
            slab = padded[:, :, start + dz : start + dz + rows]
            cols = F.unfold(slab.reshape(b, c * rows, *slab.shape[3:]), w)
            stacked.append(cols.view(b, c, rows, w * w, *inner))
        return torch.stack(stacked, 2).transpose(3, 4).reshape(b, c, w**3, rows, *inner)

    def forward(self, logits: torch.Tensor, image: torch.Tensor,
                spacing: Sequence[float] | None = None) -> torch.Tensor:
        """Refined logits ``(B, K, *spatial)`` from unary ``logits`` and the ``(B, C, *spatial)`` image.

        Args:
            logits: Unary logits.
            image: The image features (the network's input channels, in its own units).
            spacing: Voxel size per spatial axis (positions in mm); default 1 (positions in voxels).
        """
        if logits.shape[1] != self.num_classes or logits.ndim != self.spatial_dims + 2:
            raise ValueError(f"ConvCRF for {self.num_classes} classes in {self.spatial_dims}D got logits of shape "
                             f"{tuple(logits.shape)}")
        spacing = [1.0] * self.spatial_dims if spacing is None else [float(s) for s in spacing]
        unary = torch.log_softmax(logits.float(), 1)
        image = image.float()
        full = unary.shape[2:]
        dims = self.spatial_dims
        pool = F.avg_pool3d if dims == 3 else F.avg_pool2d
        if self.blur > 1:
            image = pool(image, self.blur, ceil_mode=True)
            spacing = [s * self.blur for s in spacing]
        span = self.window // 2
        pad = [span] * (2 * dims)
        grid = torch.meshgrid(*[torch.arange(-span, span + 1, dtype=torch.float32, device=image.device) * s
                                for s in spacing], indexing="ij")
        position2 = sum(g**2 for g in grid)
        padded_image = F.pad(image, pad)
        padded_inside = F.pad(torch.ones_like(image[:, :1]), pad)
        shape = image.shape[2:]
        slabs = self._slabs(shape, image.shape[0])
        cached = None
        if len(slabs) == 1:
            cached = self._appearance(self._neighbours(padded_image, 0, shape[0]),
                                      self._neighbours(padded_inside, 0, shape[0])[:, 0], position2)
        weights = self.weights.view(2, 1, self.num_classes, *([1] * dims))
        z = unary
        for _ in range(self.iterations):
            q = torch.softmax(z, 1)
            if self.blur > 1:
                q = pool(q, self.blur, ceil_mode=True)
            padded_q = F.pad(q, pad)
            parts = []
            for start, stop in slabs:
                appearance = cached if cached is not None else self._appearance(
                    self._neighbours(padded_image, start, stop), self._neighbours(padded_inside, start, stop)[:, 0],
                    position2)
                a_msg = (self._neighbours(padded_q, start, stop) * appearance[:, None]).sum(2)
                parts.append(a_msg / appearance.sum(1)[:, None].clamp(min=1e-8))
            a_message = parts[0] if len(parts) == 1 else torch.cat(parts, 2)
            message = weights[0] * a_message + weights[1] * self._smooth(q, position2)
            if self.blur > 1:
                mode = "trilinear" if dims == 3 else "bilinear"
                up = F.interpolate(message, scale_factor=self.blur, mode=mode, align_corners=False)
                message = up[(slice(None), slice(None), *(slice(0, s) for s in full))]
            if self.compatibility is not None:
                message = message + self.compatibility(message)
            z = unary + message
        return z

    def extra_repr(self) -> str:
        """Classes, dims, window, iterations, kernel widths, blur and whether it learns."""
        sigmas = [f"{v:.3g}" for v in torch.exp(self.log_sigmas.detach()).tolist()]
        return (f"classes={self.num_classes}, dims={self.spatial_dims}, window={self.window}, "
                f"iterations={self.iterations}, sigmas(α, β, γ)={sigmas}, blur={self.blur}, "
                f"trainable={self.trainable}")


class CRFLayerModel(nn.Module):
    """Any segmentation network followed by a (trainable) :class:`ConvCRF` on its input image.

    Args:
        model: The network; its first ``image_channels`` input channels are the image the CRF's appearance kernel
            compares (later channels, such as coordinate channels, are left out).
        image_channels: Image channels of the input.
        **crf_options: :class:`ConvCRF` options (``num_classes`` and ``spatial_dims`` come from the model).
    """

    def __init__(self, model: nn.Module, image_channels: int, **crf_options: Any) -> None:
        super().__init__()
        self.model = model
        self.image_channels = int(image_channels)
        dims = int(getattr(model, "spatial_dims", 3))
        self.crf = ConvCRF(int(model.out_channels), dims, **crf_options)  # type: ignore[arg-type]
        for name in ("spatial_dims", "in_channels", "out_channels", "input_divisor", "deep_supervision_scales",
                     "loss_weights", "model_name"):
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))

    def forward(self, x: torch.Tensor) -> Any:
        """The wrapped model's output with its (first) logits refined by the CRF."""
        out = self.model(x)
        image = x[:, : self.image_channels]
        if isinstance(out, (list, tuple)):
            return type(out)([self.crf(out[0], image), *out[1:]])
        return self.crf(out, image)


def with_crf_layer(model: nn.Module, options: dict[str, Any] | None, image_channels: int) -> nn.Module:
    """``model`` wrapped in a :class:`CRFLayerModel` when ``options`` (a training config's ``crf_layer``) enable it.

    ``options`` holds ``enabled`` and :class:`ConvCRF` keyword options; ``None`` or ``enabled: false`` returns
    ``model`` unchanged. Training and prediction both call this, so a run's checkpoint loads into the same network.
    """
    if not options or not options.get("enabled"):
        return model
    kwargs = {k: v for k, v in options.items() if k != "enabled"}
    return CRFLayerModel(model, image_channels, **kwargs)


def create_run_model(entry: dict[str, Any], name: str | None, overrides: dict[str, Any] | None,
                     deep_supervision: bool, *, extra_in_channels: int = 0,
                     crf_layer: dict[str, Any] | None = None) -> nn.Module:
    """The network of a training run: the plans' model with ``extra_in_channels`` more inputs, then the CRF layer.

    Training (:func:`medseg.training.trainer.build_model`) and prediction (:func:`medseg.inference.predictor.load_fold`)
    both build a run's network with this function, so its checkpoint always fits.

    Args:
        entry: The plans configuration's ``model`` entry.
        name: Another registry model, or ``None``.
        overrides: ``model_kwargs``.
        deep_supervision: Build deep-supervision heads where supported.
        extra_in_channels: Input channels beyond the image's (coordinate channels).
        crf_layer: The run's ``crf_layer`` settings (``enabled`` and :class:`ConvCRF` options).
    """
    from medseg.models.registry import create_model_from_plans

    image_channels = int(entry["in_channels"])
    widened = dict(entry, in_channels=image_channels + int(extra_in_channels))
    model = create_model_from_plans(widened, name, overrides, deep_supervision)
    return with_crf_layer(model, crf_layer, image_channels)
