"""Other group of the natural-image family (MultiNet, PixelDCN, segmentation-aware convolution, Auto-DeepLab,
multi-path network, BA-Net) and the VoVNet/OSNet backbones: structure against the papers/official code, and each
learns on a real image."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from testutils import assert_learns, coins_task, mni_task
from torch import nn

from medseg.errors import ModelError
from medseg.models import count_parameters, create_model, get_model_info, list_models
from medseg.models.backbones import create_backbone, get_backbone_info
from medseg.models.natural.other.auto_deeplab import NETWORK_PATH, AtrousOperation, SeparableOperation
from medseg.models.natural.other.banet import boundary_target
from medseg.models.natural.other.pixeldcn import PixelDCL, pixel_dcl_groups
from medseg.models.natural.other.seg_aware_conv import SegAwareConv, local_l1_distances

KEYS = ["multinet", "pixeldcn", "seg_aware_conv", "auto_deeplab", "multipath_net", "banet"]


def _meta(name: str, dims: int, cin: int, cout: int, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, dims, cin, cout, **kwargs)


def test_keys_registered_in_natural_family_2d_and_3d() -> None:
    assert set(KEYS) <= set(list_models("natural"))
    for key in KEYS:
        assert get_model_info(key).spatial_dims == (2, 3)


def test_multinet_fcn_decoder_on_vgg() -> None:
    model = _meta("multinet", 2, 3, 2)
    assert [model.encoder.strides[i] for i in model.feed_levels] == [16, 8]  # pool4, then pool3
    assert model.fc.fc6.kernel_size == (7, 7) and model.fc.fc6.out_channels == 4096
    assert model.fc.fc7.conv.kernel_size == (1, 1) and model.score_fr.in_channels == 4096
    ups = [*model.upscore, model.upscore_final]
    assert [u.deconv.kernel_size[0] for u in ups] == [4, 4, 16] and [u.factor for u in ups] == [2, 2, 8]
    assert all(u.learnable and u.deconv.bias is None for u in ups)  # learned, bias-free (decoder/fcn.py)
    small = create_model("multinet", 2, 1, 2, **get_model_info("multinet").test_kwargs[2])
    assert torch.count_nonzero(small.score_fr.weight) > 0  # He-initialised, unlike FCN's zeros
    with pytest.raises(ModelError, match="32"):
        small(torch.randn(1, 1, 48, 64))


@pytest.mark.parametrize("dims", [2, 3])
def test_pixel_dcl_steps_and_interleaving(dims: int) -> None:
    groups = pixel_dcl_groups(dims)
    assert [len(g) for g in groups] == ([1, 1, 2] if dims == 2 else [1, 1, 3, 3])
    assert sorted(o for g in groups for o in g) == sorted(__import__("itertools").product((0, 1), repeat=dims))
    c = 3
    ipixel = PixelDCL(dims, c, c, mode="ipixel")
    # each step sees the input and every map made so far (ipixel_dcl / ipixel_dcl3d of the code)
    made = [0, 1, 2, 4] if dims == 2 else [0, 1, 2, 5]
    assert [conv.in_channels for conv in ipixel.convs] == [c + m * c for m in made[:len(groups)]]
    assert [conv.out_channels for conv in ipixel.convs] == [len(g) * c for g in groups]
    pixel = PixelDCL(dims, c, c, mode="pixel")
    assert [conv.in_channels for conv in pixel.convs][:3] == [c, c, 2 * c]  # the input feeds only the first step
    x = torch.randn(2, c, *([5] * dims))
    with torch.no_grad():
        out = ipixel(x)
        first = ipixel.convs[0](x)
        second = ipixel.convs[1](torch.cat([x, first], 1))
    assert out.shape == (2, c, *([10] * dims))
    assert torch.allclose(out[(..., *[slice(0, None, 2)] * dims)], first)  # offset (0, ..., 0)
    assert torch.allclose(out[(..., *[slice(1, None, 2)] * dims)], second)  # offset (1, ..., 1), made from the first


def test_pixeldcn_unet_widths() -> None:
    model = _meta("pixeldcn", 3, 1, 2)
    assert [blk[1].conv.out_channels for blk in model.down] == [16, 32, 64, 128]
    assert [c.conv.out_channels for c in model.bottom] == [256, 128]
    assert all(isinstance(up.up, PixelDCL) and up.up.mode == "ipixel" for up in model.ups)
    assert model.input_divisor == (16, 16, 16)
    deconv = create_model("pixeldcn", 2, 1, 2, base_features=4, upsample="deconv")
    assert isinstance(deconv.ups[0].up, nn.ConvTranspose2d)


def test_local_l1_distances_and_masked_convolution() -> None:
    torch.manual_seed(0)
    emb = torch.randn(1, 4, 6, 7, dtype=torch.double)
    d = local_l1_distances(emb, 3, 2)
    i, j = 3, 3
    for k, (di, dj) in enumerate([(a, b) for a in (-2, 0, 2) for b in (-2, 0, 2)]):
        assert torch.isclose(d[0, k, i, j], (emb[0, :, i, j] - emb[0, :, i + di, j + dj]).abs().sum())
    assert torch.all(d[:, 4] == 0)  # the centre
    conv = SegAwareConv(2, 3, 5, 3, dilation=2).double()
    x = torch.randn(1, 3, 6, 7, dtype=torch.double)
    with torch.no_grad():
        conv.scale.zero_()  # all masks 1: an ordinary (dilated) convolution
        assert torch.allclose(conv(x, emb), F.conv2d(x, conv.conv.weight, conv.conv.bias, padding=2, dilation=2))
        conv.scale.fill_(0.5)
        masks = conv.mask(emb)
        assert torch.allclose(masks, torch.exp(-0.5 * d)) and masks.max() <= 1
        # brute force at one pixel: sum_k t_k * x_(i+k) * m_ik
        y = conv(x, emb)
        ref = conv.conv.bias.clone()
        for k, (di, dj) in enumerate([(a, b) for a in (-2, 0, 2) for b in (-2, 0, 2)]):
            ref += conv.conv.weight[:, :, k // 3, k % 3] @ x[0, :, i + di, j + dj] * masks[0, k, i, j]
        assert torch.allclose(y[0, :, i, j], ref)


def test_seg_aware_deeplab_layout() -> None:
    model = _meta("seg_aware_conv", 2, 3, 21)
    convs = [c for blk in model.blocks for c in blk]
    assert len(convs) == 13 and sum(isinstance(m, SegAwareConv) for m in model.modules()) == 14  # + fc6
    assert [c.dilation for c in convs] == [1] * 10 + [2] * 3 and model.fc6.dilation == 12
    assert model.fc6.conv.out_channels == 1024 and model.fc7.out_channels == 1024
    assert [p.stride for p in model.pools] == [2, 2, 2, 1, 1]  # output stride 8
    assert model.embedding.embed.out_channels == 64
    assert model.embedding.embed.in_channels == 3 + 64 + 128 + 256  # input, emb1_2, emb2_2, emb3_3


def test_auto_deeplab_found_path_and_cell() -> None:
    assert NETWORK_PATH == (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)
    model = _meta("auto_deeplab", 2, 3, 19)  # Auto-DeepLab-S, F = 20
    filters = [cell.out_channels // 5 for cell in model.cells]
    assert filters == [20 * 2**s for s in NETWORK_PATH]  # filter multiplier doubles per level
    downs = [2 if s > p else 1 for p, s in zip((0, *NETWORK_PATH[:-1]), NETWORK_PATH, strict=True)]
    assert [cell.stride for cell in model.cells] == downs  # only the cells going one level deeper downsample
    cell = create_model("auto_deeplab", 2, 1, 2, filter_multiplier=2).cells[3]  # level 0 -> 1
    assert cell(torch.randn(1, 10, 16, 16), torch.randn(1, 10, 16, 16)).shape == (1, 5 * 4, 8, 8)
    ops = model.cells[0].ops
    kinds = [("sep" if isinstance(o, SeparableOperation) else "atr" if isinstance(o, AtrousOperation) else "?")
             for o in ops]
    assert kinds == ["atr", "sep", "sep", "atr", "sep", "sep", "sep", "sep", "sep", "atr"]
    assert model.aspp.branches[1].conv.in_channels == 5 * 40  # last cell at level 1 (stride 8)
    assert model.project.conv.in_channels == 5 * 20  # decoder features from the third cell (stride 4)
    # Table 3: Auto-DeepLab-L (F = 48) has 44.42M parameters
    large = count_parameters(_meta("auto_deeplab", 2, 3, 19, variant="l"))
    assert math.isclose(large, 44_420_000, rel_tol=0.02)
    with pytest.raises(ModelError, match="variant"):
        create_model("auto_deeplab", 2, 3, 2, variant="xl")


def test_multipath_net_paths_and_fusion() -> None:
    model = _meta("multipath_net", 2, 2, 2)
    assert len(model.paths) == 2 and model.groups == (1, 1)
    assert [len(level) for level in model.paths[0].levels] == [1, 3, 3, 3, 2]
    assert len(model.fuse) == 5 and all(f[1].in_channels == 2 * 32 and f[1].out_channels == 32 for f in model.fuse)
    assert all(isinstance(p.pool, nn.AvgPool2d) for p in model.paths)
    grouped = create_model("multipath_net", 2, 4, 2, features=4, modality_channels=(3, 1))
    assert [p.conv0[0].in_channels for p in grouped.paths] == [3, 1]
    with pytest.raises(ModelError, match="sum to in_channels"):
        create_model("multipath_net", 2, 4, 2, modality_channels=(2, 1))


def test_banet_modules_and_outputs() -> None:
    model = _meta("banet", 2, 3, 2, deep_supervision=True, boundary_heads=True)
    assert model.encoder.output_stride == 8
    assert [b.conv2.conv.dilation[0] for b in model.encoder.layer4] == [4, 4, 4]
    assert [[p.pool.kernel_size for p in m.pools] for m in model.mtl] == [[5, 7], [5, 7], [3, 5], [3, 5]]
    assert model.aspp.rates == (6, 12, 18) and all(m.reduce.out_channels == 128 for m in model.mtl)
    small = create_model("banet", 2, 1, 2, **get_model_info("banet").test_kwargs[2], deep_supervision=True,
                         boundary_heads=True).train()
    x = torch.randn(2, 1, 64, 64)
    outs, edges = small.forward_with_boundaries(x)
    assert len(outs) == 5 and len(edges) == 4 and all(o.shape == (2, 2, 64, 64) for o in outs + edges)
    with pytest.raises(ModelError, match="boundary_heads"):
        create_model("banet", 2, 1, 2, **get_model_info("banet").test_kwargs[2]).forward_with_boundaries(x)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 2:6, 2:6] = 1
    edge = boundary_target(labels)[0]
    assert edge[3, 3] == 0 and edge[2, 2] == 1 and edge[1, 1] == 1 and edge[0, 0] == 0  # a band around the border


@pytest.mark.parametrize(("name", "modules"), [("vovnet39", [1, 1, 2, 2]), ("vovnet57", [1, 1, 4, 3])])
def test_vovnet_one_shot_aggregation(name: str, modules: list[int]) -> None:
    with torch.device("meta"):
        model = create_backbone(name, 2, 3)
    stages = [getattr(model, f"stage{i}") for i in range(2, 6)]
    assert [len(s.blocks) for s in stages] == modules
    assert model.out_channels == [64, 256, 512, 768, 1024] and model.strides == [2, 4, 8, 16, 32]
    osa = stages[1].blocks[0]
    assert len(osa.layers) == 5 and osa.concat.conv.in_channels == 256 + 5 * 160  # input + all five outputs, once
    assert [b.identity for s in stages for b in s.blocks] == [i > 0 for n in modules for i in range(n)]
    assert get_backbone_info(name).paper_params == {"vovnet39": 22_600_296, "vovnet57": 36_640_296}[name]


def test_osnet_omni_scale_blocks_and_key_map() -> None:
    with torch.device("meta"):
        model = create_backbone("osnet", 2, 3)
    assert model.out_channels == [64, 256, 384, 512] and model.strides == [2, 4, 8, 16]
    block = model.conv2[0]
    assert [len(s) if isinstance(s, nn.Sequential) else 1 for s in (block.conv2a, block.conv2b, block.conv2c,
                                                                    block.conv2d)] == [1, 2, 3, 4]
    assert block.conv2a.conv2.groups == block.conv2a.conv2.in_channels == 64  # depthwise, C/4 channels
    assert block.gate.fc1.out_channels == 64 // 16
    x = torch.randn(1, 8, 5, 5)
    gate = create_backbone("osnet", 2, 1, width=0.125).conv2[0].gate
    assert torch.allclose(gate(x) / x, (gate(x) / x)[..., :1, :1].expand_as(x))  # one weight per channel
    key_map = get_backbone_info("osnet").key_maps["torchvision"]
    assert key_map("conv2.0.conv2a.bn.running_var", model) == "conv2.0.conv2a.norm.running_var"
    assert key_map("conv2.2.0.conv.weight", model) == "conv2.2.0.conv.weight"
    assert key_map("fc.0.weight", model) is None and key_map("classifier.bias", model) is None
    vov = get_backbone_info("vovnet39").key_maps["torchvision"]
    assert vov("stem.stem_3/norm.weight", model) == "stem.2.norm.weight"
    assert vov("stage4.OSA4_2.layers.3.OSA4_2_3/conv.weight", model) == "stage4.blocks.1.layers.3.conv.weight"
    assert vov("stage5.OSA5_1.concat.OSA5_1_concat/norm.bias", model) == "stage5.blocks.0.concat.norm.bias"
    assert vov("classifier.weight", model) is None


# --- each learns on a real image ----------------------------------------------------------------------------------
# (steps, lr, factor): the stride-8/32 VGG networks without BN (MultiNet, the segmentation-aware DeepLab-LargeFOV) fall
# more slowly on the 64x64 coins than the others, so their bar is lower.
LEARN_2D = {
    "multinet": (40, 1e-3, 0.7),
    "pixeldcn": (20, 1e-3, 0.6),
    "seg_aware_conv": (30, 1e-3, 0.93),
    "auto_deeplab": (25, 1e-2, 0.6),
    "multipath_net": (20, 1e-3, 0.6),
    "banet": (25, 3e-3, 0.6),
}


@pytest.mark.parametrize("name", list(LEARN_2D))
def test_each_learns_on_coins(name: str) -> None:
    steps, lr, factor = LEARN_2D[name]
    x, y = coins_task(64, 1)
    torch.manual_seed(0)
    extra = {"dropout": 0.0} if name == "seg_aware_conv" else {}
    model = create_model(name, 2, 1, 2, **get_model_info(name).test_kwargs[2], **extra)
    assert_learns(model, x, y, steps=steps, lr=lr, factor=factor)


def test_pixeldcn_learns_on_mni_3d() -> None:
    x, y = mni_task(32, 1)
    torch.manual_seed(0)
    model = create_model("pixeldcn", 3, 1, 2, **get_model_info("pixeldcn").test_kwargs[3])
    assert_learns(model, x, y, steps=20, lr=1e-3)
