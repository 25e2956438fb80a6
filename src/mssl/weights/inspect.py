"""``mssl inspect WEIGHTS --into swinunetr|unet|plainconv|resenc``: build the target network and report what loads.

The network is built from the backbone the weights were trained as when that is known (the sidecar of
an export, else the run's own record: a fine-tuned run's model.json, a pre-training run's config), else
from the tensor shapes themselves
(feature size, window size, v2 blocks, U-Net widths), so third-party files can be checked too.
nnU-Net's networks (``plainconv``, ``resenc``: nnU-Net's own class, segmentation layers included) need
that record, since strides cannot be read off the shapes.
``in_channels`` builds the target for that many input channels and adapts the stem kernels.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from mssl.config import BackboneConfig
from mssl.models.task_networks import finetuned_network
from mssl.nnunet_arch import NNUNET_CLASSES
from mssl.runs import FinetuneRun, PretrainRun, sidecar_of
from mssl.weights.load_report import LoadReport
from mssl.weights.loading import align_keys, canonical, load_pretrained
from mssl.weights.safe_io import read_weights, resolve_weights
from mssl.weights.sidecar import network_spec, read_sidecar

Target = Literal["swinunetr", "unet", "plainconv", "resenc"]
TARGET_OF_BACKBONE: dict[str, Target] = {"swin": "swinunetr", "unet": "unet", "plainconv": "plainconv", "resenc": "resenc"}
TASK_CHANNELS = 2  # the output layer belongs to the downstream task; inspect reports it as missing
CLAIMED_SIZES = ("in_channels", "feature_size", "channels")  # constructor arguments the tensor shapes pin down
_UNET_ENCODER = re.compile(r"(?:^|\.)encoders\.(\d+)\.0\.weight$")


def _find(tensors: dict[str, torch.Tensor], suffix: str, source: str) -> torch.Tensor:
    for key, value in tensors.items():
        if canonical(key).endswith(suffix):
            return value
    raise ValueError(f"{source}: no '*{suffix}' tensor; these are not SwinUNETR weights (try --into unet)")


def infer_swin_args(tensors: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """SwinUNETR constructor arguments read off the tensor shapes."""
    stem = _find(tensors, "patch_embed.proj.weight", source)  # (feature_size, in_channels, 2, 2, 2)
    table = _find(tensors, "relative_position_bias_table", source)  # ((2w - 1)³, heads)
    window = (round(math.pow(table.shape[0], 1 / 3)) + 1) // 2
    use_v2 = any(".layers1c." in f".{canonical(k)}" for k in tensors)
    return {"in_channels": int(stem.shape[1]), "feature_size": int(stem.shape[0]), "window_size": window, "use_v2": use_v2, "spatial_dims": 3}


def infer_unet_args(tensors: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """U-Net widths and input channels read off ``encoders.{i}.0.weight``."""
    stems = {int(m.group(1)): v for k, v in tensors.items() if (m := _UNET_ENCODER.search(k))}
    if not stems or sorted(stems) != list(range(len(stems))):
        raise ValueError(f"{source}: no 'encoders.{{i}}.0.weight' tensors; these are not mssl U-Net weights (try --into swinunetr)")
    return {"in_channels": int(stems[0].shape[1]), "channels": [int(stems[i].shape[0]) for i in range(len(stems))]}


def check_claimed_sizes(backbone: BackboneConfig, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise ValueError unless the sizes a sidecar or run config claims for the ``backbone`` are the ones
    the weights have: the network is built from the claim before any tensor loads, so a wrong or hostile
    one (10⁶ channels) would otherwise try to allocate terabytes."""
    if backbone.name in NNUNET_CLASSES:
        return check_nnunet_claim(backbone, tensors, source)
    claimed = network_spec(backbone).args
    actual = infer_swin_args(tensors, source) if backbone.name == "swin" else infer_unet_args(tensors, source)
    wrong = [k for k in CLAIMED_SIZES if k in claimed and k in actual and claimed[k] != actual[k]]
    if wrong:
        says = ", ".join(f"{k}={claimed[k]}" for k in wrong)
        has = ", ".join(f"{k}={actual[k]}" for k in wrong)
        raise ValueError(f"{source}: the backbone description says {says} but the weights have {has}; refusing to build a network from it")


def check_nnunet_claim(config: BackboneConfig, tensors: dict[str, torch.Tensor], source: str) -> None:
    """The described nnU-Net network, built on the ``meta`` device (no memory, whatever it claims), must
    take the weights' tensors with their shapes."""
    from mssl.models.backbones import build_backbone

    with torch.device("meta"):
        expected = build_backbone(config).state_dict()
    mapping = align_keys(tensors, expected)
    wrong = [f"{name} {tuple(tensors[k].shape)} vs {tuple(expected[name].shape)}" for k, name in mapping.items() if tensors[k].shape != expected[name].shape]
    if not mapping or wrong:
        found = f"shapes differ: {'; '.join(wrong[:3])}" if mapping else "no tensor of it is in the weights"
        raise ValueError(f"{source}: the backbone description ({config.name}) does not match the weights ({found}); refusing to build a network from it")


