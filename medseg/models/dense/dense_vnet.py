"""Dense V-Network for multi-organ segmentation of abdominal CT (Gibson et al., 2018).

Paper: E. Gibson, F. Giganti, Y. Hu, E. Bonmati, S. Bandula, K. Gurusamy, B. Davidson, S. P. Pereira,
M. J. Clarkson, D. C. Barratt, "Automatic Multi-organ Segmentation on Abdominal CT with Dense V-networks",
IEEE Transactions on Medical Imaging 37(8), 1822-1834 (2018), methods section. Facts of the layer widths are
checked against the authors' NiftyNet implementation (``niftynet/network/dense_vnet.py``, hyper-parameters
``n_input_channels=(24, 24, 24)``, ``n_dense_channels=(4, 8, 16)``, ``n_seg_channels=(12, 24, 24)``, five, ten and
ten layers, ``prior_size=12``, ``p_channels_selected=0.5``).

Layout (all 3D, convolutions "same" and followed by batch norm and ReLU unless stated):

* The input is average-pooled (3x3x3, stride 2) and batch-normalised: the down-sampled image, which is both fed to
  the first stack and concatenated with the skip features before the classifier. In parallel a 5x5x5 convolution
  with stride 2 and batch norm (no activation in NiftyNet) gives 24 initial features.
* Three dense feature stacks at 1/2, 1/4 and 1/8 resolution, of 5, 10 and 10 3x3x3 layers adding 4, 8 and 16
  channels each (dense connectivity: each layer sees the stack input and all earlier layers' outputs). After each
  stack a 3x3x3 convolution gives the skip features (12, 24, 24 channels) and, for the first two stacks, a 3x3x3
  convolution with stride 2 gives 24 channels for the next stack.
* The skip features are upsampled (trilinear) to 1/2 resolution, concatenated with the down-sampled image, and a
  3x3x3 convolution (bias, no norm, no activation) gives the class logits.
* Spatial prior: a learned 12x12x12 map per class, upsampled to the logits' grid and added to the logits.
* The logits are upsampled (trilinear) to the input size.
* Batch-wise spatial dropout: during training each dense-stack layer keeps a random half of its output channels,
  the same channels for every sample of the batch and every voxel (the last layer of each stack is not dropped,
  as in NiftyNet). NiftyNet implements it as a channel-sparse convolution that skips the dropped channels to save
  memory; we compute all channels and zero the dropped ones, which gives the same values. We rescale the kept
  channels by ``1 / p_keep`` (inverted dropout) so that evaluation needs no rescaling.

NiftyNet's defaults switch the batch-wise dropout and the prior off (``use_bdo=False``, ``use_prior=False``); ours
switch them on, as the paper describes the network with both. Its dense stacks use undilated convolutions (its
``dilation_rates`` are all 1 and other values are not implemented), and so do ours.

Choices of ours: the prior is stored as log-probabilities initialised at 0 (NiftyNet stores probabilities
initialised at 1 and takes the log after resampling, which can become undefined for non-positive values); the two
are equal at initialisation. NiftyNet's in-network affine augmentation is data augmentation, which belongs to the
pipeline's transforms, and is left out.

We write our own implementation: MONAI has no Dense V-Net. Paper configuration: 1 input channel (CT), 9 outputs
(8 organs and background), 144x144x144 input. We found no parameter count in the paper, so the registry records
``None``; our count for that configuration is 894,066.
Each spatial size must be a multiple of 8 (three stride-2 steps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, DenseBlock, NormSpec, make_conv, make_norm
from medseg.models.registry import PaperConfig, register_model

__all__ = ["BatchwiseSpatialDropout", "DenseVNet"]


class BatchwiseSpatialDropout(nn.Module):
    """Drop whole channels, the same ones for the whole batch (Gibson et al., 2018, "batch-wise spatial dropout").

    Shapes: ``(B, C, *spatial)`` to the same shape. In training, ``round(p_keep * C)`` (at least one) channels are
    kept at random and scaled by ``C / n_kept``; the others are zero. In evaluation the input passes unchanged.

    Args:
        p_keep: Fraction of channels kept (paper: 0.5); 1 disables the dropout.
    """

    def __init__(self, p_keep: float = 0.5) -> None:
        super().__init__()
        if not 0 < p_keep <= 1:
            raise ModelError(f"BatchwiseSpatialDropout: p_keep must be in (0, 1], got {p_keep}")
        self.p_keep = p_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zero a random subset of channels of ``x`` (training only)."""
        if not self.training or self.p_keep >= 1:
            return x
        channels = x.shape[1]
        n_keep = max(1, round(self.p_keep * channels))
        keep = torch.randperm(channels, device=x.device)[:n_keep]
        mask = torch.zeros(channels, device=x.device, dtype=x.dtype)
        mask[keep] = channels / n_keep
        return x * mask.view(1, channels, *([1] * (x.dim() - 2)))


