"""3D RoI-aware U-Net ("3D RU-Net") for colorectal tumour segmentation (Huang et al., 2019), 3D and 2D.

Paper: Y.-J. Huang, Q. Dou et al., "3D RoI-aware U-Net for Accurate and Efficient Colorectal Tumor Segmentation",
arXiv:1806.10342 (2018, revised 2019; later in IEEE Transactions on Cybernetics).
Official code: huangyjhust/3D-RU-Net, ``model.py`` (``RU_Net``) with the configuration of ``train.py``
(``BASE_CHANNELS=48``, two classes, stage dilations ``RF112 = [1, 2, 2]``).

Layout:

* Global Image Encoder on the whole volume: three residual blocks. A block is conv1 -> instance norm -> ReLU ->
  conv2 -> IN -> ReLU -> conv3 -> IN, plus conv1's output, -> ReLU (convolutions with bias, instance norm without
  affine parameters). Level 1: kernel (1, 3, 3), 48 channels; level 2: (1, 2, 2) max pooling, 3x3x3, 96 channels;
  level 3: 2x2x2 max pooling, 3x3x3, 192 channels. Dilation ``(1, d, d)`` in-plane per level (1, 2, 2).
* RoI localisation: a 1x1x1 convolution on level 3 gives coarse class logits at stride (2, 4, 4). For each
  foreground class, the softmax probability is min-max normalised, thresholded at 0.5 and split into connected
  components (scikit-image's connectivity 2 in the code: 18-neighbourhood in 3D, 8 in 2D); each component's bounding
  box, enlarged by (1, 2, 2) coarse voxels and clipped to the volume, is a region of interest (RoI). (The code clips
  the end one voxel short of the border; we keep the border voxel.) The largest ``max_rois`` components are kept (2
  in training, 10 at test time, as in the code); with none, a single one-voxel RoI at the origin.
* Local Region Decoder, run on each RoI only: the RoI is cropped from the three encoder levels (at their strides)
  and decoded by two "up" steps: (bi/tri)linear up-sampling by the pooling factor, a 1x1x1 convolution with ReLU to
  the skip's width, concatenation with the cropped skip, and a residual block (3x3x3 then (1, 3, 3) kernels). A
  1x1x1 convolution gives the region logits at full resolution inside the RoI.

Full-size logits, as the model contract requires: the decoder's RoI logits are pasted into a full-size canvas (the
mean where RoIs overlap, as the code's ``Predict`` averages them); outside every RoI the canvas holds the
localisation logits, resampled (bi/tri)linearly to full resolution. So the output is the decoder's fine
segmentation inside the RoIs and the encoder's coarse one elsewhere, and both parts receive gradients. In training
with ``deep_supervision=True`` forward returns ``[full_size_logits, localisation_logits]``, the second at stride
(2, 4, 4) for the localisation loss of the paper (the code's ``LossG``; both weights 1 as in ``train.py``).

Left out: the code's second decoder head, which predicts tumour contours for a multi-task Dice loss and needs contour
labels (a 1x1x1 convolution, 98 parameters). The RoI selection uses the network's own prediction and is not
differentiable (as in the paper); it runs on the CPU through ``scipy.ndimage``.

Paper configuration: 3D, one CT/MR channel, two classes. Parameter figure: 4,255,782, counted with the official
``model.py`` (``RU_Net``) at that configuration, contour head included; ours is 4,255,684 (98 fewer: the contour
head). Each spatial size must be a multiple of the pooling product, (2, 4, 4) in 3D and 4 in 2D.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.layers import Conv
from scipy import ndimage
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import as_tuple, make_act, make_conv, make_norm, make_pool, resample_linear
from medseg.models.registry import PaperConfig, register_model

__all__ = ["RoIAwareUNet3D", "RoIResBlock", "find_rois"]

RELU = ("relu", {"inplace": True})

Box = tuple[tuple[int, int], ...]


class RoIResBlock(nn.Module):
    """3D RU-Net residual block: three convolutions with instance norm; conv1's output is the shortcut.

    ``y = relu(IN(conv3(relu(IN(conv2(relu(IN(conv1(x)))))))) + conv1(x))``. Shapes: ``(B, C_in, *spatial)`` to
    ``(B, C_out, *spatial)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: Kernel per axis (e.g. (1, 3, 3) or 3).
        dilation: In-plane dilation (the last two axes; the slice axis of a 3D kernel is not dilated).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 dilation: int = 1) -> None:
        super().__init__()
        k = as_tuple(kernel_size, spatial_dims)
        dil = (1,) * (spatial_dims - 2) + (dilation, dilation)
        pad = tuple((ki - 1) // 2 * di for ki, di in zip(k, dil, strict=True))

        def conv(cin: int) -> nn.Module:
            return Conv[Conv.CONV, spatial_dims](cin, out_channels, kernel_size=k, padding=pad, dilation=dil)

        self.conv1, self.conv2, self.conv3 = conv(in_channels), conv(out_channels), conv(out_channels)
        self.norm1, self.norm2, self.norm3 = (make_norm("instance", spatial_dims, out_channels) for _ in range(3))
        self.act = make_act(RELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C_in, *spatial)`` to ``(B, C_out, *spatial)``."""
        x1 = self.conv1(x)
        y = self.act(self.norm1(x1))
        y = self.act(self.norm2(self.conv2(y)))
        return self.act(self.norm3(self.conv3(y)) + x1)


class _UpStep(nn.Module):
    """Up-sample by ``scale``, 1x1 conv + ReLU to the skip's width, concatenate the skip, residual block."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, scale: Sequence[int],
                 kernel_size: int | Sequence[int], dilation: int) -> None:
        super().__init__()
        self.scale = tuple(scale)
        self.reduce = make_conv(spatial_dims, in_channels, out_channels, 1)
        self.act = make_act(RELU)
        self.fuse = RoIResBlock(spatial_dims, 2 * out_channels, out_channels, kernel_size, dilation)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = resample_linear(x, [s * f for s, f in zip(x.shape[2:], self.scale, strict=True)])
        return self.fuse(torch.cat([skip, self.act(self.reduce(x))], dim=1))


