"""nnU-Net v2's state-dict keys mapped onto medseg's ``nnunet`` / ``nnunet_resenc`` networks, both ways.

nnU-Net v2 (Isensee et al., Nature Methods 2021) builds its networks with ``dynamic_network_architectures``:
``PlainConvUNet`` (``PlainConvEncoder`` + ``UNetDecoder``) and ``ResidualEncoderUNet`` (``ResidualEncoder`` +
``UNetDecoder``). Their ``state_dict()`` — what ``checkpoint['network_weights']`` of a ``checkpoint_final.pth``
holds — names every tensor of the layers medseg's :class:`~medseg.models.nnunet.dynamic_unet.PlainConvUNet` and
:class:`~medseg.models.nnunet.resenc_unet.ResidualEncoderUNet` have, in the same order, under other names:

==========================================================  ==========================================================
nnU-Net key                                                 medseg key
==========================================================  ==========================================================
``encoder.stages.S.0.convs.I.{conv,norm}.P`` (plain)        ``encoder.S.I.{conv,norm}.P``
``encoder.stem.convs.0.{conv,norm}.P`` (residual)           ``stem.{conv,norm}.P``
``encoder.stages.S.blocks.B.{conv1,conv2}.{conv,norm}.P``   ``encoder.S.B.{conv1,conv2}.{conv,norm}.P``
``encoder.stages.S.blocks.B.skip.K.{conv,norm}.P``          ``encoder.S.B.skip.K.{conv,norm}.P``
``decoder.transpconvs.I.P``                                 ``decoder.transpconvs.I.P``
``decoder.stages.I.convs.J.{conv,norm}.P``                  ``decoder.stages.I.J.{conv,norm}.P``
``decoder.seg_layers.I.P``                                  ``decoder.seg_layers.I.P`` (only the last without deep
                                                            supervision: index 0)
==========================================================  ==========================================================

The same tensors appear a second time in nnU-Net's dictionary: every ``ConvDropoutNormReLU`` registers its layers
also inside ``all_modules`` (``…all_modules.0.weight`` is ``…conv.weight``), and the decoder keeps a reference to
the encoder (``decoder.encoder.…``). Those aliases are checked to be identical to their originals and dropped on
import, and written on export, so an exported dictionary has exactly the keys nnU-Net's own ``state_dict()`` has.
Dropout (no parameters) shifts the ``all_modules`` indices: norm is ``all_modules.1`` without dropout,
``all_modules.2`` with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from medseg.errors import ModelError

__all__ = ["from_nnunet_state_dict", "to_nnunet_state_dict"]

_PLAIN_ENCODER = re.compile(r"^encoder\.stages\.(\d+)\.0\.convs\.(\d+)\.(conv|norm)\.(\w+)$")
_STEM = re.compile(r"^encoder\.stem\.convs\.0\.(conv|norm)\.(\w+)$")
_RES_ENCODER = re.compile(r"^encoder\.stages\.(\d+)\.blocks\.(\d+)\.(conv1|conv2|skip\.\d+)\.(conv|norm)\.(\w+)$")
_TRANSP = re.compile(r"^decoder\.transpconvs\.(\d+)\.(\w+)$")
_DECODER = re.compile(r"^decoder\.stages\.(\d+)\.convs\.(\d+)\.(conv|norm)\.(\w+)$")
_SEG = re.compile(r"^decoder\.seg_layers\.(\d+)\.(\w+)$")
_ALIAS = re.compile(r"(^|\.)all_modules\.\d+\.")


def _is_alias(key: str) -> bool:
    return key.startswith("decoder.encoder.") or _ALIAS.search(key) is not None


def _alias_of(key: str, dropout: bool) -> str:
    """The ``all_modules`` alias nnU-Net's ``ConvDropoutNormReLU`` registers for ``…conv.P`` / ``…norm.P``."""
    index = {"conv": 0, "norm": 2 if dropout else 1}
    return re.sub(r"\.(conv|norm)\.(\w+)$", lambda m: f".all_modules.{index[m.group(1)]}.{m.group(2)}", key)


