"""HyperDenseNet: a hyper-densely connected 3D CNN for multi-modal segmentation (Dolz et al., 2019).

Paper: J. Dolz, K. Gopinath, J. Yuan, H. Lombaert, C. Desrosiers, I. Ben Ayed, "HyperDense-Net: A hyper-densely
connected CNN for multi-modal image segmentation", IEEE Transactions on Medical Imaging 38(5), 1116-1126 (2019)
(arXiv:1804.02967), methods section and architecture table. Facts checked against the authors' code
(``josedolz/HyperDenseNet``, Theano, two modalities, and ``josedolz/HyperDenseNet_pytorch``, two and three).

Layout: one path per imaging modality (``in_channels`` = number of paths; each path reads one input channel).
Each path has nine 3x3x3 convolutional layers with 25, 25, 25, 50, 50, 50, 75, 75, 75 kernels. Dense connections
link every layer to all later layers of its own path *and of the other paths*: the input of layer ``l`` in path
``s`` is the concatenation, over the earlier layers ``j < l``, of layer ``j``'s outputs of path ``s`` followed by
those of the other paths (each path sees the same maps in its own order, as in the authors' code). A layer is
BN, PReLU, convolution (the first layer of each path has no BN). The final stacks of all paths (each holding every
convolutional output of every path) are concatenated and fed to three fully convolutional 1x1x1 layers with 400,
200 and 150 kernels (BN, PReLU, dropout, convolution) and a 1x1x1 classification layer (BN, dropout, convolution).
Dropout rates are those of the authors' configuration (0.25 for the three 1x1x1 layers, 0.5 before the classifier).
With two paths the first 1x1x1 layer sees 2 * 2 * 450 = 1800 channels (``fully_1 = Conv3d(1800, 400)`` in the
authors' PyTorch code), with three 4050.

The paper's convolutions are unpadded: a 27x27x27 patch gives a 9x9x9 output (``padding="valid"``; earlier maps are
centre-cropped before each concatenation). The default ``padding="same"`` keeps the input size (same weights).

We write our own implementation: MONAI has no multi-path hyper-dense network. Paper configuration: iSEG 2017
(two modalities, T1 and T2; four classes: background, CSF, grey and white matter). We did not find a parameter
count in the paper, so the registry records ``None``; we count 10,374,806 parameters for that configuration
(23,199,807 with three modalities, MRBrainS). PReLU slopes are per channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models.base import SegmentationModel
from medseg.models.blocks import NormActConv, NormSpec, center_crop
from medseg.models.registry import PaperConfig, register_model

__all__ = ["HyperDenseNet"]


@register_model(
    "hyperdensenet",
    family="dense",
    spatial_dims=(3,),
    paper_title="HyperDense-Net: A hyper-densely connected CNN for multi-modal image segmentation",
    paper_year=2019,
    paper=PaperConfig(
        spatial_dims=3,
        in_channels=2,
        out_channels=4,
        kwargs={"padding": "valid"},
        params=None,
        source="IEEE TMI 38(5) 2019, methods section and architecture table (no parameter count found)",
    ),
    divisor=1,
    test_kwargs={"conv_channels": (2, 2, 4), "fc_channels": (8, 4)},
)
class HyperDenseNet(SegmentationModel):
    """HyperDenseNet of Dolz et al. (IEEE TMI 2019), 3D, one path per input channel (modality).

    Shapes: ``(B, in_channels, D, H, W)`` to ``(B, out_channels, D, H, W)`` with ``padding="same"`` (any size);
    with ``padding="valid"`` each side shrinks by ``len(conv_channels)`` voxels (27 -> 9 in the paper).

    Args:
        spatial_dims: Must be 3.
        in_channels: Number of modalities = number of paths (paper: 2 for iSEG, 3 for MRBrainS).
        out_channels: Output channels (paper: 4 classes).
        conv_channels: Kernels of the 3x3x3 layers of each path (paper: 25, 25, 25, 50, 50, 50, 75, 75, 75).
        fc_channels: Kernels of the 1x1x1 fully convolutional layers (paper: 400, 200, 150).
        fc_dropout: Dropout before each 1x1x1 layer and before the classifier (``len(fc_channels) + 1`` values;
            authors' configuration: 0.25, 0.25, 0.25, 0.5).
        padding: ``"same"`` (default) or ``"valid"`` (the paper's unpadded convolutions).
        norm: Normalisation of the pre-activation layers (paper: batch norm).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        conv_channels: Sequence[int] = (25, 25, 25, 50, 50, 50, 75, 75, 75),
        fc_channels: Sequence[int] = (400, 200, 150),
        fc_dropout: Sequence[float] | None = None,
        padding: str = "same",
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__(spatial_dims, in_channels, out_channels)
        if spatial_dims != 3:
            raise ModelError(f"{self.model_name}: HyperDenseNet is 3D only, got spatial_dims={spatial_dims}")
        if padding not in ("same", "valid"):
            raise ModelError(f"{self.model_name}: padding must be 'same' or 'valid', got {padding!r}")
        convs = tuple(int(c) for c in conv_channels)
        fcs = tuple(int(c) for c in fc_channels)
        drops = tuple(fc_dropout) if fc_dropout is not None else (0.25,) * len(fcs) + (0.5,)
        if not convs or min(convs) < 1 or min(fcs, default=1) < 1 or len(drops) != len(fcs) + 1:
            raise ModelError(f"{self.model_name}: conv_channels and fc_channels need positive values and fc_dropout "
                             f"len(fc_channels) + 1 values, got {convs}, {fcs}, {drops}")
        self.padding = padding
        self.n_paths = in_channels
        self.conv_channels = convs
        prelu = "prelu"
        self.paths = nn.ModuleList()
        for _ in range(in_channels):
            layers = nn.ModuleList()
            cin = 1
            for i, k in enumerate(convs):
                layers.append(NormActConv(3, cin, k, 3, padding=padding, norm=None if i == 0 else norm, act=prelu))
                cin = in_channels * sum(convs[: i + 1])
            self.paths.append(layers)
        head: list[nn.Module] = []
        cin = in_channels * in_channels * sum(convs)
        for c, p in zip(fcs, drops, strict=False):
            head.append(NormActConv(3, cin, c, 1, norm=norm, act=prelu, dropout=p, dropout_before_conv=True))
            cin = c
        head.append(NormActConv(3, cin, out_channels, 1, norm=norm, act=None, dropout=drops[-1],
                                dropout_before_conv=True))
        self.head = nn.Sequential(*head)

    def layer_input_channels(self) -> list[int]:
        """Input channels of each 3x3x3 layer of a path (the hyper-dense concatenation), then of the first 1x1x1."""
        return [layers[0].conv.in_channels for layers in zip(*self.paths, strict=True)] + [
            self.head[0].conv.in_channels
        ]

    def check_input(self, x: torch.Tensor) -> None:
        """Check rank and channels; with ``padding="valid"`` each size must exceed ``2 * len(conv_channels)``."""
        super().check_input(x)
        shrink = 2 * len(self.conv_channels)
        if self.padding == "valid" and min(x.shape[2:]) <= shrink:
            raise ModelError(f"{self.model_name}: with padding='valid' each spatial size must be larger than {shrink}"
                             f", got {tuple(x.shape[2:])}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` of shape ``(B, in_channels, D, H, W)``; see the class docstring for the output size."""
        self.check_input(x)
        n = self.n_paths
        # outputs[j][s]: output of layer j in path s.
        outputs: list[list[torch.Tensor]] = []
        stacks = [x[:, s : s + 1] for s in range(n)]
        for depth in range(len(self.conv_channels)):
            new = [self.paths[s][depth](stacks[s]) for s in range(n)]
            outputs.append(new)
            size = new[0].shape[2:]
            stacks = []
            for s in range(n):
                order = [s, *(q for q in range(n) if q != s)]
                maps = [outputs[j][q] for j in range(depth + 1) for q in order]
                stacks.append(torch.cat([m if m.shape[2:] == size else center_crop(m, size) for m in maps], dim=1))
        return self.head(torch.cat(stacks, dim=1))
