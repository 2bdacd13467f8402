"""Medical U-Net variants (M-Net, MDU-Net, DUNet, RA-UNet, dense multi-path U-Net, IVD-Net, SDU-Net, bridged U-Net,
SUNet): the deformable convolution, structure facts from the papers and the authors' code, planned topologies, and
that each learns on a real image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from testutils import assert_learns, coins_task, mni_task
from torch import nn

from medseg.errors import ModelError
from medseg.models import count_parameters, create_model, create_model_from_plans, get_model_info
from medseg.models.attention.ra_unet import AttentionModule, PreActBottleneck
from medseg.models.deformable import DeformConv
from medseg.models.dense.stacked_dense_unet import ChannelAggregationBlock, ScaleAggregationTopology
from medseg.models.multimodal.dense_multipath_unet import DilatedInceptionModule

MODELS = ["mnet", "mdu_net", "dunet", "ra_unet", "dense_multipath_unet", "ivd_net", "stacked_dense_unet",
          "bridged_unet", "sunet"]
MULTIMODAL = {"dense_multipath_unet", "ivd_net"}


def _meta(name: str, dims: int, cin: int, cout: int, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, dims, cin, cout, **kwargs)


# --- deformable convolution -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("dims", "stride", "dilation"), [(2, 1, 1), (2, 2, 1), (2, 1, 2), (3, 1, 1), (3, 2, 1)])
def test_deform_conv_with_zero_offsets_is_a_regular_convolution(dims: int, stride: int, dilation: int) -> None:
    torch.manual_seed(0)
    layer = DeformConv(dims, 3, 4, 3, stride=stride, dilation=dilation)
    x = torch.randn(2, 3, *([9] * dims))
    conv = F.conv2d if dims == 2 else F.conv3d
    expected = conv(x, layer.weight, layer.conv.bias, stride=stride, padding=dilation, dilation=dilation)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_deform_conv_offsets_move_the_sampling_points() -> None:
    layer = DeformConv(2, 1, 1, 1, bias=False)  # 1x1: output = weight * x(p + offset)
    nn.init.ones_(layer.conv.weight)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    layer.offset.bias.data = torch.tensor([0.0, 1.0])  # one pixel to the right
    assert torch.equal(layer(x)[0, 0, :, :3], x[0, 0, :, 1:])
    assert torch.equal(layer(x)[0, 0, :, 3], torch.zeros(4))  # zero outside the image
    layer.offset.bias.data = torch.tensor([0.5, 0.0])  # half a pixel down: bilinear
    assert torch.allclose(layer(x)[0, 0, :3], (x[0, 0, :3] + x[0, 0, 1:]) / 2)
    layer3 = DeformConv(3, 2, 2, 3)
    y = layer3(torch.randn(1, 2, 5, 6, 7))
    assert y.shape == (1, 2, 5, 6, 7) and layer3.offset.out_channels == 81  # 3 coordinates x 27 points
    y.sum().backward()
    assert layer3.offset.weight.grad.abs().sum() > 0  # the offsets learn


@pytest.mark.parametrize("dims", [2, 3])
def test_deform_conv_with_a_whole_voxel_shift_is_a_convolution_of_the_shifted_input(dims: int) -> None:
    # every kernel point moved one voxel along the last axis: the regular convolution of the input shifted by one
    torch.manual_seed(0)
    layer = DeformConv(dims, 3, 4, 3)
    shift = torch.zeros(layer.n_points, dims)
    shift[:, -1] = 1.0
    layer.offset.bias.data = shift.flatten()
    x = torch.randn(2, 3, *([7] * dims))
    shifted = torch.zeros_like(x)
    shifted[..., :-1] = x[..., 1:]
    conv = F.conv2d if dims == 2 else F.conv3d
    expected = conv(shifted, layer.weight, layer.conv.bias, padding=1)
    # from the second voxel on (the first one's left neighbour is x's first voxel, not the shifted input's padding)
    assert torch.allclose(layer(x)[..., 1:], expected[..., 1:], atol=1e-5)


def test_modulated_deform_conv_starts_at_half_weight() -> None:
    torch.manual_seed(0)
    layer = DeformConv(2, 2, 3, 3, bias=False, modulated=True)
    x = torch.randn(1, 2, 6, 6)
    assert torch.allclose(layer(x), 0.5 * F.conv2d(x, layer.weight, padding=1), atol=1e-5)  # sigmoid(0) = 0.5


# --- structure ------------------------------------------------------------------------------------------------------

def test_dunet_deformable_blocks_where_the_authors_put_them() -> None:
    model = _meta("dunet", 2, 1, 1)
    deformable = [i for i, block in enumerate(model.encoder) if isinstance(block[0].conv, DeformConv)]
    assert deformable == [1, 2]  # encoder levels 1 and 2 (down1, down2)
    # decoder blocks are coarsest first: levels 3, 2, 1, 0; levels 1 and 0 (up3, up4) are deformable
    assert [isinstance(block[0].conv, DeformConv) for block in model.decoder] == [False, False, True, True]
    assert sum(isinstance(m, DeformConv) for m in model.modules()) == 8
    assert model.head.in_channels == 16 + 1  # the input image is concatenated before the output convolution
    assert [block[1].conv.out_channels for block in model.decoder] == [64, 32, 16, 16]


def test_multipath_hyperdense_channels_follow_the_authors_code() -> None:
    model = _meta("ivd_net", 2, 4, 2)
    # IVD_Net_asym(1, 2, 32): levels take 1, 4*32, 12*32, 28*32 channels, the bridge 60*32
    assert model.level_in_channels == (1, 128, 384, 896, 1920)
    assert [len(paths) for paths in model.encoder] == [4, 4, 4, 4]  # one path per modality
    branch = model.encoder[0][0].branches[1]
    assert [m.kernel_size for m in branch if isinstance(m, nn.Conv2d)] == [(3, 1), (1, 3)]  # factorised 3x3
    decoder_branch = model.decoder[0].branches[4]
    assert [(m.kernel_size, m.dilation) for m in decoder_branch if isinstance(m, nn.Conv2d)] == [((3, 3), (4, 4))]
    dense = _meta("dense_multipath_unet", 2, 5, 2)
    assert [len(paths) for paths in dense.encoder] == [5] * 4
    assert not any(m.kernel_size == (3, 1) for m in dense.modules() if isinstance(m, nn.Conv2d))
    module = DilatedInceptionModule(3, 2, 4, factorised=True)
    assert module(torch.randn(1, 2, 6, 6, 6)).shape == (1, 4, 6, 6, 6)


def test_multipath_paths_are_per_modality() -> None:
    model = create_model("ivd_net", 2, 3, 2, features_per_stage=(4, 8, 8)).eval()
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    out = model.encoder[0][1](x[:, 1:2])  # the first module of path 1 sees only modality 1
    assert out.shape == (1, 4, 16, 16)
    with pytest.raises(ModelError, match="3 input channels"):
        model(torch.randn(1, 2, 16, 16))


def test_sunet_widths_and_heads() -> None:
    model = _meta("sunet", 3, 4, 2)
    assert [block.conv1.conv.in_channels for block in model.encoder] == [32, 64, 128, 256]  # down steps double
    assert model.inconv.in_channels == 4  # the modalities are channels of one path
    assert model.head.kernel_size == (3, 1, 1)
    assert _meta("sunet", 2, 4, 2).head.kernel_size == (1, 1)
    assert count_parameters(_meta("sunet", 2, 4, 2)) == 2_347_970  # the Keras code in 2D, same layout


def test_ra_unet_attention_modules_pool_to_the_bottleneck() -> None:
    model = _meta("ra_unet", 3, 1, 1)
    assert [len(m.pools) for m in model.attention] == [1, 2, 3, 4]  # levels 4, 3, 2, 1 (encoder_depth 1..4)
    assert [m.pre.shortcut.out_channels for m in model.attention] == [256, 128, 64, 32]
    assert all(isinstance(b.shortcut, nn.Conv3d) for b in model.modules() if isinstance(b, PreActBottleneck))
    assert count_parameters(_meta("ra_unet", 2, 1, 1)) == 737_897  # build_res_atten_unet_2d(filter_num=4)
    small = create_model("ra_unet", 2, 1, 2, features_per_stage=(4, 4, 8, 8)).eval()
    small(torch.randn(1, 1, 16, 16))
    assert [tuple(m.shape) for m in small.attention_masks] == [(1, 8, 4, 4), (1, 4, 8, 8)]
    assert all(((m > 0) & (m < 1)).all() for m in small.attention_masks)
    attention = AttentionModule(2, 4, [(2, 2), (2, 2)])
    assert attention(torch.randn(1, 4, 8, 8)).shape == (1, 4, 8, 8)


def test_sdu_channel_and_scale_aggregation() -> None:
    cab = ChannelAggregationBlock(2, 64)
    convs = [m for m in cab.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs if m.groups == 1] == [32, 16, 8]  # C/2, C/4, C/8 cascade
    assert sorted(m.groups for m in convs if m.groups > 1) == [16, 32]  # two depthwise convolutions
    assert cab(torch.randn(1, 64, 8, 8)).shape == (1, 64, 8, 8)
    sat = ScaleAggregationTopology(2, 64)
    assert sum(isinstance(m, ChannelAggregationBlock) for m in sat.modules()) == 9
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in sat.modules()) == 3
    model = _meta("stacked_dense_unet", 2, 3, 68)
    assert sum(isinstance(m, DeformConv) for m in model.modules()) == 5  # 2 per stack + 1 between the stacks
    assert count_parameters(_meta("stacked_dense_unet", 2, 3, 68, deformable=False)) == 10_094_728  # net_dcn=0
    small = create_model("stacked_dense_unet", 2, 1, 2, features=(8, 8, 16), levels=2, n_stacks=3,
                         deep_supervision=True).train()
    outs = small(torch.randn(1, 1, 32, 32))
    assert [tuple(o.shape[2:]) for o in outs] == [(32, 32), (16, 16), (16, 16)]  # heatmaps at half resolution
    assert small.loss_weights == (1.0, 1.0, 1.0)


def test_mnet_legs_and_2d_only() -> None:
    model = _meta("mnet", 2, 3, 2)
    assert model.converter.conv.kernel_size == (7, 7) and model.converter.conv.in_channels == 3  # 2n+1 slices
    # left leg: every encoder step after the first also sees the converted slice
    assert [step.conv1.conv.in_channels for step in model.encoder] == [1, 33, 65, 129, 257]
    assert model.head.in_channels == 32 + 64 + 128 + 256  # right leg: all decoder steps
    with pytest.raises(ModelError, match="2D only"):
        create_model("mnet", 3, 1, 2)


def test_mdu_net_dense_connection_widths() -> None:
    model = _meta("mdu_net", 2, 3, 2)
    assert [unit[0].conv.in_channels for unit in model.encoder] == [3, 64, 64 + 128, 128 + 256, 256 + 512]
    # decoder level 0: up-conv (64) + decoder level 2 (256) + cross: encoder 0 (64) and 1 (128)
    assert model.decoder[-1][0].conv.in_channels == 64 + 256 + 64 + 128
    plain = _meta("mdu_net", 2, 3, 2, encoder_connections=1, cross_connections=1, decoder_connections=1)
    assert [unit[0].conv.in_channels for unit in plain.decoder] == [1024, 512, 256, 128]  # U-Net's


def test_bridged_unet_bridges_decoder_into_second_encoder() -> None:
    model = _meta("bridged_unet", 2, 1, 2)
    assert [unit[0].conv.in_channels for unit in model.second.encoder] == [64, 64 + 128, 128 + 256, 256 + 512, 512]
    assert isinstance(model.first.encoder[0][0].act, nn.ELU) and isinstance(model.second.encoder[0][0].act, nn.ReLU)


# --- planned topology -----------------------------------------------------------------------------------------------

def _entry(dims: int) -> dict:
    strides = [[1] * dims, [2] * dims, [2] * dims, [2] * dims] if dims == 2 else [[1, 1, 1], [1, 2, 2], [2, 2, 2],
                                                                                  [2, 2, 2]]
    return {"name": "nnunet", "spatial_dims": dims, "in_channels": 2, "out_channels": 3,
            "kwargs": {"kernel_sizes": [[3] * dims] * 4, "strides": strides, "features_per_stage": [8, 16, 16, 32],
                       "n_conv_per_stage": [2] * 4, "n_conv_per_stage_decoder": [2] * 3, "deep_supervision": True}}


PLANNED = {"mnet": (8, 16, 16, 32), "mdu_net": (8, 16, 16, 32), "dunet": (8, 16, 16, 32), "ra_unet": (8, 16, 16, 32),
           "dense_multipath_unet": (8, 16, 16, 32), "ivd_net": (8, 16, 16, 32), "bridged_unet": (8, 16, 16, 32),
           "sunet": None, "stacked_dense_unet": None}


@pytest.mark.parametrize("name", MODELS)
def test_built_from_a_plans_entry(name: str) -> None:
    info = get_model_info(name)
    dims = 3 if 3 in info.spatial_dims else 2
    entry = _entry(dims)
    kwargs = {"features": (8, 8, 8), "levels": 2} if name == "stacked_dense_unet" else {}
    if name == "sunet":
        kwargs = {"base_features": 4}
    model = create_model_from_plans(entry, name=name, overrides=kwargs).eval()
    size = (16, 32, 32) if dims == 3 else (32, 32)
    with torch.no_grad():
        out = model(torch.randn(1, 2, *size))
    assert out.shape == (1, 3, *size)
    if "strides" in info.accepted_kwargs():
        assert model.input_divisor == ((8, 8) if dims == 2 else (4, 8, 8))  # the planned (anisotropic) strides
    if PLANNED[name] is not None:
        assert model.plan.features == PLANNED[name]
    if name == "sunet":
        assert [s.conv.conv.stride for s in model.down] == [(1, 2, 2), (2, 2, 2), (2, 2, 2)]


# --- each learns ------------------------------------------------------------------------------------------------------

def _two_channel(x: torch.Tensor) -> torch.Tensor:
    """The image and its gradient magnitude (Sobel) as two modalities, both z-scored."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    gx = F.conv2d(x, kx, padding=1)
    gy = F.conv2d(x, kx.transpose(2, 3), padding=1)
    grad = (gx.square() + gy.square()).sqrt()
    return torch.cat((x, (grad - grad.mean()) / grad.std()), dim=1)


