"""Registry behaviour, the CLI listing, and the papers' geometry where a paper states it."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from medseg.errors import MedsegError, ModelError
from medseg.models import (
    count_parameters,
    create_model,
    get_model_info,
    list_families,
    list_models,
    register_model,
)
from medseg.models.registry import PaperConfig


def test_expected_keys_are_registered() -> None:
    names = set(list_models())
    assert {"nnunet", "nnunet_resenc", "unet", "unet3d", "unetpp", "vnet", "unetr", "swin_unetr", "segresnet"} <= names
    assert get_model_info("unet3d").spatial_dims == (3,)


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ModelError) as excinfo:
        create_model("unet4d", 3, 1, 2)
    assert isinstance(excinfo.value, MedsegError)
    assert "unet4d" in str(excinfo.value) and "unet3d" in str(excinfo.value)


def test_unsupported_dims_is_clear() -> None:
    with pytest.raises(ModelError, match=r"supports 3D only"):
        create_model("unet3d", 2, 1, 2)


def test_unknown_option_lists_options() -> None:
    with pytest.raises(ModelError, match=r"no option 'widht'.*base_features"):
        create_model("unet3d", 3, 1, 2, widht=4)


def test_unknown_family() -> None:
    with pytest.raises(ModelError, match="unknown model family"):
        list_models("nope")
    assert "nnunet" in list_families()


def test_registering_twice_is_an_error() -> None:
    with pytest.raises(ModelError, match="registered twice"):

        @register_model(
            "unet", family="x", spatial_dims=(2,), paper_title="t", paper_year=2000,
            paper=PaperConfig(2, 1, 1), divisor=1,
        )
        class Dup(nn.Module):
            pass


def test_default_builds() -> None:
    with torch.device("meta"):
        for name in list_models():
            info = get_model_info(name)
            if name == "swin_unetr":  # MONAI's constructor calls .item(); counted on the CPU elsewhere
                continue
            for dims in info.spatial_dims:
                create_model(name, dims, 2, 2)  # two channels: the multi-modal models need two groups


def test_nnunet_default_topology() -> None:
    with torch.device("meta"):
        m3 = create_model("nnunet", 3, 1, 2)
        m2 = create_model("nnunet", 2, 1, 2)
    assert m3.features_per_stage == [32, 64, 128, 256, 320, 320] and m3.input_divisor == (32, 32, 32)
    assert m2.features_per_stage == [32, 64, 128, 256, 512, 512, 512] and m2.input_divisor == (64, 64)


def test_nnunet_anisotropic_plan() -> None:
    plan = {"kernel_sizes": [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [1, [1, 2, 2], 2, 2],
            "features_per_stage": [4, 8, 16, 16], "deep_supervision": True}
    m = create_model("nnunet", 3, 1, 2, **plan).train()
    assert m.input_divisor == (4, 8, 8)
    outs = m(torch.randn(1, 1, 8, 32, 32))
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 32, 32), (8, 16, 16), (4, 8, 8)]
    with pytest.raises(ModelError, match=r"\(4, 8, 8\)"):
        m(torch.randn(1, 1, 6, 32, 32))


def test_resenc_blocks_per_stage() -> None:
    with torch.device("meta"):
        m = create_model("nnunet_resenc", 3, 1, 2)
    assert m.n_blocks_per_stage == [1, 3, 4, 6, 6, 6]
    assert [len(stage) for stage in m.encoder] == [1, 3, 4, 6, 6, 6]
    assert all(len(stage) == 1 for stage in m.decoder.stages)


def test_unet_paper_tile_geometry() -> None:
    # Ronneberger et al. Fig. 1: a 572x572 tile gives a 388x388 map with unpadded convolutions.
    with torch.device("meta"):
        m = create_model("unet", 2, 1, 2, padding="valid", dropout=0.5)
        assert m(torch.empty(1, 1, 572, 572)).shape == (1, 2, 388, 388)
        with pytest.raises(ModelError, match="next valid size for 570 is 572"):
            m(torch.empty(1, 1, 570, 570))


def test_unet_widths_match_unetpp_table() -> None:
    # Zhou et al. Table 1: U-Net with 32..512 channels has 7.76M parameters.
    with torch.device("meta"):
        m = create_model("unet", 2, 1, 1, features=(32, 64, 128, 256, 512))
    assert count_parameters(m) == pytest.approx(7.76e6, rel=0.001)


def test_unet3d_paper_geometry_and_count() -> None:
    # Çiçek et al. Fig. 2: 132x132x116 input -> 44x44x28 output; "19069955 parameters in total".
    with torch.device("meta"):
        m = create_model("unet3d", 3, 3, 3, padding="valid")
        assert m(torch.empty(1, 3, 132, 132, 116)).shape == (1, 3, 44, 44, 28)
    convs = sum(p.numel() for mod in m.modules() if isinstance(mod, nn.Conv3d) for p in mod.parameters())
    upconv_biases = sum(mod.bias.numel() for mod in m.modules() if isinstance(mod, nn.ConvTranspose3d))
    upconv_weights = sum(mod.weight.numel() for mod in m.modules() if isinstance(mod, nn.ConvTranspose3d))
    assert convs + upconv_weights == 19_069_955  # the paper counts no BN parameters and no up-conv biases
    assert count_parameters(m) == 19_069_955 + upconv_biases + 2 * 2336


def test_cli_models_json(capsys: pytest.CaptureFixture[str]) -> None:
    from medseg.cli.main import main

    assert main(["models", "--json", "--family", "unet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"unet", "unet3d", "unetpp"}
    row = next(r for r in rows if r["name"] == "unet3d")
    assert row["paper_parameters"] == 19_069_955 and abs(row["relative_difference"]) < 0.02


def test_cli_models_table_and_bad_family(capsys: pytest.CaptureFixture[str]) -> None:
    from medseg.cli.main import main

    assert main(["models", "--family", "vnet"]) == 0
    assert "vnet" in capsys.readouterr().out
    assert main(["models", "--family", "nope"]) == 1
    assert "unknown model family" in capsys.readouterr().err
