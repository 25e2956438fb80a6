"""The architecture of an nnU-Net network as a config section: presets, nnU-Net plans, ``arch_kwargs``.

mssl pre-trains nnU-Net's own networks (``dynamic_network_architectures`` ``PlainConvUNet`` and
``ResidualEncoderUNet``) so that nnU-Net v2 loads the weights unchanged. A network is described by
per-stage widths, strides, kernel sizes and block counts; unset fields come from an nnU-Net plans
file (``plans`` + ``configuration``) when one is named, else from a preset. Strides and kernels are
isotropic (one number per stage): mssl's crops and S²DC's token grids are cubic.

This module only reads JSON; it never imports nnU-Net (an optional dependency).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict

NNUNET_CLASSES: dict[str, str] = {
    "plainconv": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "resenc": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
}
# what nnU-Net's planners call the encoder's per-stage depth for each class
BLOCKS_KWARG = {"plainconv": "n_conv_per_stage", "resenc": "n_blocks_per_stage"}
# operations mssl builds: nnU-Net's 3D defaults (InstanceNorm, LeakyReLU 0.01, conv bias, no dropout)
FIXED_KWARGS: dict[str, Any] = {
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}
REQUIRES_IMPORT = ("conv_op", "norm_op", "dropout_op", "nonlin")
MIN_BOTTLENECK_VOXELS = 2  # InstanceNorm needs more than one voxel per channel
ARCH_FIELDS = ("features_per_stage", "strides", "kernel_sizes", "blocks_per_stage", "decoder_convs_per_stage")

# ResEnc M and L plan the same 6-stage network for isotropic patches of 128³ (M) and 160³ (L, nnssl's
# ResEnc-L); they differ in patch and batch size. The plain preset is nnU-Net's default 3d_fullres U-Net.
_WIDTHS = {"default": (32, 64, 128, 256, 320, 320), "tiny": (8, 16, 32)}
_BLOCKS = {
    ("resenc", "default"): ((1, 3, 4, 6, 6, 6), (1, 1, 1, 1, 1)),
    ("plainconv", "default"): ((2,) * 6, (2,) * 5),
    ("resenc", "tiny"): ((1, 1, 1), (1, 1)),
    ("plainconv", "tiny"): ((1, 1, 1), (1, 1)),
}


class NnUNetArchConfig(BaseModel):
    """An nnU-Net U-Net (``backbone.name`` plainconv or resenc); unset fields: ``plans`` if given, else ``preset``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    preset: Literal["default", "tiny"] = "default"
    plans: Path | None = None
    configuration: str = "3d_fullres"
    features_per_stage: tuple[int, ...] | None = None
    strides: tuple[int, ...] | None = None
    kernel_sizes: tuple[int, ...] | None = None
    blocks_per_stage: tuple[int, ...] | None = None  # convs (plainconv) or residual blocks (resenc) per encoder stage
    decoder_convs_per_stage: tuple[int, ...] | None = None

    def total_stride(self) -> int:
        return math.prod(self.strides or (1,))

    def arch_kwargs(self, name: str) -> dict[str, Any]:
        """The ``arch_kwargs`` of an nnU-Net plans file that build this network."""
        return {
            "n_stages": len(self.features_per_stage or ()),
            "features_per_stage": list(self.features_per_stage or ()),
            "conv_op": FIXED_KWARGS["conv_op"],
            "kernel_sizes": [[k] * 3 for k in self.kernel_sizes or ()],
            "strides": [[s] * 3 for s in self.strides or ()],
            BLOCKS_KWARG[name]: list(self.blocks_per_stage or ()),
            "n_conv_per_stage_decoder": list(self.decoder_convs_per_stage or ()),
            **{k: v for k, v in FIXED_KWARGS.items() if k != "conv_op"},
        }

    def check(self, name: str) -> None:
        """Stage counts agree, the first stage keeps full resolution (GVSL's local map), at least 2 stages."""
        stages = len(self.features_per_stage or ())
        lengths = {f: len(getattr(self, f) or ()) for f in ARCH_FIELDS}
        expected = {**{f: stages for f in ARCH_FIELDS}, "decoder_convs_per_stage": stages - 1}
        wrong = [f"{f} has {lengths[f]} entries (expected {expected[f]})" for f in ARCH_FIELDS if lengths[f] != expected[f]]
        if stages < 2:
            wrong.append(f"{stages} stages (at least 2)")
        if self.strides and self.strides[0] != 1:
            wrong.append(f"strides[0] = {self.strides[0]} (must be 1 so the decoder returns to full resolution)")
        if wrong:
            raise ValueError(f"backbone.nnunet for {name}: " + "; ".join(wrong))


