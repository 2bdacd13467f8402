"""Improved attention U-Net of the focal Tversky loss paper: input image pyramid, attention gates, deep supervision.

Paper: N. Abraham, N. M. Khan, "A Novel Focal Tversky Loss Function with Improved Attention U-Net for Lesion
Segmentation", ISBI 2019 (arXiv:1810.07842), Section 2.3 and Fig. 2; official code: github.com/nabsabraham/
focal-tversky-unet (Keras, ``newmodels.attn_reg``, "model proposed in my paper"). The focal Tversky loss itself is
``medseg.training.loss``; this module is the network.

Layout (the official ``attn_reg``):

* encoder: ``UnetConv`` blocks (two 3x3 conv + batch norm + ReLU) with 2x max pooling between stages; widths
  32, 64, 128, 64 and a 512-channel centre block (the code's widths; its fourth stage has 64 channels);
* multi-scale input ("image pyramid"): the input is average-pooled once more for every stage; at stages 1-3 a
  3x3 convolution + ReLU (64, 128, 256 channels, no normalisation) of the pooled image is concatenated with the
  max-pooled encoder features before the stage's ``UnetConv``;
* attention gates on the skips of stages 3, 2, 1 (not on the full-resolution one): ``W_x`` a 2x2 convolution with
  stride 2, ``W_g`` a 1x1 convolution followed by a 3x3 (transposed, stride = grid ratio) convolution, ReLU of the
  sum, ``psi`` 1x1 to one channel, sigmoid, nearest upsampling of the coefficients, multiplication with the skip and
  a 1x1 convolution + batch norm (:class:`PyramidAttentionGate`, our :class:`~medseg.models.blocks.GridAttentionGate`
  plus the ``W_g`` 3x3 convolution and bias on ``W_x``); the intermediate widths are 128, 64, 32. Each gate's gating
  signal is a 1x1 conv + BN + ReLU of the centre block or of the previous decoder step;
* decoder: each step is a 3x3 transposed convolution with stride 2 + ReLU (32, 64, 32, 32 channels) of the previous
  step, concatenated with the (gated) skip;
* deep supervision: every decoder step also feeds a ``UnetConv`` (256, 128, 64, 32 channels) and a 1x1 convolution;
  the finest of these is the network's output, the others (at 1/2, 1/4, 1/8 resolution) are trained with loss
  weight 1 each (the code's ``loss_weights``). These side branches only feed the auxiliary outputs, so they are
  built only with ``deep_supervision=True``; the full-resolution branch always exists.

One difference from the official code: there the third gate (on the stage-1 skip) takes its gating signal from the
first decoder step instead of the second (``g3 = UnetGatingSignal(up1)``), unlike the other gates, which take the
step just coarser than their skip; we gate every skip with the previous decoder step. The code's 3x3 transposed
convolution on ``W_g g`` then always runs with stride 1, so we write it as a 3x3 convolution.

Which configuration reproduces the paper: the ISIC 2018 experiment, ``spatial_dims=2, in_channels=3,
out_channels=1``, ``deep_supervision=True`` with the code's widths (the defaults). We found no parameter
count in the paper; the official code at that configuration has 5,640,103 trainable parameters (counted from
``newmodels.attn_reg``; Keras' summary adds 2 non-trainable moving statistics per batch-norm channel). We count
5,671,111: the difference (+0.55 %) is exactly the third gate's gating signal (192 instead of 96 channels). The
registry records the official code's count.

Planned topology: ``features_per_stage`` and ``strides`` (nnU-Net plans) set the stages; the pyramid pools the input
with each stage's stride, and the other widths default to the stage widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers import Conv
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import (
    ConvNormAct,
    GridAttentionGate,
    NormSpec,
    StackedConvNormAct,
    make_conv,
    make_pool,
)
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["FocalTverskyAttentionUNet", "PyramidAttentionGate"]

RELU = ("relu", {"inplace": True})
#: Stage widths of the official ``attn_reg`` and its other widths (coarsest decoder step first).
CODE_FEATURES = (32, 64, 128, 64, 512)
CODE_WIDTHS = {"pyramid": (64, 128, 256), "up": (32, 64, 32, 32), "decoder": (256, 128, 64, 32), "inter": (128, 64, 32)}


class PyramidAttentionGate(GridAttentionGate):
    """The attention gate of the official focal-Tversky code: a grid attention gate with a 3x3 convolution on ``W_g g``.

    As :class:`~medseg.models.blocks.GridAttentionGate` (``W_x`` with kernel = stride = ``subsample``, ``W_g`` 1x1,
    ReLU, ``psi``, sigmoid, output 1x1 conv + norm), with three differences taken from the Keras code: ``W_x`` has a
    bias, ``W_g g`` passes through a further 3x3 convolution before the sum, and the coefficients are upsampled to
    the skip's grid by nearest-neighbour interpolation.

    Shapes: ``x`` ``(B, C_x, *spatial)``, ``g`` ``(B, C_g, *spatial / subsample)`` to
    ``((B, C_x, *spatial), alpha (B, 1, *spatial))``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_x.
        gating_channels: C_g.
        inter_channels: Intermediate channels.
        subsample: Kernel = stride of ``W_x`` (the stride between the skip's grid and the gating signal's).
        norm: Normalisation of the output transform.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        gating_channels: int,
        inter_channels: int,
        subsample: int | Sequence[int] = 2,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, gating_channels, inter_channels, subsample, norm)
        s = self.theta.stride
        self.theta = Conv[Conv.CONV, spatial_dims](in_channels, inter_channels, kernel_size=s, stride=s, bias=True)
        self.phi_conv = make_conv(spatial_dims, inter_channels, inter_channels, 3)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate ``x`` with ``g``; return the gated features and the attention coefficients."""
        theta_x = self.theta(x)
        phi_g = self.phi_conv(self.phi(g))
        if phi_g.shape[2:] != theta_x.shape[2:]:
            raise ModelError(f"attention gate: gating grid {tuple(phi_g.shape[2:])} does not match the subsampled "
                             f"skip {tuple(theta_x.shape[2:])}")
        alpha = torch.sigmoid(self.psi(torch.relu(theta_x + phi_g)))
        alpha = nn.functional.interpolate(alpha, size=x.shape[2:], mode="nearest")
        return self.out(alpha * x), alpha


def _transposed_conv3(spatial_dims: int, in_channels: int, out_channels: int, stride: Sequence[int]) -> nn.Module:
    """3x3 transposed convolution with "same" padding: each axis grows by its stride (Keras ``padding='same'``)."""
    return Conv[Conv.CONVTRANS, spatial_dims](
        in_channels, out_channels, kernel_size=3, stride=tuple(stride), padding=1,
        output_padding=tuple(s - 1 for s in stride),
    )


@register_model(
    "focal_tversky",
    family="attention",
    spatial_dims=(2, 3),
    paper_title="A Novel Focal Tversky Loss Function with Improved Attention U-Net for Lesion Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=3,
        out_channels=1,
        kwargs={"deep_supervision": True},
        params=5_640_103,
        source="ISBI 2019 (arXiv:1810.07842), Fig. 2; count of the official code nabsabraham/focal-tversky-unet "
               "newmodels.attn_reg at the ISIC 2018 configuration (192x256x3 in, 1 out), trainable parameters",
    ),
    divisor=16,
    deep_supervision=True,
    test_kwargs={2: {"features_per_stage": (4, 8, 8, 16, 16)}, 3: {"features_per_stage": (4, 4, 8, 8)}},
)
class FocalTverskyAttentionUNet(SegmentationModel):
    """Improved attention U-Net of Abraham & Khan (ISBI 2019): image pyramid input, attention gates, deep supervision.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    total stride (16 by default, :attr:`input_divisor`). With ``deep_supervision=True`` in training mode, forward
    returns the full-resolution output followed by the side outputs of the coarser decoder steps, finest first
    (:attr:`deep_supervision_scales`; loss weights 1 each); otherwise only the full-resolution output.
    :attr:`attention_maps` holds the last forward's attention coefficients, coarsest gate first.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Output channels (classes).
        features_per_stage: Encoder widths, the last one the centre block (code: 32, 64, 128, 64, 512).
        strides: Downsampling into each stage (plans format; default 2 per axis after the first stage).
        pyramid_features: Width of the pyramid-input convolution of stages ``1 .. n-2`` (code: 64, 128, 256).
        up_features: Width of each decoder step's transposed convolution, coarsest first (code: 32, 64, 32, 32).
        decoder_features: Width of each decoder step's ``UnetConv`` head, coarsest first (code: 256, 128, 64, 32).
        inter_features: Intermediate width of each attention gate, coarsest first (code: 128, 64, 32).
        deep_supervision: Build and return the coarser side outputs in training mode.
        norm: Normalisation (paper: batch norm).

    The four width options default to the official code's values when the stage widths are the code's, and to
    the width of the stage each layer belongs to otherwise (a planned topology).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features_per_stage: Sequence[int] = (32, 64, 128, 64, 512),
        strides: Sequence[int | Sequence[int]] | None = None,
        pyramid_features: Sequence[int] | None = None,
        up_features: Sequence[int] | None = None,
        decoder_features: Sequence[int] | None = None,
        inter_features: Sequence[int] | None = None,
        deep_supervision: bool = False,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        topo = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides, CODE_FEATURES,
                                min_stages=3)
        feats, n = topo.features, topo.n_stages
        levels = list(range(n - 2, -1, -1))  # decoder levels, coarsest first
        code = feats == CODE_FEATURES
        pyr = self._widths("pyramid_features", pyramid_features, CODE_WIDTHS["pyramid"] if code else
                           [feats[i] for i in range(1, n - 1)])
        ups = self._widths("up_features", up_features, CODE_WIDTHS["up"] if code else [feats[lv] for lv in levels])
        dec = self._widths("decoder_features", decoder_features, CODE_WIDTHS["decoder"] if code else
                           [feats[lv] for lv in levels])
        inter = self._widths("inter_features", inter_features, CODE_WIDTHS["inter"] if code else
                             [feats[lv] for lv in levels if lv > 0])
        self.topology = topo
        self.deep_supervision = deep_supervision
        kw = {"norm": norm, "act": RELU}

        self.pools = nn.ModuleList(make_pool("max", spatial_dims, s) for s in topo.strides[1:])
        self.input_pools = nn.ModuleList(make_pool("avg", spatial_dims, s) for s in topo.strides[1:n - 1])
        self.pyramid = nn.ModuleList(ConvNormAct(spatial_dims, in_channels, p, 3, act=RELU) for p in pyr)
        self.encoder = nn.ModuleList()
        for i, f in enumerate(feats):
            cin = in_channels if i == 0 else feats[i - 1] + (pyr[i - 1] if i < n - 1 else 0)
            self.encoder.append(StackedConvNormAct(2, spatial_dims, cin, f, 3, **kw))

        self.gating = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.heads = nn.ModuleList()
        self.head_convs = nn.ModuleList()
        prev = feats[-1]  # channels of the tensor the next decoder step starts from
        for k, lv in enumerate(levels):
            if lv > 0:
                self.gating.append(ConvNormAct(spatial_dims, prev, prev, 1, **kw))
                self.gates.append(PyramidAttentionGate(spatial_dims, feats[lv], prev, inter[k], topo.strides[lv + 1],
                                                       norm))
            self.ups.append(_transposed_conv3(spatial_dims, prev, ups[k], topo.strides[lv + 1]))
            prev = ups[k] + feats[lv]
            if lv == 0 or deep_supervision:
                self.heads.append(StackedConvNormAct(2, spatial_dims, prev, dec[k], 3, **kw))
                self.head_convs.append(make_conv(spatial_dims, dec[k], out_channels, 1))
        self.input_divisor = topo.divisor
        if deep_supervision:
            self.deep_supervision_scales = [topo.scales[lv] for lv in reversed(levels)]
            self.loss_weights = (1.0,) * len(levels)
        self.attention_maps: list[torch.Tensor] = []

    def _widths(self, what: str, given: Sequence[int] | None, default: Sequence[int]) -> list[int]:
        if given is None:
            return list(default)
        widths = [int(w) for w in given]
        if len(widths) != len(default):
            raise ModelError(f"{self.model_name}: {what} needs {len(default)} entries, got {len(widths)}")
        return widths

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``; see the class docstring for the outputs."""
        self.check_input(x)
        n = len(self.encoder)
        skips = [self.encoder[0](x)]
        image = x
        for i in range(1, n):
            h = self.pools[i - 1](skips[-1])
            if i < n - 1:
                image = self.input_pools[i - 1](image)
                h = torch.cat((self.pyramid[i - 1](image), h), dim=1)
            skips.append(self.encoder[i](h))
        h = skips.pop()
        maps: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []
        gate_idx = 0
        for k in range(n - 1):
            skip = skips.pop()
            if skips:  # every level but the finest is gated
                g = self.gating[gate_idx](h)
                skip, alpha = self.gates[gate_idx](skip, g)
                maps.append(alpha.detach())
                gate_idx += 1
            h = torch.cat((torch.relu(self.ups[k](h)), skip), dim=1)
            if self.deep_supervision or k == n - 2:
                head = len(outputs) if self.deep_supervision else 0
                outputs.append(self.head_convs[head](self.heads[head](h)))
        self.attention_maps = maps
        if self.deep_supervision and self.training:
            return outputs[::-1]
        return outputs[-1]
