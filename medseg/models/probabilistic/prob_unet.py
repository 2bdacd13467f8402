"""Probabilistic U-Net (Kohl et al., 2018), 2D as in the paper and 3D with the same layout.

Paper: S. A. A. Kohl, B. Romera-Paredes, C. Meyer, J. De Fauw, J. R. Ledsam, K. H. Maier-Hein, S. M. A. Eslami,
D. J. Rezende, O. Ronneberger, "A Probabilistic U-Net for Segmentation of Ambiguous Images", NeurIPS 2018
(arXiv:1806.05034), Section 2, Fig. 1 and Appendix.

Layout (Fig. 1 and the first author's code, ``SimonKohl/probabilistic_unet``, ``model/probabilistic_unet.py``):

- a U-Net whose scales each hold ``convs_per_block`` 3x3 convolutions + ReLU (no normalisation), with 2x average
  pooling before every scale but the first and, in the decoder, (bi/tri)linear up-sampling, concatenation with the
  skip and ``convs_per_block`` 3x3 convolutions + ReLU; it ends with ``features[0]`` feature maps at full
  resolution, without a classifier;
- a **prior net** ``P(z | x)`` and a **posterior net** ``Q(z | x, y)``: each the same encoder (the posterior's input
  is the image concatenated with the one-hot label shifted by -0.5), a global mean over space and a 1x1 convolution
  to the mean and log standard deviation of an axis-aligned Gaussian over a ``latent_dim``-dimensional latent (6);
- ``f_comb``: the latent broadcast over space and concatenated with the U-Net's features, ``fcomb_convs`` 1x1
  convolutions + ReLU (``features[0]`` channels) and a 1x1 convolution to the classes: the latent is injected at the
  last layers only, so a new sample costs three 1x1 convolutions.

Training (Eq. 4): minimise ``CE(y, f_comb(U-Net(x), z_q)) + β · KL(Q(z | x, y) ‖ P(z | x))`` with ``z_q`` a posterior
sample (β = 1). :meth:`ProbabilisticUNet.training_loss` returns it divided by the voxels of an item (the
cross-entropy summed over the image, the KL and β as in the paper; the constant factor keeps the loss on the scale
of the other losses, so the trainer's learning rate and gradient clipping apply unchanged). Prediction: eval mode
decodes the prior's mean; :func:`medseg.models.sampling.sample_mode` decodes prior samples.

Parameters at the paper's LIDC configuration (2D, 1 input channel, 2 classes, features 32, 64, 128, 192, three
convolutions per block, latent 6, three 1x1 convolutions): 4,999,770 — U-Net 2,260,128, f_comb 3,426, prior net
1,367,820, posterior net 1,368,396. The paper's text states no parameter count; the figure is tallied from the
layer definitions of the first author's code (``ProbUNet`` in ``SimonKohl/probabilistic_unet``, whose own config is
Cityscapes') at that configuration, and ours matches it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ModelError
from medseg.models.blocks import StackedConvNormAct, make_conv, make_pool
from medseg.models.probabilistic._latent import LatentOutput, check_target, gaussian_kl, one_hot_target
from medseg.models.registry import PaperConfig, register_model
from medseg.models.sampling import LatentSegmentationModel

__all__ = ["ProbabilisticUNet"]

_RELU = ("relu", {"inplace": True})


class _Encoder(nn.Module):
    """The VGG-like encoder of the U-Net and of the prior and posterior nets: the features of every scale."""

    def __init__(self, spatial_dims: int, in_channels: int, features: Sequence[int], convs: int) -> None:
        super().__init__()
        channels = [in_channels, *features]
        self.blocks = nn.ModuleList(
            StackedConvNormAct(convs, spatial_dims, channels[i], channels[i + 1], 3, norm=None, act=_RELU)
            for i in range(len(features))
        )
        self.pool = make_pool("avg", spatial_dims, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C_in, *S)`` to the features of each scale, ``(B, features[i], *S / 2^i)``."""
        out = []
        for i, block in enumerate(self.blocks):
            x = block(self.pool(x) if i else x)
            out.append(x)
        return out


class _Decoder(nn.Module):
    """The U-Net's decoder: up-sample, concatenate the skip, convolutions; ends with ``features[0]`` channels."""

    def __init__(self, spatial_dims: int, features: Sequence[int], convs: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            StackedConvNormAct(convs, spatial_dims, features[i + 1] + features[i], features[i], 3, norm=None,
                               act=_RELU)
            for i in range(len(features) - 2, -1, -1)
        )
        self.mode = {2: "bilinear", 3: "trilinear"}[spatial_dims]

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """Features of every scale to ``(B, features[0], *S)``."""
        x = skips[-1]
        for block, skip in zip(self.blocks, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[2:], mode=self.mode, align_corners=True)
            x = block(torch.cat([x, skip], 1))
        return x


class _ConvGaussian(nn.Module):
    """Prior or posterior net: encoder, global mean, 1x1 convolution to ``(μ, log σ)`` of the latent."""

    def __init__(self, spatial_dims: int, in_channels: int, features: Sequence[int], convs: int,
                 latent_dim: int) -> None:
        super().__init__()
        self.encoder = _Encoder(spatial_dims, in_channels, features, convs)
        self.head = make_conv(spatial_dims, features[-1], 2 * latent_dim, 1)
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, *S)`` to the mean and log standard deviation, each ``(B, latent_dim)``."""
        encoding = self.encoder(x)[-1]
        pooled = encoding.mean(dim=tuple(range(2, encoding.dim())), keepdim=True)
        out = self.head(pooled).flatten(1)
        return out[:, : self.latent_dim], out[:, self.latent_dim :]


class _Combine(nn.Module):
    """``f_comb``: the latent tiled over space, concatenated with the features, 1x1 convolutions, the classifier."""

    def __init__(self, spatial_dims: int, channels: int, latent_dim: int, convs: int, out_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = channels + latent_dim
        for _ in range(convs):
            layers += [make_conv(spatial_dims, c, channels, 1), nn.ReLU(inplace=True)]
            c = channels
        layers.append(make_conv(spatial_dims, c, out_channels, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` features and ``(B or 1, L)`` latents to ``(B, C_out, *S)`` logits."""
        tiled = z.to(features.dtype).reshape(*z.shape, *([1] * (features.dim() - 2)))
        tiled = tiled.expand(features.shape[0], -1, *features.shape[2:])
        return self.layers(torch.cat([features, tiled], 1))