def from_nnunet_state_dict(state: Mapping[str, torch.Tensor], residual: bool,
                           deep_supervision: bool = False) -> dict[str, torch.Tensor]:
    """Medseg's state dict for nnU-Net's ``network_weights``.

    Args:
        state: ``PlainConvUNet`` (``residual=False``) or ``ResidualEncoderUNet`` (``residual=True``) weights as
            nnU-Net's ``state_dict()`` names them (aliases included or not).
        residual: Whether the network is the residual-encoder U-Net.
        deep_supervision: Keep every segmentation head (the medseg network was built with deep supervision);
            otherwise only the full-resolution head, as medseg's ``seg_layers.0``.

    Returns:
        A dictionary for ``load_state_dict`` of the medseg network.

    Raises:
        ModelError: A key of no known layer, or an alias whose tensor differs from its original.
    """
    out: dict[str, torch.Tensor] = {}
    seg: dict[int, dict[str, torch.Tensor]] = {}
    plain = {k: v for k, v in state.items() if not _is_alias(k)}
    for key, value in state.items():
        if key.startswith("decoder.encoder."):
            original = plain.get(key[len("decoder."):])
            if original is not None and not torch.equal(original, value):
                raise ModelError(f"nnU-Net weights: {key} differs from {key[len('decoder.'):]}")
    for key, value in plain.items():
        if residual:
            m = _STEM.match(key)
            if m:
                out[f"stem.{m.group(1)}.{m.group(2)}"] = value
                continue
            m = _RES_ENCODER.match(key)
            if m:
                s, b, part, layer, p = m.groups()
                out[f"encoder.{s}.{b}.{part}.{layer}.{p}"] = value
                continue
        else:
            m = _PLAIN_ENCODER.match(key)
            if m:
                s, i, layer, p = m.groups()
                out[f"encoder.{s}.{i}.{layer}.{p}"] = value
                continue
        m = _TRANSP.match(key)
        if m:
            out[key] = value
            continue
        m = _DECODER.match(key)
        if m:
            i, j, layer, p = m.groups()
            out[f"decoder.stages.{i}.{j}.{layer}.{p}"] = value
            continue
        m = _SEG.match(key)
        if m:
            seg.setdefault(int(m.group(1)), {})[m.group(2)] = value
            continue
        kind = "ResidualEncoderUNet" if residual else "PlainConvUNet"
        raise ModelError(f"nnU-Net weights: {key!r} is no layer of nnU-Net's {kind}")
    if seg:
        heads = sorted(seg)
        kept = heads if deep_supervision else heads[-1:]
        for new, old in enumerate(kept):
            for p, value in seg[old].items():
                out[f"decoder.seg_layers.{new}.{p}"] = value
    return out


def to_nnunet_state_dict(model: torch.nn.Module, dropout: bool = False) -> dict[str, torch.Tensor]:
    """nnU-Net's ``state_dict()`` of the network equal to medseg's ``model`` (aliases included).

    The dictionary has every key ``PlainConvUNet`` / ``ResidualEncoderUNet`` of ``dynamic_network_architectures``
    has (built with deep supervision heads, which nnU-Net always builds): a medseg network without deep supervision
    has only the full-resolution head, and the other heads are written as zeros (nnU-Net's inference uses only the
    full-resolution head).

    Args:
        model: A medseg ``nnunet`` or ``nnunet_resenc`` network.
        dropout: The exported plans use dropout (shifts the ``all_modules`` index of the norm).

    Raises:
        ModelError: ``model`` is neither network.
    """
    name = getattr(model, "model_name", type(model).__name__)
    residual = hasattr(model, "stem")
    if name not in ("nnunet", "nnunet_resenc"):
        raise ModelError(f"only medseg's 'nnunet' and 'nnunet_resenc' networks have an nnU-Net form, not {name!r}")
    source = {k: v.detach().clone() for k, v in model.state_dict().items()}
    n_decoder = len(model.decoder.stages)  # type: ignore[union-attr]
    out: dict[str, torch.Tensor] = {}
    encoder: dict[str, torch.Tensor] = {}
    heads: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in source.items():
        parts = key.split(".")
        if parts[0] == "stem":
            encoder[f"encoder.stem.convs.0.{parts[1]}.{parts[2]}"] = value
        elif parts[0] == "encoder" and residual:
            s, b, rest = parts[1], parts[2], ".".join(parts[3:])
            encoder[f"encoder.stages.{s}.blocks.{b}.{rest}"] = value
        elif parts[0] == "encoder":
            s, i, rest = parts[1], parts[2], ".".join(parts[3:])
            encoder[f"encoder.stages.{s}.0.convs.{i}.{rest}"] = value
        elif parts[:2] == ["decoder", "transpconvs"]:
            out[key] = value
        elif parts[:2] == ["decoder", "stages"]:
            out[f"decoder.stages.{parts[2]}.convs.{parts[3]}.{'.'.join(parts[4:])}"] = value
        elif parts[:2] == ["decoder", "seg_layers"]:
            heads.setdefault(int(parts[2]), {})[parts[3]] = value
        else:
            raise ModelError(f"{name}: unexpected parameter {key!r}")
    if len(heads) not in (1, n_decoder):
        raise ModelError(f"{name}: {len(heads)} segmentation heads for {n_decoder} decoder stages")
    if len(heads) == 1:  # only the full-resolution head: the others (unused at inference) are zeros
        last = heads[0]
        for i in range(n_decoder):
            channels = source[f"decoder.stages.{i}.0.conv.weight"].shape[0]
            heads[i] = last if i == n_decoder - 1 else {
                "weight": torch.zeros((last["weight"].shape[0], channels, *last["weight"].shape[2:]),
                                      dtype=last["weight"].dtype),
                "bias": torch.zeros_like(last["bias"])}
    for i, params in sorted(heads.items()):
        for p, value in params.items():
            out[f"decoder.seg_layers.{i}.{p}"] = value
    ordered: dict[str, Any] = {}
    for key, value in {**encoder, **out}.items():
        ordered[key] = value
        if re.search(r"\.(conv|norm)\.\w+$", key) and ("convs." in key or "blocks." in key):
            ordered[_alias_of(key, dropout and ".skip." not in key and ".conv2." not in key)] = value
    for key, value in encoder.items():
        ordered[f"decoder.{key}"] = value
        if re.search(r"\.(conv|norm)\.\w+$", key):
            ordered[f"decoder.{_alias_of(key, dropout and '.skip.' not in key and '.conv2.' not in key)}"] = value
    return ordered