def find_rois(probabilities: torch.Tensor, margin: Sequence[int], max_rois: int) -> list[Box]:
    """Regions of interest of one sample from its coarse class probabilities ``(C, *coarse)`` (no gradient).

    Per foreground class (all classes but 0; the only class when ``C == 1``): min-max normalise, threshold at 0.5,
    label connected components (neighbours up to two orthogonal steps away: 18 in 3D, 8 in 2D), take each component's
    bounding box enlarged by ``margin`` and clipped, keep the ``max_rois`` largest. Returns ``(start, stop)`` per axis
    for each RoI, at least one.
    """
    probs = probabilities.detach().float().cpu().numpy()
    shape = probs.shape[1:]
    structure = ndimage.generate_binary_structure(len(shape), min(2, len(shape)))
    boxes: list[Box] = []
    for c in range(1, probs.shape[0]) if probs.shape[0] > 1 else (0,):
        heat = probs[c]
        lo, hi = float(heat.min()), float(heat.max())
        if hi <= lo:
            continue
        labels, n = ndimage.label((heat - lo) / (hi - lo) >= 0.5, structure=structure)
        if n == 0:
            continue
        areas = np.bincount(labels.ravel())[1:]
        slices = ndimage.find_objects(labels)
        for idx in np.argsort(-areas, kind="stable")[:max_rois]:
            boxes.append(tuple((max(sl.start - m, 0), min(sl.stop + m, size))
                               for sl, m, size in zip(slices[idx], margin, shape, strict=True)))
    return boxes or [tuple((0, 1) for _ in shape)]


def _window(box: Box, factor: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(a * f, b * f) for (a, b), f in zip(box, factor, strict=True))


def _crop(t: torch.Tensor, i: int, box: Box, factor: Sequence[int]) -> torch.Tensor:
    """Sample ``i`` of ``t`` cropped to ``box`` (coarse coordinates) scaled by ``factor``."""
    return t[(slice(i, i + 1), slice(None), *_window(box, factor))]


