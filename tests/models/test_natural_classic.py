"""Structure checks of the classic natural-image models (FCN to DeepLabv3+) against their papers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medseg.errors import ModelError
from medseg.models import create_model, paper_parameter_count
from medseg.models.natural.classic._modules import ASPP, BilinearUpsample, L2Norm, PyramidPooling, bilinear_kernel
from medseg.models.natural.classic.dilated_context import ContextModule

SMALL_VGG = {"backbone_kwargs": {"width": 0.125}, "fc_channels": 16}
SMALL_RESNET = {"backbone": "resnet18", "backbone_kwargs": {"width": 0.125}}


def _meta(name: str, dims: int = 2, in_channels: int = 3, out_channels: int = 21, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, dims, in_channels, out_channels, **kwargs)


@pytest.mark.parametrize(("name", "skips", "factor"), [("fcn32s", 0, 32), ("fcn16s", 1, 16), ("fcn8s", 2, 8)])
def test_fcn_skip_fusion_scales(name: str, skips: int, factor: int) -> None:
    model = create_model(name, 2, 1, 4, **SMALL_VGG)
    strides = [model.backbone.strides[i] for i in model.skip_levels]
    assert strides == [16, 8][:skips]  # pool4 first, then pool3
    assert model.final_factor == factor
    assert not model.upsample_final.learnable and not list(model.upsample_final.parameters())
    assert all(up.learnable and up.factor == 2 for up in model.upscores)
    assert torch.count_nonzero(model.score_fr.weight) == 0  # zero-initialised scoring layers (Section 4.2)
    with pytest.raises(ModelError, match="32"):
        model(torch.randn(1, 1, 48, 64))


def test_bilinear_upsampling_interpolates() -> None:
    k = bilinear_kernel(2, 2)
    assert k.shape == (4, 4) and torch.allclose(k[1:3, 1:3], torch.full((2, 2), 0.5625))
    for learnable in (True, False):
        up = BilinearUpsample(2, 3, 4, learnable=learnable)
        out = up(torch.ones(1, 3, 5, 5))
        assert out.shape == (1, 3, 20, 20)
        assert torch.allclose(out[..., 4:-4, 4:-4], torch.ones(1, 3, 12, 12))  # constant interior
    ramp = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 1, 6, 6)
    out = BilinearUpsample(2, 1, 2, learnable=False)(ramp)[0, 0, 3, 2:-2]
    assert torch.allclose(out.diff(), torch.full_like(out.diff(), 0.5))  # linear between the samples


def test_segnet_unpools_with_the_encoder_indices() -> None:
    model = create_model("segnet", 2, 1, 3, backbone_kwargs={"width": 0.125}).eval()
    pooled: list[torch.Tensor] = []
    unpooled: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    model.pool.register_forward_hook(lambda m, a, out: pooled.append(out[1]))
    model.unpool.register_forward_hook(lambda m, a, out: unpooled.append((a[0], a[1], out)))
    with torch.no_grad():
        model(torch.randn(1, 1, 64, 64))
    assert len(pooled) == len(unpooled) == 5
    for (value, indices, out), enc_indices in zip(unpooled, reversed(pooled), strict=True):
        assert indices is enc_indices  # the decoder uses the memorised max-pooling indices
        flat = out.flatten(2)
        assert torch.equal(flat.gather(2, indices.flatten(2)), value.flatten(2))
        assert torch.count_nonzero(flat) <= indices[0, 0].numel() * out.shape[1]  # sparse: zeros elsewhere
    decoder_out = [block[-1].conv.out_channels for block in model.decoder]
    assert decoder_out == [64, 32, 16, 8, 3]  # 512, 256, 128, 64, K at width 1/8
    assert model.decoder[-1][-1].conv.kernel_size == (3, 3) and not hasattr(model.decoder[-1][-1], "norm")


def test_deconvnet_fc6_is_unpadded_and_mirrored() -> None:
    model = _meta("deconvnet")
    assert model.fc.fc6.kernel_size == (7, 7) and model.fc.fc6.padding == (0, 0) and model.fc.fc6.out_channels == 4096
    assert model.deconv_fc6.deconv.kernel_size == (7, 7) and model.deconv_fc6.deconv.out_channels == 512
    outs = [[layer.deconv.out_channels for layer in block] for block in model.decoder]
    assert outs == [[512, 512, 512], [512, 512, 256], [256, 256, 128], [128, 64], [64, 64]]
    small = create_model("deconvnet", 2, 1, 2, **SMALL_VGG, fc6_kernel=2)
    with pytest.raises(ModelError, match="at least 64"):
        small(torch.randn(1, 1, 32, 64))


def test_deeplab_v1_large_fov() -> None:
    model = _meta("deeplab_v1")
    assert model.backbone.output_stride == 8 and model.backbone.strides[-1] == 8
    fc6 = model.fc.fc6
    assert fc6.kernel_size == (3, 3) and fc6.dilation == (12, 12) and fc6.out_channels == 1024
    assert model.backbone.blocks[4][0].conv.dilation == (2, 2)  # conv5 at rate 2


def test_parsenet_context_module() -> None:
    norm = L2Norm(4, scale=3.0)
    y = norm(torch.randn(2, 4, 5, 5))
    assert torch.allclose(y.norm(dim=1), torch.full((2, 5, 5), 3.0), atol=1e-5)
    model = create_model("parsenet", 2, 1, 3, **SMALL_VGG, fc6_kernel=3)
    assert model.score.in_channels == 2 * 16  # local fc7 features + unpooled global feature
    reduced = _meta("parsenet", fc="reduced")
    assert reduced.backbone.output_stride == 8 and reduced.fc.fc6.dilation == (12, 12)


def test_deeplab_v2_aspp_rates_are_summed() -> None:
    model = create_model("deeplab_v2", 2, 1, 3, **SMALL_RESNET).eval()
    assert model.aspp.rates == (6, 12, 18, 24) and model.backbone.output_stride == 8
    assert [b.conv.dilation for b in model.aspp.branches] == [(r, r) for r in (6, 12, 18, 24)]
    x = torch.randn(1, model.backbone.out_channels[-1], 9, 9)
    with torch.no_grad():
        assert torch.allclose(model.aspp(x), sum(b(x) for b in model.aspp.branches), atol=1e-5)


@pytest.mark.parametrize(("output_stride", "rates", "grid"), [(16, (6, 12, 18), [2, 4, 8]), (8, (12, 24, 36),
                                                                                              [4, 8, 16])])
def test_deeplabv3_aspp_and_multi_grid(output_stride: int, rates: tuple[int, ...], grid: list[int]) -> None:
    model = _meta("deeplabv3", output_stride=output_stride)
    assert model.aspp.rates == rates
    assert [b.conv.dilation[0] for b in model.aspp.branches[1:4]] == list(rates)
    assert model.aspp.branches[0].conv.kernel_size == (1, 1) and len(model.aspp.branches) == 5  # + image pooling
    assert model.block4_rates == grid
    assert [b.conv2.conv.dilation[0] for b in model.backbone.layer4] == grid
    assert model.aspp.project.conv.in_channels == 5 * 256


def test_aspp_image_pooling_is_global() -> None:
    aspp = ASPP(2, 4, 6, (1, 2, 3), dropout=0.0).eval()
    x = torch.randn(2, 4, 7, 9)
    pooled = aspp.branches[-1](x)
    assert pooled.shape == (2, 6, 7, 9) and torch.allclose(pooled, pooled[..., :1, :1].expand_as(pooled))


def test_deeplabv3plus_decoder() -> None:
    model = _meta("deeplabv3plus")
    assert model.separable and model.aspp.rates == (6, 12, 18)
    assert model.project.conv.in_channels == 256 and model.project.conv.out_channels == 48
    assert model.decoder[0].dw.conv.in_channels == 256 + 48 and model.decoder[1].pw.conv.out_channels == 256
    resnet = _meta("deeplabv3plus", backbone="resnet101")
    assert not resnet.separable and resnet.project.conv.in_channels == 256
    small = create_model("deeplabv3plus", 2, 1, 2, backbone_kwargs={"width": 0.125, "middle_blocks": 1},
                         aspp_channels=8, low_level_channels=4, decoder_channels=8).eval()
    shapes = []
    small.project.register_forward_hook(lambda m, a, out: shapes.append((a[0].shape, out.shape)))
    with torch.no_grad():
        small(torch.randn(1, 1, 64, 64))
    assert shapes[0][0][2:] == (16, 16) and shapes[0][1][1] == 4  # stride-4 low-level features


def test_pspnet_pyramid_and_aux() -> None:
    model = _meta("pspnet", deep_supervision=True)
    assert model.ppm.bins == (1, 2, 3, 6)
    assert [lvl[1].conv.out_channels for lvl in model.ppm.levels] == [512] * 4 and model.ppm.out_channels == 4096
    assert [m.conv.out_channels for m in model.backbone.stem] == [64, 64, 128]  # deep stem
    assert model.backbone.layer1[0].conv1.conv.in_channels == 128
    assert [b.conv2.conv.dilation[0] for b in model.backbone.layer3] == [2] * 23
    assert [b.conv2.conv.dilation[0] for b in model.backbone.layer4] == [4] * 3
    assert model.aux[0].conv.in_channels == 1024 and model.aux[0].conv.out_channels == 256
    ppm = PyramidPooling(3, 8, (1, 2))
    assert ppm(torch.randn(2, 8, 5, 6, 7)).shape == (2, 16, 5, 6, 7)
    plain = create_model("pspnet", 2, 1, 2, **SMALL_RESNET, head_channels=8)
    assert plain.aux is None and isinstance(plain.train()(torch.randn(2, 1, 32, 32)), torch.Tensor)


def test_context_module_basic_and_large() -> None:
    basic = ContextModule(2, 5, "basic")
    assert sum(c.weight.numel() for c in basic.convolutions()) == 64 * 5**2  # "64C^2 parameters"
    assert [c.dilation[0] for c in basic.convolutions()] == [1, 1, 2, 4, 8, 16, 1, 1]
    x = torch.rand(1, 5, 12, 12)
    assert torch.allclose(basic(x), x)  # identity initialisation
    large = ContextModule(2, 5, "large")
    assert [c.out_channels for c in large.convolutions()] == [10, 10, 20, 40, 80, 160, 160, 5]
    assert (large(x) - x).abs().max() < 0.05
    model = _meta("dilated_context")
    assert model.fc.fc6.dilation == (4, 4) and model.fc.fc6.kernel_size == (7, 7)


@pytest.mark.parametrize(("name", "count"), [
    ("fcn32s", 134_346_581), ("fcn8s", 134_376_863), ("segnet", 29_449_355), ("deconvnet", 251_797_461),
    ("deeplab_v1", 20_505_429), ("deeplab_v2", 44_048_532), ("deeplabv3", 58_040_661),
    ("deeplabv3plus", 41_055_413), ("pspnet", 68_073_706),
])
def test_paper_configuration_counts(name: str, count: int) -> None:
    assert paper_parameter_count(name) == count


def test_dilated_context_equals_the_authors_voc_network() -> None:
    # (in, out, kernel) of every convolution of fyu/dilation models/dilation8_pascal_voc_deploy.prototxt, each with a
    # bias: the dilated VGG-16 front-end, fc6 (7x7) and fc7, the 21 scores, then the large context module (2C..32C, C).
    layers = [(3, 64, 3), (64, 64, 3), (64, 128, 3), (128, 128, 3), (128, 256, 3), (256, 256, 3), (256, 256, 3),
              (256, 512, 3), *[(512, 512, 3)] * 5, (512, 4096, 7), (4096, 4096, 1), (4096, 21, 1),
              (21, 42, 3), (42, 42, 3), (42, 84, 3), (84, 168, 3), (168, 336, 3), (336, 672, 3), (672, 672, 3),
              (672, 21, 1)]
    assert paper_parameter_count("dilated_context") == sum(i * o * k * k + o for i, o, k in layers) == 141_149_720
