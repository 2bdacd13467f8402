"""Multi-modal family (ACNet, SSMA): the channel groups, the fusion modules and the layout against the papers/official
code, and each learns on a real image given as two channel groups (the grey image and its gradient magnitude)."""

from __future__ import annotations

import pytest
import torch
from testutils import assert_learns, coins_task, mni_task
from torch import nn

from medseg.errors import ModelError
from medseg.models import create_model, get_model_info, list_models
from medseg.models.multimodal.acnet import ACM, TransBasicBlock
from medseg.models.multimodal.ssma import SSMABlock, _SplitConv

KEYS = ["acnet", "ssma"]


def _meta(name: str, dims: int, cin: int, cout: int, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, dims, cin, cout, **kwargs)


def _two_groups(x: torch.Tensor) -> torch.Tensor:
    """The image and its (z-scored) gradient magnitude as two channel groups."""
    dims = x.dim() - 2
    grad = torch.stack(torch.gradient(x[:, 0], dim=tuple(range(1, 1 + dims))), 0).square().sum(0).sqrt()[:, None]
    return torch.cat([x, (grad - grad.mean()) / grad.std()], dim=1)


def test_family_and_dims() -> None:
    assert set(KEYS) <= set(list_models("multimodal"))
    for key in KEYS:
        assert get_model_info(key).spatial_dims == (2, 3)
        with pytest.raises(ModelError, match="two modality groups"):
            create_model(key, 2, 1, 2)


def test_acnet_branches_attention_and_decoder() -> None:
    model = _meta("acnet", 2, 4, 40, deep_supervision=True)
    assert model.groups == (3, 1)  # RGB + depth by default
    assert model.rgb.stem.conv.in_channels == 3 and model.depth.stem.conv.in_channels == 1
    assert not hasattr(model.fusion, "stem") and len(model.fusion.layer3) == 6  # fusion branch: ResNet-50 stages only
    assert [a[1].in_channels for a in model.acm_rgb] == [64, 256, 512, 1024, 2048]
    assert [a[1].in_channels for a in model.acm_depth] == [64, 256, 512, 1024, 2048]
    assert [len(stage) for stage in model.up] == [6, 4, 3, 3] and len(model.final_conv) == 3
    assert [a.conv.out_channels for a in model.agant] == [64, 64, 128, 256, 512]
    assert model.deep_supervision_scales == [(1, 1), (2, 2), (4, 4), (8, 8), (16, 16)]
    acm = ACM(2, 6)
    x = torch.randn(2, 6, 5, 7)
    w = acm(x)
    assert w.shape == (2, 6, 1, 1) and bool(((w > 0) & (w < 1)).all())  # channel weights in (0, 1)
    block = TransBasicBlock(2, 8, 4, stride=2)
    assert block(torch.randn(1, 8, 5, 5)).shape == (1, 4, 10, 10)
    grouped = create_model("acnet", 2, 2, 2, width=0.125, modality_channels=(1, 1))
    assert grouped.groups == (1, 1)


def test_acnet_fusion_branch_receives_both_modalities() -> None:
    torch.manual_seed(0)
    model = create_model("acnet", 2, 2, 2, width=0.125).eval()
    x = torch.randn(1, 2, 64, 64)
    fused = []
    model.fusion.layer1.register_forward_hook(lambda m, a, out: fused.append(a[0]))
    with torch.no_grad():
        model(x)
        rgb = model.rgb(x[:, :1])[0]
        depth = model.depth(x[:, 1:])[0]
        m0 = rgb * model.acm_rgb[0](rgb) + depth * model.acm_depth[0](depth)
    assert torch.allclose(fused[0], model.pool_fused(m0), atol=1e-6)


def test_ssma_block_and_layout() -> None:
    model = _meta("ssma", 2, 6, 12)
    assert model.groups == (3, 3)
    assert model.expert1.input_norm.num_features == 3 and model.expert2.conv1.conv.in_channels == 3
    assert model.fuse.reduce.in_channels == 512 and model.fuse.reduce.out_channels == 32  # eta = 16
    assert model.fuse_skip8.reduce.in_channels == 48 and model.fuse_skip8.reduce.out_channels == 8
    assert [b[1].conv.dilation[0] for b in model.expert1.easpp.branches] == [3, 6, 12]
    split_units = [[isinstance(u.conv2[0], _SplitConv) if isinstance(u.conv2, nn.Sequential) else False
                    for u in getattr(model.expert1, f"block{b}")] for b in (1, 2, 3, 4)]
    assert split_units == [[False] * 3, [False] * 3 + [True], [False] * 2 + [True] * 4, [True] * 3]
    assert model.expert1.block4[0].conv2[0].a.dilation == (2, 2)  # block 4: both halves dilated
    assert model.final[0].kernel_size == (8, 8) and model.final[0].stride == (4, 4)
    small = create_model("ssma", 2, 2, 2, width=0.125, deep_supervision=True)
    assert small.loss_weights == (1.0, 0.6, 0.5)
    shapes = []
    small.expert1.easpp.register_forward_hook(lambda m, a, out: shapes.append(out.shape[2:]))
    small.eval()(torch.randn(1, 2, 64, 64))
    assert tuple(shapes[0]) == (4, 4)  # eASPP at output stride 16
    block = SSMABlock(2, 3, 2, 4)
    with torch.no_grad():
        block.expand.bias.fill_(50.0)  # saturated gates: the recalibration is the identity
        block.expand.weight.zero_()
        a, b = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
        assert torch.allclose(block(a, b), block.project(torch.cat([a, b], 1)), atol=1e-6)


@pytest.mark.parametrize(("name", "steps", "lr"), [("acnet", 20, 1e-3), ("ssma", 30, 3e-3)])
def test_each_learns_on_coins_with_two_channel_groups(name: str, steps: int, lr: float) -> None:
    x, y = coins_task(64, 1)
    x = _two_groups(x)
    torch.manual_seed(0)
    model = create_model(name, 2, 2, 2, **get_model_info(name).test_kwargs[2])
    assert_learns(model, x, y, steps=steps, lr=lr)


def test_acnet_learns_on_mni_3d() -> None:
    x, y = mni_task(32, 1)
    x = _two_groups(x)
    torch.manual_seed(0)
    model = create_model("acnet", 3, 2, 2, **get_model_info("acnet").test_kwargs[3])
    assert_learns(model, x, y, steps=25, lr=3e-3)
