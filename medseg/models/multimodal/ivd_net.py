"""IVD-Net: a multi-modal U-Net with one encoder per modality and inter-modality dense connections (Dolz et al.).

Paper: J. Dolz, C. Desrosiers, I. Ben Ayed, "IVD-Net: Intervertebral disc localization and segmentation in MRI with
a multi-modal UNet", MICCAI 2018 IVD challenge, LNCS 11397 (2019) (arXiv:1811.08305), Section 2 and Fig. 1; authors'
code: github.com/josedolz/IVD-Net (``IVD_Net.py``: ``IVD_Net_asym``; ``Blocks.py``; ``main.py`` builds
``IVD_Net_asym(1, 2, 32)`` for the four Dixon images fat, in-phase, opposed-phase and water).

Layout: the dense multi-path U-Net of the same authors (:class:`~medseg.models.multimodal.dense_multipath_unet.
MultiPathDenseUNet`, whose docstring describes the paths, the hyper-dense connections between them, the residual
averaging skips and the decoder) with the encoder and bottleneck modules factorised: each branch of the dilated
inception module is a ``k x 1`` then ``1 x k`` convolution, each with batch norm and ReLU (in 3D three 1D
convolutions, one per axis); the decoder modules are not factorised. One path per input channel: four in the paper.
Widths 32, 64, 128, 256 per path and 512 in the bottleneck (``ngf = 32``).

Difference from the authors' code: as for the dense multi-path U-Net, the previous level's input reaches the next
level max-pooled instead of centre-cropped (same channels, no parameter changes).

Paper configuration: 2D, four modalities, two classes (background, disc), ``ngf = 32``. The paper gives no
parameter count; the authors' ``IVD_Net_asym(1, 2, 32)`` has 54,313,954 parameters (counted in PyTorch), which the
registry records; ours has the same number.
"""

from __future__ import annotations

from collections.abc import Sequence

from medseg.models.blocks import NormSpec
from medseg.models.multimodal.dense_multipath_unet import MultiPathDenseUNet
from medseg.models.registry import PaperConfig, register_model

__all__ = ["IVDNet"]


@register_model(
    "ivd_net",
    family="multimodal",
    spatial_dims=(2, 3),
    paper_title="IVD-Net: Intervertebral disc localization and segmentation in MRI with a multi-modal UNet",
    paper_year=2018,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=4,
        out_channels=2,
        kwargs={"features_per_stage": (32, 64, 128, 256, 512)},
        params=54_313_954,
        source="authors' code github.com/josedolz/IVD-Net, IVD_Net.py IVD_Net_asym(1, 2, 32) as built by main.py "
               "(four Dixon modalities, two classes); the paper (arXiv:1811.08305) states no parameter count",
    ),
    divisor=16,
    test_kwargs={2: {"features_per_stage": (4, 8, 8, 16)}, 3: {"features_per_stage": (2, 4, 4)}},
)
class IVDNet(MultiPathDenseUNet):
    """IVD-Net of Dolz et al. (2018): one factorised encoder path per input channel, 2D or 3D.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    product of the strides (16 by default). Each input channel is one modality with its own encoder path.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Number of modalities (paths); the paper: 4.
        out_channels: Output channels (classes).
        features_per_stage: Channels per level of each path, the last entry the bottleneck (paper: 32, 64, 128,
            256 and 512).
        strides: Pooling stride into each level (``strides[0]`` = 1), one int or one per axis; default 2.
        factorised_encoder: Factorised (asymmetric) encoder modules; IVD-Net's defining choice (default ``True``).
        norm: Normalisation (paper: batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features_per_stage: Sequence[int] = (32, 64, 128, 256, 512),
        strides: Sequence[int | Sequence[int]] | None = None,
        factorised_encoder: bool = True,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, features_per_stage=features_per_stage,
                         strides=strides, factorised_encoder=factorised_encoder, norm=norm)