@register_model(
    "prob_unet",
    family="probabilistic",
    spatial_dims=(2, 3),
    paper_title="A Probabilistic U-Net for Segmentation of Ambiguous Images",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=1,
        out_channels=2,
        kwargs={},
        params=4_999_770,
        source="no figure in the paper (arXiv:1806.05034); counted from the first author's code "
               "SimonKohl/probabilistic_unet model/probabilistic_unet.py (ProbUNet) at the paper's LIDC "
               "configuration: num_channels [32, 64, 128, 192], 3 convs per block, latent_dim 6, 3 1x1 convs, "
               "1 input channel, 2 classes",
    ),
    divisor=8,
    test_kwargs={"features": (8, 16, 16, 16)},
)
class ProbabilisticUNet(LatentSegmentationModel):
    """Probabilistic U-Net of Kohl et al. (NeurIPS 2018): a U-Net whose last 1x1 layers decode a latent sample.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)`` logits, each spatial size a multiple of
    ``2**(len(features) - 1)``. Eval mode decodes the prior's mean (inside
    :func:`~medseg.models.sampling.sample_mode`, a seeded prior sample); training mode without a label decodes a
    fresh prior sample per item; ``model(x, target=y)`` decodes the posterior's latent and returns a
    :class:`~medseg.models.probabilistic._latent.LatentOutput` for :meth:`training_loss`.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Output channels (classes; the posterior sees the label one-hot over them).
        features: Channels of the U-Net's scales, shared by the prior and posterior nets (paper, LIDC: 32, 64, 128,
            192).
        convs_per_block: 3x3 convolutions per scale (3).
        latent_dim: Dimensions of the latent space (6).
        fcomb_convs: 1x1 convolutions + ReLU of ``f_comb`` before its classifier (3).
        beta: Weight of the KL term of the ELBO (1).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features: Sequence[int] = (32, 64, 128, 192),
        convs_per_block: int = 3,
        latent_dim: int = 6,
        fcomb_convs: int = 3,
        beta: float = 1.0,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        features = tuple(int(f) for f in features)
        if len(features) < 2 or min(features) < 1:
            raise ModelError(f"{self.model_name}: features needs at least 2 positive levels, got {features}")
        for what, value in (("convs_per_block", convs_per_block), ("latent_dim", latent_dim)):
            if int(value) < 1:
                raise ModelError(f"{self.model_name}: {what} must be at least 1, got {value!r}")
        if float(beta) < 0:
            raise ModelError(f"{self.model_name}: beta must be non-negative, got {beta!r}")
        self.beta = float(beta)
        self.latent_dim = int(latent_dim)
        self.encoder = _Encoder(spatial_dims, in_channels, features, convs_per_block)
        self.decoder = _Decoder(spatial_dims, features, convs_per_block)
        self.combine = _Combine(spatial_dims, features[0], self.latent_dim, int(fcomb_convs), out_channels)
        self.prior = _ConvGaussian(spatial_dims, in_channels, features, convs_per_block, self.latent_dim)
        self.posterior = _ConvGaussian(spatial_dims, in_channels + out_channels, features, convs_per_block,
                                       self.latent_dim)
        self.input_divisor = (2 ** (len(features) - 1),) * spatial_dims

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor | LatentOutput:
        """Logits of a prior mean or sample, or with ``target`` the posterior reconstruction and the KL."""
        self.check_input(x)
        features = self.decoder(self.encoder(x))
        mu_p, log_sigma_p = self.prior(x)
        if target is not None:
            target = check_target(target, x, self.model_name)
            seg = one_hot_target(target, self.out_channels, x.dtype) - 0.5
            mu_q, log_sigma_q = self.posterior(torch.cat([x, seg], 1))
            z = mu_q + torch.exp(log_sigma_q) * torch.randn_like(mu_q) if self.training else mu_q
            kl = gaussian_kl(mu_q, log_sigma_q, mu_p, log_sigma_p).sum(1)
            return LatentOutput(self.combine(features, z), [kl])
        if self.sampling:
            z = mu_p + torch.exp(log_sigma_p) * self.latent_noise((1, self.latent_dim), mu_p)
        elif self.training:
            z = mu_p + torch.exp(log_sigma_p) * torch.randn_like(mu_p)
        else:
            z = mu_p
        return self.combine(features, z)

    def training_loss(self, output: LatentOutput, target: torch.Tensor) -> torch.Tensor:
        """The negative ELBO per voxel: ``(Σ_voxels CE + β · KL) / voxels``, averaged over the batch (float32)."""
        target = check_target(target, output.logits, self.model_name)
        ce = F.cross_entropy(output.logits.float(), target[:, 0], reduction="none").flatten(1)
        kl = torch.stack([k.float() for k in output.kl]).sum(0)
        return (ce.sum(1) + self.beta * kl).mean() / ce.shape[1]