@register_model(
    "dense_vnet",
    family="dense",
    spatial_dims=(3,),
    paper_title="Automatic Multi-organ Segmentation on Abdominal CT with Dense V-networks",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=9,
        kwargs={},
        params=None,
        source="IEEE TMI 37(8) 2018, methods section (no parameter count found); widths as in NiftyNet's "
               "dense_vnet",
    ),
    divisor=8,
    test_kwargs={"input_channels": (4, 4), "dense_channels": (2, 2, 2), "dense_layers": (2, 2, 2),
                 "skip_channels": (4, 4, 4), "prior_size": 4},
)
class DenseVNet(SegmentationModel):
    """Dense V-Network of Gibson et al. (IEEE TMI 2018), 3D.

    Shapes: ``(B, in_channels, D, H, W)`` to ``(B, out_channels, D, H, W)``; each spatial size a multiple of 8.

    Args:
        spatial_dims: Must be 3.
        in_channels: Input channels (paper: 1, CT).
        out_channels: Output channels (paper: 9, eight organs and background).
        input_channels: Channels of the initial strided 5x5x5 convolution and of the strided convolutions after the
            first and second stacks (paper: 24, 24; the first value is the initial convolution, the second the
            two downsampling convolutions).
        dense_channels: Channels each layer adds in the three dense stacks (paper: 4, 8, 16).
        dense_layers: Layers of the three dense stacks (paper: 5, 10, 10).
        skip_channels: Channels of the skip convolution after each stack (paper: 12, 24, 24).
        p_keep: Fraction of channels kept by the batch-wise spatial dropout (paper: 0.5).
        prior_size: Side of the learned spatial prior (paper: 12); 0 disables the prior.
        norm: Normalisation after each convolution (paper: batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        input_channels: Sequence[int] = (24, 24),
        dense_channels: Sequence[int] = (4, 8, 16),
        dense_layers: Sequence[int] = (5, 10, 10),
        skip_channels: Sequence[int] = (12, 24, 24),
        p_keep: float = 0.5,
        prior_size: int = 12,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if spatial_dims != 3:
            raise ModelError(f"{self.model_name}: the Dense V-Net is 3D only, got spatial_dims={spatial_dims}")
        if not len(dense_channels) == len(dense_layers) == len(skip_channels) == 3 or len(input_channels) != 2:
            raise ModelError(f"{self.model_name}: dense_channels, dense_layers and skip_channels need 3 values and "
                             f"input_channels 2")
        if prior_size < 0:
            raise ModelError(f"{self.model_name}: prior_size must be >= 0, got {prior_size}")
        relu = ("relu", {"inplace": True})
        self.image_pool = nn.AvgPool3d(3, stride=2, padding=1, count_include_pad=False)
        self.image_norm = make_norm(norm, 3, in_channels) or nn.Identity()
        self.initial_conv = ConvNormAct(3, in_channels, input_channels[0], 5, 2, bias=False, norm=norm, act=None)
        self.stacks = nn.ModuleList()
        self.skip_convs = nn.ModuleList()
        self.down_convs = nn.ModuleList()
        channels = in_channels + input_channels[0]
        for i in range(3):
            n, k = int(dense_layers[i]), int(dense_channels[i])
            stack = DenseBlock(3, channels, k, n, make_layer=self._stack_layer(channels, k, n, p_keep, norm))
            self.stacks.append(stack)
            self.skip_convs.append(ConvNormAct(3, stack.out_channels, skip_channels[i], 3, bias=False, norm=norm,
                                               act=relu))
            if i < 2:
                self.down_convs.append(ConvNormAct(3, stack.out_channels, input_channels[1], 3, 2, bias=False,
                                                   norm=norm, act=relu))
                channels = input_channels[1]
        self.classifier = make_conv(3, in_channels + sum(skip_channels), out_channels, 3)
        self.prior = nn.Parameter(torch.zeros(1, out_channels, *([prior_size] * 3))) if prior_size else None
        self.input_divisor = (8, 8, 8)

    @staticmethod
    def _stack_layer(
        stack_in: int, growth: int, n_layers: int, p_keep: float, norm: NormSpec
    ) -> Callable[[int, int], nn.Module]:
        """Factory of the dense-stack layers: conv-BN-ReLU, then batch-wise dropout except on the last layer."""

        def make(cin: int, k: int) -> nn.Module:
            last = (cin - stack_in) // growth == n_layers - 1  # NiftyNet drops nothing on a stack's last layer
            conv = ConvNormAct(3, cin, k, 3, bias=False, norm=norm, act=("relu", {"inplace": True}))
            return conv if last else nn.Sequential(conv, BatchwiseSpatialDropout(p_keep))

        return make

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, D, H, W)`` into ``(B, out_channels, D, H, W)`` logits."""
        self.check_input(x)
        size = x.shape[2:]
        image = self.image_norm(self.image_pool(x))
        half = image.shape[2:]
        down = torch.cat((image, self.initial_conv(x)), dim=1)
        features = [image]
        for i, (stack, skip_conv) in enumerate(zip(self.stacks, self.skip_convs, strict=True)):
            stacked = stack(down)
            skip = skip_conv(stacked)
            features.append(skip if skip.shape[2:] == half else F.interpolate(skip, size=half, mode="trilinear"))
            if i < len(self.down_convs):
                down = self.down_convs[i](stacked)
        logits = self.classifier(torch.cat(features, dim=1))
        if self.prior is not None:
            logits = logits + F.interpolate(self.prior, size=half, mode="trilinear")
        return F.interpolate(logits, size=size, mode="trilinear")
