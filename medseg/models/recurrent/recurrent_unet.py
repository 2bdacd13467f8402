"""Recurrent U-Net: a U-Net run iteratively with a gated recurrent unit at its bottleneck (Wang et al., 2019).

Paper: W. Wang, K. Yu, J. Hugonot, P. Fua, M. Salzmann, "Recurrent U-Net for Resource-Constrained Segmentation",
ICCV 2019 (arXiv:1906.04913), Section 3 and Fig. 2-3; official code: github.com/kcyu2014/recurrent-unet
(``ptsemseg/models/dru.py``: classes ``dru`` and ``sru``, ``ConvDRU``, ``ConvSRU``; ``ptsemseg/models/utils.py``:
``unetConv2``, ``unetUp``; the multi-step loss ``multi_step_cross_entropy2d`` in ``ptsemseg/loss/loss.py``).

Layout: a small U-Net (first level 8 channels, doubling per level: 8, 16, 32, 64, 128) is unrolled for ``steps``
iterations with shared weights. At iteration ``t`` the input is the image concatenated with the previous
segmentation ``s_(t-1)`` (all ones at ``t = 1``, as in the code); the encoder has four levels of two 3x3
convolutions + group norm (``min(8, C)`` groups) + ReLU with 2x2 max pooling; the bottleneck is replaced by a gated
recurrent unit whose hidden state ``h`` (128 channels, all ones at the start) carries over the iterations; the
decoder upsamples with 2x2 transposed convolutions, concatenates the skip and applies two 3x3 convolutions + ReLU
(without normalisation in the authors' code), and a 1x1 convolution gives ``s_t``.

* DRU (dual-gated recurrent unit, Fig. 3c): with the pooled encoder output ``e``, ``z = sigmoid(G_z(e))``,
  ``r = sigmoid(G_r(e))``, ``h_hat = tanh(G_h(r * e))``, ``h = (1 - z) * h_prev + z * h_hat``; every gate ``G`` is
  two 3x3 convolutions + group norm + ReLU (``G_r`` keeps the input width, ``G_z`` and ``G_h`` map it to the hidden
  width).
* SRU (single-gated, Fig. 3d): no reset gate, ``h_hat = tanh(G_h(e))``.

Training uses every iteration's output with weights ``0.4 ** (steps - t)`` (1 for the last): with
``deep_supervision=True`` training-mode forward returns ``[s_T, s_(T-1), ..., s_1]`` (all full resolution) and
:attr:`loss_weights` holds those weights; eval mode returns ``s_T``.

We write our own implementation; the same layout runs in 3D. ``features_per_stage`` (five widths, the last being the
hidden state) and ``strides`` (first entry 1) can be planned.

Paper configuration (the code's ``feature_scale=4`` hand-segmentation models): 2D, RGB input, 2 classes, widths 8,
16, 32, 64, 128, three iterations, DRU. We count 783,026 parameters (708,914 with the SRU), the counts of the
official ``dru`` / ``sru`` at that configuration (counted with PyTorch in a scratch folder).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import StackedConvNormAct, make_conv, make_pool, make_transposed_conv
from medseg.models.registry import PaperConfig, register_model
from medseg.models.stage_plan import resolve_stages

__all__ = ["GatedRecurrentUnit", "RecurrentUNet"]

RELU = ("relu", {"inplace": True})


def _double_conv(spatial_dims: int, cin: int, cout: int, norm: bool) -> StackedConvNormAct:
    spec = ("group", {"num_groups": min(8, cout)}) if norm else None
    return StackedConvNormAct(2, spatial_dims, cin, cout, 3, norm=spec, act=RELU)


class GatedRecurrentUnit(nn.Module):
    """The dual-gated (DRU) or single-gated (SRU) recurrent unit of the Recurrent U-Net (Wang et al., Fig. 3).

    Shapes: ``e`` ``(B, C_in, *spatial)`` and ``h`` ``(B, C_h, *spatial)`` to the new ``h``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: C_in.
        hidden_channels: C_h.
        dual: DRU (with the reset gate) or SRU.
    """

    def __init__(self, spatial_dims: int, in_channels: int, hidden_channels: int, dual: bool = True) -> None:
        super().__init__()
        self.reset_gate = _double_conv(spatial_dims, in_channels, in_channels, True) if dual else None
        self.update_gate = _double_conv(spatial_dims, in_channels, hidden_channels, True)
        self.out_gate = _double_conv(spatial_dims, in_channels, hidden_channels, True)

    def forward(self, e: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One recurrent update of the hidden state ``h`` from the activations ``e``."""
        update = torch.sigmoid(self.update_gate(e))
        if self.reset_gate is not None:
            e = e * torch.sigmoid(self.reset_gate(e))
        candidate = torch.tanh(self.out_gate(e))
        return h * (1 - update) + candidate * update