SMALL_2D = {
    "mnet": {"features_per_stage": (8, 16, 16, 32)},
    "mdu_net": {"features_per_stage": (8, 16, 16, 32)},
    "dunet": {"features_per_stage": (8, 16, 16, 32)},
    "ra_unet": {"features_per_stage": (8, 8, 16, 16)},
    "dense_multipath_unet": {"features_per_stage": (4, 8, 8, 16)},
    "ivd_net": {"features_per_stage": (4, 8, 8, 16)},
    "stacked_dense_unet": {"features": (8, 8, 16), "levels": 2},
    "bridged_unet": {"features_per_stage": (8, 16, 16, 32)},
    "sunet": {"base_features": 8},
}


@pytest.mark.parametrize("name", MODELS)
def test_each_learns_coins_2d(name: str) -> None:
    x, y = coins_task(64)
    if name in MULTIMODAL:
        x = _two_channel(x)
    torch.manual_seed(0)
    model = create_model(name, 2, x.shape[1], 2, **SMALL_2D[name])
    assert_learns(model, x, y, steps=25, lr=3e-3)


SMALL_3D = {  # one model per family (kwargs, Adam learning rate)
    "ra_unet": ({"features_per_stage": (4, 4, 8, 8)}, 1e-2),
    "ivd_net": ({"features_per_stage": (2, 4, 4)}, 2e-2),
    "mdu_net": ({"features_per_stage": (4, 8, 8, 16)}, 1e-2),
    "sunet": ({"base_features": 4}, 1e-2),
}


@pytest.mark.parametrize("name", sorted(SMALL_3D))
def test_each_family_learns_mni_3d(name: str) -> None:
    x, y = mni_task(32, channels=2 if name in MULTIMODAL else 1)
    kwargs, lr = SMALL_3D[name]
    torch.manual_seed(0)
    model = create_model(name, 3, x.shape[1], 2, **kwargs)
    assert_learns(model, x, y, steps=20, lr=lr)
