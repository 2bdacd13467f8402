"""H-DenseUNet: hybrid 2D/3D densely connected U-Net for liver and tumour segmentation (Li et al., 2018).

Paper: X. Li, H. Chen, X. Qi, Q. Dou, C.-W. Fu, P.-A. Heng, "H-DenseUNet: Hybrid Densely Connected UNet for Liver
and Tumor Segmentation from CT Volumes", IEEE Transactions on Medical Imaging 37(12), 2663-2674 (2018)
(arXiv:1709.07330), methods section and architecture table. Layer facts (widths, strides, dropout) are from the authors'
Keras code (``xmengli/H-DenseUNet``: ``denseunet.py`` for the 2D DenseUNet, ``hybridnet.py`` for the 3D part and the
hybrid model).

Layout:

* Input: a CT slab ``(B, C, D, H, W)`` (paper: ``C = 1``, 12 slices of 224x224). **How the 2D part sees slices**:
  for every slice ``d`` the three adjacent slices ``d - 1, d, d + 1`` (the edge slice repeated at both ends) are
  stacked as channels, giving ``B * D`` images of ``3 * C`` channels.
* 2D DenseUNet-167 on those images: the DenseNet-161 encoder (:class:`~medseg.models.dense.densenet.DenseNetEncoder`,
  growth rate 48, blocks 6, 12, 36, 24, 96 initial features, compression 0.5) and a decoder of five upsampling
  layers (2x nearest upsampling, element-wise sum with the encoder feature of the same resolution, 3x3 convolution,
  BN, ReLU) with 768, 384, 96, 96 and 64 channels; the deepest skip (2112 maps) is brought to the 2208
  upsampled maps by a 1x1 convolution, the last upsampling layer has no skip and a dropout of 0.3; a 1x1 classifier
  gives the 2D scores. 167 convolutions in all.
* The 2D features (64 maps) and scores are stacked back into volumes. The 3D DenseUNet-65 sees the input slab
  concatenated with the 2D scores (``C + out_channels`` channels): a 7x7x7 convolution with stride 2, 3x3x3 max
  pooling with stride 2, dense blocks of 3, 4, 12 and 8 bottleneck layers with growth rate 32, transitions that
  pool in-plane only (2x2x1), and five upsampling layers (no skip connections in the authors' code) with 504, 224,
  192, 96 and 64 channels, upsampling 2x in-plane for the first three and in all axes for the last two.
* Hybrid feature fusion (HFF): the 3D features and the 2D features are summed, then a 3x3x3 convolution (64),
  dropout 0.3, BN, ReLU and a 1x1x1 classifier give the output.

The authors' ``hybridnet.py`` rebuilds the 2D network without the skip sums (and without ``line0``); we keep the
DenseUNet of ``denseunet.py`` and of the paper (U-Net connections; 167 layers counting ``line0``), whose weights
the authors train first and load into the hybrid model.

Choices of ours: the authors' code scales the 2D scores by 250 before the 3D part (their CT input is in raw
Hounsfield units); ``score_scale`` defaults to 1 for normalised inputs. The 3D DenseUNet's own classifier, which
the authors' hybrid model builds but does not use, is left out (its parameters would never be trained). With
``deep_supervision=True`` training returns the hybrid output and the 2D scores (both full resolution), for the
paper's joint loss (a weighted sum of the 2D loss and the hybrid loss).

We write our own implementation: MONAI has no H-DenseUNet. The model is 3D only (it takes volumes); H and W must be
multiples of 32 and D a multiple of 4 (the 3D part halves the slices twice). Paper configuration: 1 input channel,
3 outputs (background, liver, tumour). We did not find a parameter count in the paper, so the registry records
``None``; we count 65,616,094 parameters: 49,527,843 in the 2D DenseUNet-167 (of which 26,472,000 in the
DenseNet-161 encoder, torchvision's count), 15,977,272 in the 3D DenseUNet (63 convolutions; with the unused
classifier the authors' 3D network has 64) and 110,979 in the HFF layer and classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import ConvNormAct, NormSpec, make_conv
from medseg.models.dense.densenet import DenseNetEncoder
from medseg.models.registry import PaperConfig, register_model

__all__ = ["DenseUNet2D", "DenseUNet3D", "HDenseUNet"]


class _UpLayer(nn.Module):
    """Nearest upsampling, optional sum with a skip (1x1-projected if widths differ), then conv, dropout, BN, ReLU."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, scale: tuple[int, ...],
                 skip_channels: int | None, dropout: float, norm: NormSpec) -> None:
        super().__init__()
        self.scale = scale
        self.project = (make_conv(spatial_dims, skip_channels, in_channels, 1)
                        if skip_channels is not None and skip_channels != in_channels else None)
        self.conv = ConvNormAct(spatial_dims, in_channels, out_channels, 3, norm=norm, act=("relu", {"inplace": True}),
                                dropout=dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        if skip is not None:
            x = x + (self.project(skip) if self.project is not None else skip)
        return self.conv(x)


class DenseUNet2D(nn.Module):
    """The 2D DenseUNet of H-DenseUNet: DenseNet encoder, decoder with summed skips, classifier.

    Shapes: ``(N, in_channels, H, W)`` to features ``(N, features, H, W)`` and scores ``(N, out_channels, H, W)``.
    The decoder widths follow the encoder (for DenseNet-161: 768, 384, 96, 96, then ``features``), so that each sum
    adds maps of equal width.
    """

    def __init__(self, in_channels: int, out_channels: int, *, block_config: Sequence[int], growth_rate: int,
                 init_features: int, features: int, dropout: float, norm: NormSpec) -> None:
        super().__init__()
        self.encoder = DenseNetEncoder(2, in_channels, block_config=block_config, growth_rate=growth_rate,
                                       init_features=init_features, norm=norm)
        ch = self.encoder.feature_channels  # stem, block outputs..., final
        n = len(ch)
        # Skips from the deepest block output down to the stem; the output widths match the next skip.
        skips = [ch[i] for i in range(n - 2, -1, -1)]
        widths = [*skips[1:], skips[-1], features]
        self.up = nn.ModuleList()
        cin = ch[-1]
        for i, w in enumerate(widths):
            skip = skips[i] if i < len(skips) else None
            self.up.append(_UpLayer(2, cin, w, (2, 2), skip, dropout if i == len(widths) - 1 else 0.0, norm))
            cin = w
        self.classifier = make_conv(2, features, out_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the decoder features and the class scores of ``x`` (``(N, C, H, W)``)."""
        feats = self.encoder(x)
        y = feats[-1]
        skips = feats[-2::-1]
        for i, up in enumerate(self.up):
            y = up(y, skips[i] if i < len(skips) else None)
        return y, self.classifier(y)


class DenseUNet3D(nn.Module):
    """The 3D DenseUNet of H-DenseUNet: 3D DenseNet encoder with in-plane transitions and a plain decoder.

    Shapes: ``(B, in_channels, D, H, W)`` to features ``(B, features, D, H, W)``. The decoder has
    ``len(decoder_channels) + 1`` upsampling layers (paper: 504, 224, 192, 96, then ``features``).
    """

    def __init__(self, in_channels: int, *, block_config: Sequence[int], growth_rate: int, init_features: int,
                 decoder_channels: Sequence[int], features: int, norm: NormSpec) -> None:
        super().__init__()
        n_trans = len(block_config) - 1
        self.encoder = DenseNetEncoder(3, in_channels, block_config=block_config, growth_rate=growth_rate,
                                       init_features=init_features, transition_strides=[(1, 2, 2)] * n_trans,
                                       norm=norm)
        widths = [*(int(c) for c in decoder_channels), features]
        scales = [(1, 2, 2)] * n_trans + [(2, 2, 2), (2, 2, 2)]
        if len(widths) != len(scales):
            raise ModelError(f"H-DenseUNet: the 3D decoder needs {len(scales) - 1} decoder channels, got {widths[:-1]}")
        self.up = nn.ModuleList()
        cin = self.encoder.out_channels
        for w, s in zip(widths, scales, strict=True):
            self.up.append(_UpLayer(3, cin, w, s, None, 0.0, norm))
            cin = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the decoder features of ``x`` (``(B, C, D, H, W)``)."""
        y = self.encoder(x)[-1]
        for up in self.up:
            y = up(y)
        return y


@register_model(
    "h_denseunet",
    family="dense",
    spatial_dims=(3,),
    paper_title="H-DenseUNet: Hybrid Densely Connected UNet for Liver and Tumor Segmentation from CT Volumes",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=1,
        out_channels=3,
        kwargs={},
        params=None,
        source="IEEE TMI 37(12) 2018, methods section and architecture table (no parameter count found)",
    ),
    divisor={3: 32},
    deep_supervision=True,
    test_kwargs={"block_config_2d": (1, 1, 1, 1), "growth_rate_2d": 4, "init_features_2d": 8,
                 "block_config_3d": (1, 1, 1, 1), "growth_rate_3d": 4, "init_features_3d": 8,
                 "decoder_channels_3d": (8, 8, 8, 8), "features": 8},
)
class HDenseUNet(SegmentationModel):
    """H-DenseUNet of Li et al. (IEEE TMI 2018): 2D DenseUNet on adjacent-slice stacks, 3D DenseUNet, HFF layer.

    Shapes: ``(B, in_channels, D, H, W)`` (D = the slice axis) to ``(B, out_channels, D, H, W)``; H and W multiples
    of 32, D a multiple of 4. With ``deep_supervision=True`` in training mode, forward returns
    ``[hybrid output, 2D scores]``, both ``(B, out_channels, D, H, W)``.

    Args:
        spatial_dims: Must be 3.
        in_channels: Input channels C (paper: 1, CT); the 2D part sees ``3 * C`` channels.
        out_channels: Output channels (paper: 3).
        block_config_2d: Dense blocks of the 2D encoder (paper: DenseNet-161's 6, 12, 36, 24).
        growth_rate_2d: Growth rate of the 2D encoder (paper: 48).
        init_features_2d: Stem channels of the 2D encoder (paper: 96).
        block_config_3d: Dense blocks of the 3D encoder (paper: 3, 4, 12, 8).
        growth_rate_3d: Growth rate of the 3D encoder (paper: 32).
        init_features_3d: Stem channels of the 3D encoder (paper: 96).
        decoder_channels_3d: Widths of the first four 3D upsampling layers (paper: 504, 224, 192, 96).
        features: Width of the last decoder layers and of the HFF layer (paper: 64).
        dropout: Dropout of the last 2D decoder layer and of the HFF layer (paper: 0.3).
        score_scale: Factor on the 2D scores fed to the 3D part (authors' code: 250 for raw HU input).
        deep_supervision: Also return the 2D scores in training mode.
        norm: Normalisation (batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        block_config_2d: Sequence[int] = (6, 12, 36, 24),
        growth_rate_2d: int = 48,
        init_features_2d: int = 96,
        block_config_3d: Sequence[int] = (3, 4, 12, 8),
        growth_rate_3d: int = 32,
        init_features_3d: int = 96,
        decoder_channels_3d: Sequence[int] = (504, 224, 192, 96),
        features: int = 64,
        dropout: float = 0.3,
        score_scale: float = 1.0,
        deep_supervision: bool = False,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if spatial_dims != 3:
            raise ModelError(f"{self.model_name}: H-DenseUNet takes volumes (3D) only, got spatial_dims={spatial_dims}")
        if len(block_config_2d) != 4 or len(block_config_3d) != 4:
            raise ModelError(f"{self.model_name}: block_config_2d and block_config_3d need 4 dense blocks (the "
                             f"decoders have five upsampling layers)")
        self.dense2d = DenseUNet2D(3 * in_channels, out_channels, block_config=block_config_2d,
                                   growth_rate=growth_rate_2d, init_features=init_features_2d, features=features,
                                   dropout=dropout, norm=norm)
        self.dense3d = DenseUNet3D(in_channels + out_channels, block_config=block_config_3d,
                                   growth_rate=growth_rate_3d, init_features=init_features_3d,
                                   decoder_channels=decoder_channels_3d, features=features, norm=norm)
        self.hff = ConvNormAct(3, features, features, 3, norm=norm, act=("relu", {"inplace": True}), dropout=dropout)
        self.classifier = make_conv(3, features, out_channels, 1)
        self.score_scale = score_scale
        self.deep_supervision = deep_supervision
        self.input_divisor = (4, 32, 32)
        if deep_supervision:
            self.deep_supervision_scales = [(1, 1, 1), (1, 1, 1)]

    @staticmethod
    def adjacent_slices(x: torch.Tensor) -> torch.Tensor:
        """Stack each slice with its two neighbours as channels: ``(B, C, D, H, W)`` to ``(B * D, 3 * C, H, W)``.

        Channel ``3 * c + j`` of image ``b * D + d`` is slice ``d - 1 + j`` of channel ``c`` (edge slices repeated).
        """
        b, c, d, h, w = x.shape
        padded = torch.cat((x[:, :, :1], x, x[:, :, -1:]), dim=2)
        stacks = padded.unfold(2, 3, 1)  # (B, C, D, H, W, 3)
        return stacks.permute(0, 2, 1, 5, 3, 4).reshape(b * d, 3 * c, h, w)

    @staticmethod
    def _to_volume(y: torch.Tensor, batch: int) -> torch.Tensor:
        n, c, h, w = y.shape
        return y.reshape(batch, n // batch, c, h, w).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` of shape ``(B, in_channels, D, H, W)``; see the class docstring for the outputs."""
        self.check_input(x)
        batch = x.shape[0]
        feat2d, score2d = self.dense2d(self.adjacent_slices(x))
        feat2d = self._to_volume(feat2d, batch)
        score2d = self._to_volume(score2d, batch)
        feat3d = self.dense3d(torch.cat((x, self.score_scale * score2d), dim=1))
        out = self.classifier(self.hff(feat3d + feat2d))
        if self.deep_supervision and self.training:
            return [out, score2d]
        return out