def preset_fields(name: str, preset: str) -> dict[str, tuple[int, ...]]:
    widths = _WIDTHS[preset]
    blocks, decoder = _BLOCKS[(name, preset)]
    return {
        "features_per_stage": widths,
        "strides": (1,) + (2,) * (len(widths) - 1),
        "kernel_sizes": (3,) * len(widths),
        "blocks_per_stage": blocks,
        "decoder_convs_per_stage": decoder,
    }


def read_plans_architecture(plans: Path, configuration: str) -> tuple[str, dict[str, Any]]:
    """``(network_class_name, arch_kwargs)`` of ``configuration`` in an nnU-Net plans file (following ``inherits_from``)."""
    try:
        content = json.loads(Path(plans).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"nnU-Net plans file not found: {plans}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{plans}: not valid JSON ({error})") from None
    configurations = content.get("configurations", {})
    name, seen = configuration, set()
    while name in configurations and name not in seen:
        seen.add(name)
        architecture = configurations[name].get("architecture")
        if architecture is not None:
            return str(architecture.get("network_class_name")), architecture.get("arch_kwargs") or {}
        name = configurations[name].get("inherits_from")
    raise ValueError(f"{plans}: no architecture for configuration {configuration!r} (has {sorted(configurations)})")


def _isotropic(values: Any, key: str, source: str) -> tuple[int, ...]:
    """``[[2, 2, 2], [1, 1, 1]]`` or ``[2, 1]`` → ``(2, 1)``; anisotropic entries are an error."""
    out = []
    for value in values:
        sizes = set(value) if isinstance(value, (list, tuple)) else {value}
        if len(sizes) != 1:
            raise ValueError(f"{source}: {key} entry {value} is anisotropic; mssl pre-trains isotropic nnU-Net networks")
        out.append(int(sizes.pop()))
    return tuple(out)


def _per_stage(value: Any, stages: int) -> tuple[int, ...]:
    """nnU-Net allows one int for every stage."""
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),) * stages


def fields_from_arch_kwargs(name: str, class_name: str, kwargs: Mapping[str, Any], source: str) -> dict[str, tuple[int, ...]]:
    """The config fields of nnU-Net ``arch_kwargs`` (as in a plans file), checked against what mssl builds."""
    if class_name.split(".")[-1] != NNUNET_CLASSES[name].split(".")[-1]:
        raise ValueError(f"{source}: network {class_name} does not match backbone.name {name!r} ({NNUNET_CLASSES[name]})")
    for key in REQUIRES_IMPORT:  # compared by class name: plans spell torch paths differently
        got, built = kwargs.get(key), FIXED_KWARGS[key]
        if str(got).split(".")[-1] != str(built).split(".")[-1]:
            raise ValueError(f"{source}: arch_kwargs {key} = {got!r}; mssl builds nnU-Net's default {built}")
    required = ("n_stages", "features_per_stage", "strides", "kernel_sizes", BLOCKS_KWARG[name], "n_conv_per_stage_decoder")
    absent = [key for key in required if kwargs.get(key) is None]
    if absent:
        raise ValueError(f"{source}: arch_kwargs has no {', '.join(absent)} (needed for {name})")
    stages = int(kwargs["n_stages"])
    blocks = kwargs[BLOCKS_KWARG[name]]
    return {
        "features_per_stage": _per_stage(kwargs["features_per_stage"], stages),
        "strides": _isotropic(kwargs["strides"], "strides", source),
        "kernel_sizes": _isotropic(kwargs["kernel_sizes"], "kernel_sizes", source),
        "blocks_per_stage": _per_stage(blocks, stages),
        "decoder_convs_per_stage": _per_stage(kwargs["n_conv_per_stage_decoder"], stages - 1),
    }


def fill_arch(name: str, section: Mapping[str, Any]) -> dict[str, Any]:
    """``section`` with its unset architecture fields taken from its plans file, else from its preset."""
    section = dict(section)
    missing = [f for f in ARCH_FIELDS if section.get(f) is None]
    if not missing:
        return section
    if section.get("plans") is not None:
        plans = Path(section["plans"])
        class_name, kwargs = read_plans_architecture(plans, section.get("configuration", "3d_fullres"))
        source = fields_from_arch_kwargs(name, class_name, kwargs, str(plans))
    elif section.get("preset", "default") in _WIDTHS:  # an unknown preset is reported by field validation
        source = preset_fields(name, section.get("preset", "default"))
    else:
        return section
    return {**section, **{f: source[f] for f in missing}}