@register_model(
    "recurrent_unet",
    family="recurrent",
    spatial_dims=(2, 3),
    paper_title="Recurrent U-Net for Resource-Constrained Segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=2,
        in_channels=3,
        out_channels=2,
        kwargs={"features_per_stage": (8, 16, 32, 64, 128), "steps": 3, "unit": "dru"},
        params=783_026,
        source="official code kcyu2014/recurrent-unet ptsemseg/models/dru.py, dru(n_classes=2, in_channels=3, "
               "feature_scale=4, hidden_size=128, steps=3) (no figure in the paper's text we could read)",
    ),
    divisor=16,
    deep_supervision=True,
    test_kwargs={2: {"features_per_stage": (4, 8, 8, 16, 16), "steps": 2},
                 3: {"features_per_stage": (4, 4, 8, 8), "steps": 2}},
)
class RecurrentUNet(SegmentationModel):
    """Recurrent U-Net of Wang et al. (ICCV 2019): a U-Net unrolled over iterations with a DRU/SRU bottleneck.

    Shapes: ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``; each spatial size a multiple of the
    product of the strides per axis (16 by default). With ``deep_supervision=True`` in training mode, forward returns
    every iteration's output, last first.

    Args:
        spatial_dims: 2 (paper) or 3.
        in_channels: Input channels.
        out_channels: Classes.
        features_per_stage: Widths of the encoder levels; the last is the hidden state's (paper: 8, ..., 128).
        strides: Pooling into each level (first entry 1); default 2 per axis.
        steps: Unrolled iterations (paper: 3).
        unit: ``"dru"`` (paper's best) or ``"sru"``.
        deep_supervision: Return every iteration's output in training mode.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        features_per_stage: Sequence[int] = (8, 16, 32, 64, 128),
        strides: Sequence[int | Sequence[int]] | None = None,
        steps: int = 3,
        unit: str = "dru",
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        plan = resolve_stages(self.model_name, spatial_dims, features_per_stage, strides)
        f, pools, divisor = plan.features, plan.pools, plan.divisor
        if len(f) < 3:
            raise ModelError(f"{self.model_name}: features_per_stage needs at least 3 stages, got {f}")
        if unit not in ("dru", "sru"):
            raise ModelError(f"{self.model_name}: unit must be 'dru' or 'sru', got {unit!r}")
        if steps < 1:
            raise ModelError(f"{self.model_name}: steps must be >= 1, got {steps}")
        n = len(f) - 1  # encoder levels; the last width is the recurrent unit's
        self.steps = steps
        self.features = f
        self.deep_supervision = deep_supervision
        self.encoder = nn.ModuleList(
            _double_conv(spatial_dims, in_channels + out_channels if i == 0 else f[i - 1], f[i], True)
            for i in range(n)
        )
        self.pools = nn.ModuleList(make_pool("max", spatial_dims, p) for p in pools)
        self.unit = GatedRecurrentUnit(spatial_dims, f[n - 1], f[n], dual=unit == "dru")
        self.ups = nn.ModuleList(make_transposed_conv(spatial_dims, f[i + 1], f[i], pools[i])
                                 for i in range(n - 1, -1, -1))
        self.decoder = nn.ModuleList(_double_conv(spatial_dims, 2 * f[i], f[i], False) for i in range(n - 1, -1, -1))
        self.head = make_conv(spatial_dims, f[0], out_channels, 1)
        self.input_divisor = divisor
        if deep_supervision:
            self.deep_supervision_scales = [(1,) * spatial_dims] * steps
            self.loss_weights = tuple(0.4**t for t in range(steps))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` of shape ``(B, in_channels, *spatial)``; see the class docstring for the outputs."""
        self.check_input(x)
        b = x.shape[0]
        s = x.new_ones((b, self.out_channels, *x.shape[2:]))
        coarse = [size // d for size, d in zip(x.shape[2:], self.input_divisor, strict=True)]
        h = x.new_ones((b, self.features[-1], *coarse))
        outputs = []
        for _ in range(self.steps):
            out = torch.cat((x, s), dim=1)
            skips = []
            for block, pool in zip(self.encoder, self.pools, strict=True):
                out = block(out)
                skips.append(out)
                out = pool(out)
            h = self.unit(out, h)
            out = h
            for up, block in zip(self.ups, self.decoder, strict=True):
                out = block(torch.cat((skips.pop(), up(out)), dim=1))
            s = self.head(out)
            outputs.append(s)
        if self.deep_supervision and self.training:
            return outputs[::-1]
        return s