@register_model(
    "roi_unet3d",
    family="volumetric",
    spatial_dims=(2, 3),
    paper_title="3D RoI-aware U-Net for Accurate and Efficient Colorectal Tumor Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        kwargs={},
        params=4_255_782,
        source="official code huangyjhust/3D-RU-Net, model.py RU_Net with train.py's Config (BASE_CHANNELS=48, "
               "2 classes, RF112 dilations), counted with that code (its 98-parameter contour head included)",
    ),
    divisor={2: 4, 3: 4},
    deep_supervision=True,
    test_kwargs={"base_channels": 2},
)
class RoIAwareUNet3D(SegmentationModel):
    """3D RU-Net (Huang et al.): whole-volume encoder, RoI localisation, RoI-only decoder; full-size logits out.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` (see the module docstring for how the
    RoI predictions fill a full-size output); with ``deep_supervision=True`` in training, ``[full, localisation]``
    where the localisation logits are ``(B, out_channels, *spatial / input_divisor)``. Each spatial size must be a
    multiple of :attr:`input_divisor`.

    Args:
        spatial_dims: 3 (paper) or 2.
        in_channels: Input channels (paper: 1).
        out_channels: Classes including background (paper: 2).
        base_channels: Channels of level 1; levels 2 and 3 have 2x and 4x (paper code: 48).
        dilations: In-plane dilation of the three levels (paper code ``RF112``: 1, 2, 2).
        pool_sizes: The two max-pooling sizes (3D default (1, 2, 2) and (2, 2, 2); 2D default 2 and 2).
        max_rois_train: RoIs kept per foreground class in training (code: 2).
        max_rois_test: RoIs kept per foreground class in evaluation (code: 10).
        roi_margin: Enlargement of each RoI per axis in coarse voxels (code: (1, 2, 2); 2D default (2, 2)).
        deep_supervision: Also return the localisation logits in training.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        base_channels: int = 48,
        dilations: Sequence[int] = (1, 2, 2),
        pool_sizes: Sequence[int | Sequence[int]] | None = None,
        max_rois_train: int = 2,
        max_rois_test: int = 10,
        roi_margin: Sequence[int] | None = None,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if pool_sizes is None:
            pool_sizes = ((1, 2, 2), (2, 2, 2)) if spatial_dims == 3 else (2, 2)
        pools = [as_tuple(p, spatial_dims) for p in pool_sizes]
        dil = [int(d) for d in dilations]
        if len(pools) != 2 or len(dil) != 3 or base_channels < 1 or min(max_rois_train, max_rois_test) < 1:
            raise ModelError(f"{self.model_name}: needs two pool sizes, three dilations, base_channels >= 1 and "
                             f"max_rois >= 1, got {pools}, {dil}, {base_channels}")
        self.margin = tuple(roi_margin) if roi_margin is not None else ((1, 2, 2) if spatial_dims == 3 else (2, 2))
        if len(self.margin) != spatial_dims:
            raise ModelError(f"{self.model_name}: roi_margin needs {spatial_dims} values, got {self.margin}")
        b = base_channels
        first_kernel = (1, 3, 3) if spatial_dims == 3 else 3
        self.pools = pools
        self.inc = RoIResBlock(spatial_dims, in_channels, b, first_kernel, dil[0])
        self.pool1 = make_pool("max", spatial_dims, pools[0])
        self.down1 = RoIResBlock(spatial_dims, b, 2 * b, 3, dil[1])
        self.pool2 = make_pool("max", spatial_dims, pools[1])
        self.down2 = RoIResBlock(spatial_dims, 2 * b, 4 * b, 3, dil[2])
        self.loc_head = make_conv(spatial_dims, 4 * b, out_channels, 1)
        self.up1 = _UpStep(spatial_dims, 4 * b, 2 * b, pools[1], 3, dil[1])
        self.up2 = _UpStep(spatial_dims, 2 * b, b, pools[0], first_kernel, dil[0])
        self.region_head = make_conv(spatial_dims, b, out_channels, 1)
        self.max_rois_train, self.max_rois_test = max_rois_train, max_rois_test
        self.input_divisor = tuple(p * q for p, q in zip(*pools, strict=True))
        self.deep_supervision = deep_supervision
        if deep_supervision:
            self.deep_supervision_scales = [(1,) * spatial_dims, self.input_divisor]
            self.loss_weights = (1.0, 1.0)
        self.last_rois: list[list[Box]] = []

    def localisation_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities of the localisation logits (softmax; sigmoid for a single output channel)."""
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Full-size logits ``(B, out_channels, *spatial)``; ``[full, localisation]`` in training with supervision.

        The RoIs used are kept in :attr:`last_rois` (per sample, ``(start, stop)`` per axis at the localisation
        stride).
        """
        self.check_input(x)
        x1 = self.inc(x)
        x2 = self.down1(self.pool1(x1))
        x3 = self.down2(self.pool2(x2))
        loc = self.loc_head(x3)
        size = x.shape[2:]
        base = resample_linear(loc, size)
        max_rois = self.max_rois_train if self.training else self.max_rois_test
        r2, r1 = self.pools[1], self.input_divisor
        with torch.no_grad():
            probs = self.localisation_probabilities(loc)
        outputs, self.last_rois = [], []
        for i in range(x.shape[0]):
            rois = find_rois(probs[i], self.margin, max_rois)
            self.last_rois.append(rois)
            total = torch.zeros_like(base[i:i + 1])
            count = torch.zeros((1, 1, *size), device=x.device, dtype=base.dtype)
            for box in rois:
                region = self.region_head(self.up2(self.up1(_crop(x3, i, box, (1,) * len(size)),
                                                            _crop(x2, i, box, r2)), _crop(x1, i, box, r1)))
                pad = [p for (a, b), s, n in zip(reversed(box), reversed(r1), reversed(size), strict=True)
                       for p in (a * s, n - b * s)]
                total = total + nn.functional.pad(region, pad)
                count[(slice(None), slice(None), *_window(box, r1))] += 1
            outputs.append(torch.where(count > 0, total / count.clamp(min=1), base[i:i + 1]))
        full = torch.cat(outputs, dim=0)
        if self.deep_supervision and self.training:
            return [full, loc]
        return full
