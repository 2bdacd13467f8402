"""Backbones: levels, output stride by dilation, gradients, parameter counts, pretrained key mapping."""

from __future__ import annotations

import re

import pytest
import torch

from medseg.errors import ModelError
from medseg.models.backbones import (
    backbone_parameter_count,
    create_backbone,
    get_backbone_info,
    list_backbones,
    load_pretrained,
)

ALL = list_backbones()
CASES = [(n, d) for n in ALL for d in get_backbone_info(n).spatial_dims]


def _tiny(name: str, dims: int, **kw):
    torch.manual_seed(0)
    return create_backbone(name, dims, 2, **get_backbone_info(name).test_kwargs, **kw)


def test_registry_lists_the_issue_backbones():
    expected = {"vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50", "resnet101", "drn_c_26", "drn_c_42",
                "drn_d_22", "drn_d_38", "drn_d_54", "mobilenetv2", "xception65", "densenet", "densenet121",
                "densenet161", "hrnetv2_w18", "hrnetv2_w48"}
    assert expected <= set(ALL)
    with pytest.raises(ModelError, match="unknown backbone"):
        create_backbone("nope", 2, 1)


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_levels_have_declared_channels_and_strides(name, dims):
    model = _tiny(name, dims)
    size = 64 if dims == 2 else 32
    x = torch.randn(2, 2, *([size] * dims), requires_grad=True)
    feats = model(x)
    assert len(feats) == len(model.out_channels) == len(model.strides)
    for f, c, s in zip(feats, model.out_channels, model.strides, strict=True):
        assert f.shape == (2, c, *([size // s] * dims)), (name, f.shape, c, s)
    sum(f.float().mean() for f in feats).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "resnet50", "mobilenetv2", "xception65", "densenet121"])
@pytest.mark.parametrize("os_", [8, 16])
def test_output_stride_by_dilation(name, os_):
    ref = _tiny(name, 2)
    model = _tiny(name, 2, output_stride=os_)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    assert model.strides[-1] == os_ and max(model.strides) == os_
    with torch.no_grad():
        feats = model.eval()(torch.randn(1, 2, 64, 64))
    assert feats[-1].shape[-1] == 64 // os_
    dilations = {m.dilation[0] for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    # VGG has no convolution after pool5, so its largest dilation is half the others'
    assert max(dilations) == (32 // os_ if name != "vgg16" else 16 // os_)


def test_designs_with_a_fixed_output_stride_refuse_others():
    assert _tiny("drn_d_22", 2).strides[-1] == 8
    with pytest.raises(ModelError, match="output_stride"):
        create_backbone("drn_c_26", 2, 3, output_stride=32)
    with pytest.raises(ModelError, match="output_stride"):
        create_backbone("hrnetv2_w18", 2, 3, output_stride=16)


def test_hrnetv2_representation_concatenates_branches():
    model = _tiny("hrnetv2_w18", 2)
    rep = model.representation(model(torch.randn(2, 2, 64, 64)))
    assert rep.shape == (2, model.representation_channels, 16, 16)
    assert model.representation_channels == 4 * (1 + 2 + 4 + 8)


@pytest.mark.parametrize("name", ALL)
def test_parameter_count_matches_published_figure(name):
    info = get_backbone_info(name)
    assert info.source
    if info.paper_params is None:
        pytest.skip(f"{name}: no verified published figure")
    ours = backbone_parameter_count(name)
    assert abs(ours - info.paper_params) / info.paper_params < 0.02, (name, ours, info.paper_params)


# --- pretrained key layouts (synthetic state dicts in the libraries' names) --------------------------------------

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix, c):
    return {f"{prefix}.{k}": ((c,) if k != "num_batches_tracked" else ()) for k in BN}


def _tv_resnet50():
    sd = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    cin = 64
    for i, (n, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)):
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            sd[f"{p}.conv1.weight"] = (planes, cin, 1, 1)
            sd.update(_bn(f"{p}.bn1", planes))
            sd[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            sd.update(_bn(f"{p}.bn2", planes))
            sd[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            sd.update(_bn(f"{p}.bn3", planes * 4))
            if j == 0:
                sd[f"{p}.downsample.0.weight"] = (planes * 4, cin, 1, 1)
                sd.update(_bn(f"{p}.downsample.1", planes * 4))
            cin = planes * 4
    sd["fc.weight"], sd["fc.bias"] = (1000, 2048), (1000,)
    return sd


def _tv_vgg16():
    sd, idx, cin = {}, 0, 3
    for block in ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3):
        for c in block:
            sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"] = (c, cin, 3, 3), (c,)
            idx, cin = idx + 2, c
        idx += 1
    # the classifier is ignored: small stand-ins for its tensors keep the test fast
    sd.update({"classifier.0.weight": (4, 8), "classifier.0.bias": (4,), "classifier.6.weight": (2, 4)})
    return sd


def _tv_mobilenetv2():
    sd = {"features.0.0.weight": (32, 3, 3, 3), **_bn("features.0.1", 32)}
    cin, idx = 32, 1
    for t, c, n, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for _ in range(n):
            p, h, a = f"features.{idx}.conv", cin * t, 0
            if t != 1:
                sd[f"{p}.0.0.weight"] = (h, cin, 1, 1)
                sd.update(_bn(f"{p}.0.1", h))
                a = 1
            sd[f"{p}.{a}.0.weight"] = (h, 1, 3, 3)
            sd.update(_bn(f"{p}.{a}.1", h))
            sd[f"{p}.{a + 1}.weight"] = (c, h, 1, 1)
            sd.update(_bn(f"{p}.{a + 2}", c))
            cin, idx = c, idx + 1
    sd["features.18.0.weight"] = (1280, 320, 1, 1)
    sd.update(_bn("features.18.1", 1280))
    sd["classifier.1.weight"], sd["classifier.1.bias"] = (1000, 1280), (1000,)
    return sd


def _tv_densenet121():
    sd = {"features.conv0.weight": (64, 3, 7, 7), **_bn("features.norm0", 64)}
    c = 64
    for b, n in enumerate((6, 12, 24, 16), start=1):
        for i in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{i}"
            cin = c + (i - 1) * 32
            sd.update(_bn(f"{p}.norm1", cin))
            sd[f"{p}.conv1.weight"] = (128, cin, 1, 1)
            sd.update(_bn(f"{p}.norm2", 128))
            sd[f"{p}.conv2.weight"] = (32, 128, 3, 3)
        c += n * 32
        if b < 4:
            sd.update(_bn(f"features.transition{b}.norm", c))
            sd[f"features.transition{b}.conv.weight"] = (c // 2, c, 1, 1)
            c //= 2
    sd.update(_bn("features.norm5", c))
    sd["classifier.weight"], sd["classifier.bias"] = (1000, c), (1000,)
    return sd


def _timm_sep(p, cin, cout):
    return {f"{p}.conv_dw.weight": (cin, 1, 3, 3), **_bn(f"{p}.bn_dw", cin), f"{p}.conv_pw.weight": (cout, cin, 1, 1),
            **_bn(f"{p}.bn_pw", cout)}


def _timm_xception65():
    sd = {"stem.0.conv.weight": (32, 3, 3, 3), **_bn("stem.0.bn", 32), "stem.1.conv.weight": (64, 32, 3, 3),
          **_bn("stem.1.bn", 64)}
    cfg = [(64, (128,) * 3, True), (128, (256,) * 3, True), (256, (728,) * 3, True)]
    cfg += [(728, (728,) * 3, False)] * 16 + [(728, (728, 1024, 1024), True), (1024, (1536, 1536, 2048), False)]
    for i, (cin, outs, shortcut) in enumerate(cfg):
        if shortcut:
            sd[f"blocks.{i}.shortcut.conv.weight"] = (outs[-1], cin, 1, 1)
            sd.update(_bn(f"blocks.{i}.shortcut.bn", outs[-1]))
        c = cin
        for k, o in enumerate(outs, start=1):
            sd.update(_timm_sep(f"blocks.{i}.stack.conv{k}", c, o))
            c = o
    sd["head.fc.weight"], sd["head.fc.bias"] = (1000, 2048), (1000,)
    return sd


def _conv_bn(sd, conv, bn, cout, cin, k):
    sd[f"{conv}.weight"] = (cout, cin, k, k)
    sd.update(_bn(bn, cout))


def _timm_block(sd, p, cin, planes, bottleneck):
    if bottleneck:
        _conv_bn(sd, f"{p}.conv1", f"{p}.bn1", planes, cin, 1)
        _conv_bn(sd, f"{p}.conv2", f"{p}.bn2", planes, planes, 3)
        _conv_bn(sd, f"{p}.conv3", f"{p}.bn3", planes * 4, planes, 1)
        if cin != planes * 4:
            _conv_bn(sd, f"{p}.downsample.0", f"{p}.downsample.1", planes * 4, cin, 1)
    else:
        _conv_bn(sd, f"{p}.conv1", f"{p}.bn1", planes, cin, 3)
        _conv_bn(sd, f"{p}.conv2", f"{p}.bn2", planes, planes, 3)


def _timm_hrnet_w18():
    sd: dict = {}
    _conv_bn(sd, "conv1", "bn1", 64, 3, 3)
    _conv_bn(sd, "conv2", "bn2", 64, 64, 3)
    for j in range(4):
        _timm_block(sd, f"layer1.{j}", 64 if j == 0 else 256, 64, True)
    pre = [256]
    for s, n_mod in ((2, 1), (3, 4), (4, 3)):
        cur = [18 * 2**i for i in range(s)]
        for i, c in enumerate(cur):
            t = f"transition{s - 1}.{i}"
            if i < len(pre):
                if c != pre[i]:
                    _conv_bn(sd, f"{t}.0", f"{t}.1", c, pre[i], 3)
            else:
                _conv_bn(sd, f"{t}.0.0", f"{t}.0.1", c, pre[-1], 3)
        for m in range(n_mod):
            for b, c in enumerate(cur):
                for k in range(4):
                    _timm_block(sd, f"stage{s}.{m}.branches.{b}.{k}", c, c, False)
            for i in range(s):
                for j in range(s):
                    f = f"stage{s}.{m}.fuse_layers.{i}.{j}"
                    if j > i:
                        _conv_bn(sd, f"{f}.0", f"{f}.1", cur[i], cur[j], 1)
                    elif j < i:
                        for k in range(i - j):
                            out = cur[i] if k == i - j - 1 else cur[j]
                            _conv_bn(sd, f"{f}.{k}.0", f"{f}.{k}.1", out, cur[j], 3)
        pre = cur
    # the classification head (ignored)
    _timm_block(sd, "incre_modules.0.0", 18, 32, True)
    sd["final_layer.0.weight"], sd["classifier.weight"] = (2048, 1024, 1, 1), (1000, 2048)
    return sd


LAYOUT_CASES = [
    ("resnet50", "torchvision", _tv_resnet50, {"fc."}),
    ("vgg16", "torchvision", _tv_vgg16, {"classifier."}),
    ("mobilenetv2", "torchvision", _tv_mobilenetv2, {"classifier."}),
    ("densenet121", "torchvision", _tv_densenet121, {"classifier."}),
    ("xception65", "timm", _timm_xception65, {"head."}),
    ("hrnetv2_w18", "timm", _timm_hrnet_w18, {"incre_modules.", "final_layer.", "classifier."}),
]


def _synthetic(shapes):
    g = torch.Generator().manual_seed(1)
    return {k: (torch.randint(0, 100, s, generator=g) if k.endswith("num_batches_tracked") else
                torch.randn(s, generator=g)) for k, s in shapes.items()}


@pytest.mark.parametrize(("name", "layout", "make", "head"), LAYOUT_CASES)
def test_pretrained_key_mapping(tmp_path, name, layout, make, head):
    state = _synthetic(make())
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    info = get_backbone_info(name)
    model = create_backbone(name, 2, 3)
    report = load_pretrained(model, path, layout=layout)
    assert not report.missing and not report.unexpected and not report.mismatched
    assert report.ignored and all(k.startswith(tuple(head)) for k in report.ignored)
    ours = model.state_dict()
    key_map = info.key_maps[layout]
    checked = 0
    for key, value in state.items():
        target = key_map(key, model)
        if target is None:
            continue
        assert torch.equal(ours[target], value), (key, target)
        checked += 1
    # every parameter and buffer of ours received a tensor of the file
    assert checked == len(ours)
    # "auto" finds the same layout; a wrapped checkpoint with "module." prefixes loads too
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    assert not load_pretrained(create_backbone(name, 2, 3), tmp_path / "wrapped.pth").missing


def test_pretrained_errors_and_non_strict(tmp_path):
    state = _synthetic(_tv_resnet50())
    del state["layer4.2.conv3.weight"]
    state["layer9.extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    model = create_backbone("resnet50", 2, 3)
    with pytest.raises(ModelError, match=r"missing keys: stem\.conv\.weight, layer4\.2\.conv3\.conv\.weight; "
                                         r"unexpected keys: layer9\.extra\.weight; shape mismatches: stem\.conv\."
                                         r"weight \(64, 1, 7, 7\) vs ours \(64, 3, 7, 7\)"):
        load_pretrained(model, path, layout="torchvision")
    report = load_pretrained(model, path, layout="torchvision", strict=False)
    assert report.missing == ["stem.conv.weight", "layer4.2.conv3.conv.weight"]
    assert torch.equal(model.layer1[0].conv1.conv.weight, state["layer1.0.conv1.weight"])
    with pytest.raises(ModelError, match="not found"):
        load_pretrained(model, tmp_path / "absent.pth")
    with pytest.raises(ModelError, match="no 'timm' key layout"):
        load_pretrained(create_backbone("mobilenetv2", 2, 3), path, layout="timm")
    with pytest.raises(ModelError, match="no pretrained key layout"):
        load_pretrained(create_backbone("drn_d_22", 2, 3), path)


def test_pretrained_2d_weights_inflate_into_3d(tmp_path):
    state = _synthetic(_tv_resnet50())
    model = create_backbone("resnet50", 3, 3)
    with pytest.raises(ModelError, match="shape mismatches"):
        load_pretrained(model, state, layout="torchvision")
    load_pretrained(model, state, layout="torchvision", inflate=True)
    w = model.stem.conv.weight
    assert w.shape == (64, 3, 7, 7, 7)
    assert torch.allclose(w.sum(2), state["conv1.weight"], atol=1e-5)


def test_no_library_is_imported():
    import sys

    assert not any(re.match(r"^(torchvision|timm|segmentation_models_pytorch)(\.|$)", m) for m in sys.modules)
