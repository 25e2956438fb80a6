"""``mssl export RUN --format nnunet``: weights ``nnUNetv2_train ... -pretrained_weights FILE`` loads.

nnU-Net's ``load_pretrained_weights`` reads ``torch.load(FILE)["network_weights"]`` and requires every
key of its network except ``.seg_layers.`` to be present with the same shape. mssl's nnU-Net backbones
(``plainconv``, ``resenc``) already carry nnU-Net's key names, so the export is their state dict,
checked here against a freshly built nnU-Net network before anything is written. Next to it:

    nnunet_pretrained.pth   {"network_weights": ..., "mssl": <sidecar JSON string>}
    nnunet_pretrained.json  the provenance sidecar (as for every mssl export)
    nnunet_plans.json       the pre-trained architecture as an nnU-Net plans fragment, with the
                            pre-training channels, spacing and intensity normalisation, which
                            ``mssl nnunet-plans`` merges into a target dataset's plans
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mssl.config import PretrainConfig
from mssl.models.backbones import build_backbone
from mssl.nnunet_arch import NNUNET_CLASSES, REQUIRES_IMPORT
from mssl.runs import EXPORT_FILES, ExportFolder, PretrainRun
from mssl.weights.nnunet_plans import CONFIGURATION, PLANS_FORMAT
from mssl.weights.run_reader import export_sidecar, exported_state, full_backbone_state, read_run
from mssl.weights.sidecar import EncoderSidecar, network_spec, write_sidecar
from mssl.weights.stem import adapt_input_channels, is_input_channel_mismatch

WEIGHTS_KEY = "network_weights"  # what nnU-Net's load_pretrained_weights reads
SEG_LAYERS = ".seg_layers."  # what it skips
# mssl intensity preset → the nnU-Net normalisation of the same family (nnU-Net picks it from channel_names)
NORMALIZATION = {"ct": "CTNormalization", "mri": "ZScoreNormalization", "none": "NoNormalization"}


def nnunet_state(config: PretrainConfig, tensors: dict[str, torch.Tensor], in_channels: int | None) -> dict[str, torch.Tensor]:
    """The backbone's state dict (nnU-Net key names, shared encoder tensors under both of nnU-Net's names),
    with the stem adapted to ``in_channels`` when given (see ``mssl.weights.stem``)."""
    backbone = build_backbone(config.backbone)
    backbone.load_state_dict(tensors, strict=True)
    state = backbone.state_dict()
    if in_channels is not None and in_channels != config.backbone.in_channels:
        target = build_backbone(config.backbone.model_copy(update={"in_channels": in_channels})).state_dict()
        state = {
            k: adapt_input_channels(v, in_channels) if is_input_channel_mismatch(v.shape, target[k].shape) else v
            for k, v in state.items()
        }
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def check_against_nnunet(config: PretrainConfig, state: dict[str, torch.Tensor], in_channels: int, source: str) -> None:
    """Fail now, not in nnU-Net: the rule of its loader, on the network its plans build (any class count)."""
    from mssl.models.nnunet_backbones import build_nnunet_network

    network = build_nnunet_network(config.backbone.name, in_channels, config.backbone.nnunet, num_classes=2)
    problems = [
        f"{k}: {'missing' if k not in state else f'shape {tuple(state[k].shape)} vs {tuple(v.shape)}'}"
        for k, v in network.state_dict().items()
        if SEG_LAYERS not in k and (k not in state or state[k].shape != v.shape)
    ]
    if problems:
        raise ValueError(f"{source}: weights do not fit nnU-Net's {config.backbone.name} network ({'; '.join(problems[:5])})")


def plans_fragment(config: PretrainConfig, sidecar: EncoderSidecar, in_channels: int) -> dict[str, Any]:
    """The pre-trained architecture as nnU-Net plans (one configuration) plus what the target must match."""
    name, arch = config.backbone.name, config.backbone.nnunet
    preset = sidecar.preset.name if sidecar.preset else None
    normalization = NORMALIZATION.get(preset) if preset else None
    crop = next(iter(sidecar.roi.values()), None)
    return {
        "mssl": {
            "format": PLANS_FORMAT,
            "weights": EXPORT_FILES["nnunet"],
            "backbone": name,
            "in_channels": in_channels,
            "preset": preset,  # None when the pre-training cache was not found at export time
            "normalization": normalization,
            "spacing": list(sidecar.spacing) if sidecar.spacing else None,
            "pretrain_crop": crop,
            "total_stride": arch.total_stride(),
        },
        "configurations": {
            CONFIGURATION: {
                "architecture": {
                    "network_class_name": NNUNET_CLASSES[name],
                    "arch_kwargs": arch.arch_kwargs(name),
                    "_kw_requires_import": list(REQUIRES_IMPORT),
                },
            }
        },
    }


def export_nnunet(run: str | Path, out: str | Path | None = None, in_channels: int | None = None) -> Path:
    """Write ``nnunet_pretrained.pth`` (+ sidecar and ``nnunet_plans.json``) for ``run``; returns the .pth file."""
    run = Path(run)
    checkpoint_file, checkpoint, config = read_run(run)
    if config.backbone.name not in NNUNET_CLASSES:
        raise ValueError(
            f"{run}: trained backbone {config.backbone.name!r}; --format nnunet needs one of nnU-Net's networks "
            f"({', '.join(NNUNET_CLASSES)}); use --format monai for this run"
        )
    if in_channels is not None and in_channels < 1:
        raise ValueError(f"in_channels must be ≥ 1, got {in_channels}")
    tensors, initialised_decoder = full_backbone_state(config, exported_state(checkpoint_file, checkpoint), str(checkpoint_file))
    channels = in_channels or config.backbone.in_channels
    state = nnunet_state(config, tensors, in_channels)
    check_against_nnunet(config, state, channels, str(checkpoint_file))

    sidecar = export_sidecar(config, checkpoint, run, tensors, initialised_decoder)
    if channels != config.backbone.in_channels:  # the export is the network for ``channels`` inputs
        sidecar.backbone = config.backbone.model_copy(update={"in_channels": channels})
        sidecar.network = network_spec(sidecar.backbone)
        sidecar.stem_adapted_from = config.backbone.in_channels
    folder = ExportFolder(out if out is not None else PretrainRun(run).export.path)
    folder.path.mkdir(parents=True, exist_ok=True)
    weights = folder.weights("nnunet")
    torch.save({WEIGHTS_KEY: state, "mssl": sidecar.to_json()}, weights)
    write_sidecar(sidecar, weights)
    plans = plans_fragment(config, sidecar, channels)
    folder.nnunet_plans.write_text(json.dumps(plans, indent=2) + "\n", encoding="utf-8")
    return weights