def build_target(into: Target, args: dict[str, Any]) -> nn.Module:
    if into in NNUNET_CLASSES:
        from mssl.models.nnunet_backbones import build_nnunet_network

        config = BackboneConfig(name=into, **args)
        return build_nnunet_network(into, config.in_channels, config.nnunet, num_classes=TASK_CHANNELS)
    if into == "swinunetr":
        from monai.networks.nets import SwinUNETR

        return SwinUNETR(out_channels=TASK_CHANNELS, **args)
    from mssl.models.backbones import UNetBackbone

    return UNetBackbone(in_channels=args["in_channels"], channels=args["channels"])


def describe(into: Target, args: dict[str, Any]) -> str:
    name = {"swinunetr": "monai.networks.nets.SwinUNETR", "unet": "mssl UNetBackbone"}.get(into) or NNUNET_CLASSES[into]
    return f"{name}({', '.join(f'{k}={v}' for k, v in args.items())})"


def weight_file(weights: str | Path) -> Path:
    """The file to inspect: a fine-tuned run folder's best weights, else what :func:`resolve_weights` finds."""
    run = FinetuneRun(Path(weights))
    return run.weights if run.model.is_file() and run.weights.is_file() else resolve_weights(weights)


def finetuned_description(path: Path) -> dict[str, Any] | None:
    """The model.json of the fine-tuned run whose best weights ``path`` is; None for any other file."""
    run = FinetuneRun(path.parent)
    return run.description() if path == run.weights and run.model.is_file() else None


def recorded_backbone(path: Path, finetuned: dict[str, Any] | None) -> tuple[BackboneConfig, str] | None:
    """The backbone a run trained the weight file ``path`` as, and where that is written: model.json for a
    fine-tuned run's best weights (``finetuned``, its :func:`finetuned_description`), the checkpoint's own
    config (else config.yaml) for a pre-training run's checkpoint; None for any other file."""
    if finetuned is not None:
        return BackboneConfig(**finetuned["backbone"]), str(FinetuneRun(path.parent).model)
    pretrained = PretrainRun(path.parent.parent)
    if path.parent == pretrained.checkpoints and path.suffix == pretrained.checkpoint.suffix:
        from mssl.weights.run_reader import run_config

        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # the tensors stay on disk
        return run_config(pretrained.path, checkpoint).backbone, str(path)
    return None


def inspect_weights(weights: str | Path, into: Target | None = None, in_channels: int | None = None) -> LoadReport:
    """Load ``weights`` into a fresh SwinUNETR, U-Net or nnU-Net network and report per module what loaded.

    into: the target network (default: the backbone the weights were trained as, from the sidecar or
    :func:`recorded_backbone`, else guessed from the keys).
    in_channels: build the target with this many input channels; stem kernels are adapted.
    """
    path = weight_file(weights)
    tensors = read_weights(path)
    sidecar = read_sidecar(path)
    finetuned = finetuned_description(path)
    backbone, description = (sidecar.backbone, str(sidecar_of(path))) if sidecar else recorded_backbone(path, finetuned) or (None, "")
    if into is None:
        guessed = "swin" if any(".swinViT." in f".{canonical(k)}" or "patch_embed" in k for k in tensors) else "unet"
        into = TARGET_OF_BACKBONE[backbone.name if backbone else guessed]
    if into not in TARGET_OF_BACKBONE.values():
        raise ValueError(f"--into must be one of {sorted(TARGET_OF_BACKBONE.values())}, got {into!r}")
    if backbone is not None and TARGET_OF_BACKBONE[backbone.name] == into:
        check_claimed_sizes(backbone, tensors, description)
        args = dict(network_spec(backbone).args)
    elif into in NNUNET_CLASSES:
        raise ValueError(
            f"{path}: --into {into} needs the sidecar (encoder.json) or the run's model.json / config naming the {into} architecture the weights were trained with"
        )
    else:
        args = infer_swin_args(tensors, str(path)) if into == "swinunetr" else infer_unet_args(tensors, str(path))
    if in_channels is not None:
        args["in_channels"] = in_channels
    if finetuned is not None and in_channels is None and backbone and TARGET_OF_BACKBONE[backbone.name] == into:
        # the whole fine-tuned network: its task and deep-supervision heads are expected
        network, target = finetuned_network(finetuned), f"{describe(into, args)} + heads: the fine-tuned {finetuned['task']} network of {FinetuneRun(path.parent).model}"
    else:
        network, target = build_target(into, args), describe(into, args)
    report = load_pretrained(network, tensors, in_channels=args["in_channels"], source=str(path), verbose=False, untrained=sidecar.untrained if sidecar else None)
    report.source, report.target = str(path), target
    return report
