"""Structure checks of the refine group (RefineNet, LW-RefineNet, FRRN, GCN, HRNetV2, OCRNet, FPN, DFN)."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models import count_parameters, create_model
from medseg.models.natural.refine._modules import (
    BoundaryRefinement,
    ChainedResidualPooling,
    GlobalConvBlock,
    RefineNetBlock,
    ResidualConvUnit,
    build_backbone,
)
from medseg.models.natural.refine.lw_refinenet import _last_conv_channels
from medseg.models.natural.refine.ocrnet import gather_object_regions

SMALL_RESNET = {"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}}


def _meta(name: str, *args, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, *args, **kwargs)


def test_refinenet_block_chain_and_crp_count() -> None:
    model = _meta("refinenet", 2, 3, 21)
    blocks = list(model.blocks)
    assert len(blocks) == 4 and all(isinstance(b, RefineNetBlock) for b in blocks)
    assert blocks[0].fuse_conv is None and all(b.fuse_conv is not None for b in blocks[1:])
    assert blocks[0].dimred.out_channels == 512 and all(b.dimred.out_channels == 256 for b in blocks[1:])
    for b in blocks:
        assert len(b.adapt) == 2 and len(b.output_rcu) == 3
        assert all(isinstance(u, ResidualConvUnit) for u in [*b.adapt, *b.output_rcu])
        assert isinstance(b.crp, ChainedResidualPooling) and len(b.crp.convs) == 4
        assert all(c.kernel_size == (3, 3) for c in b.crp.convs)
    assert blocks[-1].out_conv is None


def test_lw_refinenet_is_light_and_counts() -> None:
    model = _meta("lw_refinenet", 2, 3, 21, backbone="resnet101")
    for b in model.blocks:
        assert len(b.adapt) == 0 and len(b.output_rcu) == 0
        assert all(c.kernel_size == (1, 1) for c in b.crp.convs)
    # about 27M / 46M / 62M for ResNet-50/101/152 and 3.3M for MobileNetV2 (BMVC 2018)
    assert abs(count_parameters(model) - 46e6) < 0.02 * 46e6
    assert abs(count_parameters(_meta("lw_refinenet", 2, 3, 21)) - 27e6) < 0.02 * 27e6
    assert abs(count_parameters(_meta("lw_refinenet", 2, 3, 21, backbone="resnet152")) - 62e6) < 0.02 * 62e6
    mobile = _meta("lw_refinenet", 2, 3, 21, backbone="mobilenetv2")
    assert len(mobile.crps) == 4 and len(mobile.reduce) == 6
    assert _last_conv_channels(mobile.backbone.features[-1]) == 320  # the 320 -> 1280 convolution is removed
    assert abs(count_parameters(mobile) - 3.3e6) < 0.066e6


def test_resnet152_composed() -> None:
    with torch.device("meta"):
        backbone = build_backbone("resnet152", 2, 3)
    assert [len(getattr(backbone, f"layer{i}")) for i in range(1, 5)] == [3, 8, 36, 3]
    assert sum(p.numel() for p in backbone.parameters()) + 2048 * 1000 + 1000 == 60_192_808  # torchvision figure


def test_resnet152_loads_torchvision_layout(tmp_path) -> None:
    small = build_backbone("resnet152", 2, 3, backbone_kwargs={"width": 0.125})
    ours = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in small.state_dict().items()}
    layout = {}
    for key, value in ours.items():
        key = key.replace("stem.conv.", "conv1.").replace("stem.norm.", "bn1.")
        key = re.sub(r"\.conv(\d)\.conv\.", r".conv\1.", key)
        key = re.sub(r"\.conv(\d)\.norm\.", r".bn\1.", key)
        layout[key.replace("downsample.conv.", "downsample.0.").replace("downsample.norm.", "downsample.1.")] = value
    layout["fc.weight"], layout["fc.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    torch.save(layout, tmp_path / "r152.pth")
    loaded = build_backbone("resnet152", 2, 3, pretrained=str(tmp_path / "r152.pth"),
                            backbone_kwargs={"width": 0.125})
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ours.items())


def test_frrn_streams() -> None:
    model = create_model("frrn", 2, 2, 3, model="A", width=0.125, residual_channels=8).eval()
    assert [len(s) for s in model.encoder] == [3, 4, 2, 2] and [len(s) for s in model.decoder] == [2, 2, 2]
    assert model.input_divisor == (16, 16)
    model_b = _meta("frrn", 2, 3, 19, model="B")
    assert [len(s) for s in model_b.encoder] == [3, 4, 2, 2, 2] and model_b.input_divisor == (32, 32)
    assert model_b.split.conv.out_channels == 32
    assert model_b.tail_units[0].conv1.conv.in_channels == 384 // 4 + 32  # pooling stream (96) + residual stream
    y = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        assert model(y).shape == (1, 3, 32, 32)


def test_gcn_kernel_shapes() -> None:
    model = _meta("gcn", 2, 3, 21)
    assert len(model.gcn) == 4 and len(model.deconvs) == 5
    assert sum(isinstance(m, BoundaryRefinement) for m in model.modules()) == 9
    block = model.gcn[0]
    assert isinstance(block, GlobalConvBlock)
    assert block.left[0].kernel_size == (15, 1) and block.left[1].kernel_size == (1, 15)
    assert block.right[0].kernel_size == (1, 15) and block.right[1].kernel_size == (15, 1)
    assert all(g.left[1].out_channels == 21 for g in model.gcn)
    with pytest.raises(ModelError):
        GlobalConvBlock(8, 4, 14)


def test_fpn_merge_scale_and_groupnorm() -> None:
    model = create_model("fpn", 2, 2, 3, **SMALL_RESNET, fpn_channels=16, head_channels=8, groups=4).eval()
    assert [len(b) for b in model.branches] == [1, 1, 2, 3]
    assert all(isinstance(s.norm, nn.GroupNorm) for b in model.branches for s in b)
    feats = model.backbone(torch.randn(1, 2, 64, 64))[1:5]
    pyramid = model.fpn(feats)
    assert [p.shape[1] for p in pyramid] == [16] * 4
    assert [p.shape[-1] for p in pyramid] == [16, 8, 4, 2]  # P2 (the merge scale, 1/4) .. P5
    full = _meta("fpn", 2, 3, 54)
    assert full.branches[0][0].conv.out_channels == 128 and full.fpn.output[0].out_channels == 256


def test_ocr_shapes_and_aux_output() -> None:
    feats, logits = torch.randn(2, 6, 4, 4), torch.randn(2, 3, 4, 4)
    regions = gather_object_regions(feats, logits)
    assert regions.shape == (2, 6, 3)
    model = create_model("ocrnet", 2, 2, 3, **SMALL_RESNET, output_stride=8, ocr_channels=16, key_channels=8,
                         deep_supervision=True).train()
    outs = model(torch.randn(2, 2, 32, 32))
    assert isinstance(outs, list) and [o.shape for o in outs] == [(2, 3, 32, 32)] * 2
    full = _meta("ocrnet", 2, 3, 19)
    assert full.pixel.conv.out_channels == 512 and full.ocr.key_channels == 256
    assert full.aux_head[0].conv.in_channels == 720


def test_hrnetv2_head() -> None:
    model = _meta("hrnetv2_w48", 2, 3, 19)
    assert model.head[0].conv.in_channels == model.head[0].conv.out_channels == 720
    assert model.head[1].out_channels == 19


def test_dfn_stages_and_border_output() -> None:
    model = create_model("dfn", 2, 2, 3, **SMALL_RESNET, channels=8, deep_supervision=True,
                         border_network=True).train()
    assert len(model.pre_rrb) == len(model.cab) == len(model.post_rrb) == len(model.heads) == 4
    seg, border = model(torch.randn(2, 2, 64, 64))
    assert [s.shape for s in seg] == [(2, 3, 64, 64)] * 4 and [b.shape for b in border] == [(2, 1, 64, 64)] * 4
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, 64, 64)).shape == (1, 3, 64, 64)


def test_pixelnet_hypercolumn_and_sparse_sampling() -> None:
    full = _meta("pixelnet", 2, 3, 21)
    assert full.hypercolumn_channels == 64 + 128 + 256 + 512 + 512 + 4096
    assert [m.out_channels for m in full.mlp if isinstance(m, nn.Conv2d)] == [4096, 4096, 21]
    model = create_model("pixelnet", 2, 2, 3, backbone_kwargs={"width": 0.125}, fc_channels=8,
                         mlp_channels=8).eval()
    x = torch.randn(1, 2, 32, 32)
    points = torch.tensor([[[0.0, 0.0], [5.0, 17.0], [31.0, 31.0]]])
    with torch.no_grad():
        dense, sampled = model(x), model.forward_sampled(x, points)
    assert sampled.shape == (1, 3, 3)
    for i, (r, c) in enumerate(points[0].long().tolist()):
        assert torch.allclose(sampled[0, :, i], dense[0, :, r, c], atol=1e-5)


def test_lrr_levels_and_boundary_mask() -> None:
    from medseg.models.natural.refine.lrr import boundary_mask

    flat = torch.zeros(1, 3, 16, 16)
    assert boundary_mask(flat).abs().max() == 0
    step = torch.zeros(1, 2, 16, 16)
    step[:, 0, :, 8:] = 10.0
    mask = boundary_mask(step)
    assert mask[0, 0, 0, 0] == 0 and mask[0, 0, 0, 7] > 0.49 and mask[0, 0, 0, 15] == 0
    full = _meta("lrr", 2, 3, 21)
    assert [c.out_channels for c in full.coefficients] == [210] * 4
    assert all(b.groups == 21 and b.kernel_size == (8, 8) and b.stride == (4, 4) for b in full.bases)


def _frrn_reference_count(model: str, classes: int = 19, base: int = 48, lanes: int = 32) -> int:
    """Parameters of the authors' FRRNABuilder / FRRNBBuilder (github.com/TobyPDE/FRRN, dltools/architectures.py).

    ``add_conv``: no bias unless asked, BN (scale and shift) unless switched off; FRRU: two 3x3 convolutions on the
    pooling stream concatenated with the pooled residual stream, a 1x1 convolution with bias to the ``lanes``.
    """

    def conv(c_in: int, c_out: int, k: int, bias: bool = False, bn: bool = True) -> int:
        return c_in * c_out * k * k + (c_out if bias else 0) + (2 * c_out if bn else 0)

    count = conv(3, base, 5) + 3 * 2 * conv(base, base, 3) + conv(base, lanes, 1)  # 5x5, three RUs, residual stream
    stages = [(3, 2), (4, 4), (2, 8), (2, 8)] + ([(2, 8), (2, 4)] if model == "B" else []) + [(2, 4), (2, 4), (2, 2)]
    c = base
    for n, mult in stages:  # (FRRUs, channel multiplier) of each stage, encoder then decoder
        for _ in range(n):
            width = base * mult
            count += conv(c + lanes, width, 3) + conv(width, width, 3) + conv(width, lanes, 1, bias=True, bn=False)
            c = width
    count += conv(c + lanes, base, 1, bn=False) + conv(c + lanes, base, 3) + conv(base, base, 3)  # projecting RU
    count += 2 * 2 * conv(base, base, 3)  # two more RUs
    return count + conv(base, classes, 1, bias=True, bn=False)


def test_frrn_counts_equal_the_authors_builders() -> None:
    assert count_parameters(_meta("frrn", 2, 3, 19, model="A")) == _frrn_reference_count("A") == 17_746_803
    assert count_parameters(_meta("frrn", 2, 3, 19, model="B")) == _frrn_reference_count("B") == 24_755_699


def test_ocrnet_head_equals_the_authors_code() -> None:
    # HRNet-Semantic-Segmentation (branch HRNet-OCR) seg_hrnet_ocr.py: conv3x3_ocr (with bias) + BN,
    # SpatialOCR_Module(512, key 256, 512) (f_pixel and f_object two 1x1 + BN each, f_down, f_up, 1024 -> 512 fusion),
    # cls_head (1x1 with bias) and aux_head (1x1 720 -> 720 with bias + BN, 1x1 to the classes with bias).
    c, mid, key, k = 720, 512, 256, 19
    head = ((c * mid * 9 + mid + 2 * mid) + 2 * (mid * key + key * key + 4 * key) + (mid * key + 2 * key)
            + (key * mid + 2 * mid) + (2 * mid * mid + 2 * mid) + (mid * k + k) + (c * c + 3 * c + c * k + k))
    model = _meta("ocrnet", 2, 3, 19)
    assert count_parameters(model) - count_parameters(model.backbone) == head == 5_047_558
    assert count_parameters(model) == 70_372_678


def test_pixelnet_dense_forward_in_bands_equals_the_whole_image() -> None:
    """Evaluation builds hypercolumns band by band (bounded memory) with the values of full upsampling."""
    from medseg.models import create_model

    model = create_model("pixelnet", 2, 3, 5, fc_channels=64, mlp_channels=32).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        whole = model(x)
        model.chunk_pixels = 1000  # 10 rows per band, the last band shorter
        banded = model(x)
    torch.testing.assert_close(banded, whole, atol=1e-5, rtol=1e-5)
