"""``mssl export RUN``: the trained encoder of a run as plain weights plus a provenance sidecar.

The student backbone (``method.backbone.*`` in the Lightning checkpoint) is written under its own
names, which are MONAI's for ``swin`` (``swinViT.*``, ``encoder*``, ``decoder*``: loads into
``monai.networks.nets.SwinUNETR``) and the documented ``encoders.{i}.*`` / ``decoders.{j}.conv.*``
for ``unet`` (loads into :class:`mssl.models.backbones.UNetBackbone`). Before anything is written the
weights are loaded into a freshly built backbone (strictly, but for the decoder an S²DC student never
had), so a broken export fails here, not at fine-tuning time.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch

from mssl.config import DataConfig, PretrainConfig, load_yaml
from mssl.weights.checks import check_finite
from mssl.weights.fingerprints import untrained_keys
from mssl.weights.safe_io import EXPORT_DIR, LAST_CHECKPOINT, read_checkpoint, write_safetensors
from mssl.weights.sidecar import (
    METADATA_KEY,
    SIDECAR_FORMAT,
    backbone_spec,
    file_sha256,
    package_versions,
    write_sidecar,
)
from mssl.methods import DECODING_OBJECTIVES
from mssl.models.backbones import build_backbone

ExportFormat = Literal["monai", "torch", "nnunet"]
BACKBONE_PREFIX = "method.backbone."
RUN_CONFIG = "config.yaml"
HPARAMS_CONFIG = ("hyper_parameters", "config")  # where PretrainModule stores the resolved config
FILE_NAMES: dict[str, str] = {"monai": "encoder.safetensors", "torch": "encoder.pt"}


def run_config(run: Path, checkpoint: dict[str, Any]) -> PretrainConfig:
    """The resolved config the checkpoint was trained with (its own copy, else RUN/config.yaml)."""
    stored = checkpoint.get(HPARAMS_CONFIG[0], {}).get(HPARAMS_CONFIG[1])
    source = f"{run / LAST_CHECKPOINT} ({'.'.join(HPARAMS_CONFIG)})"
    if stored is None:
        source, stored = str(run / RUN_CONFIG), load_yaml(run / RUN_CONFIG)
    try:
        return PretrainConfig.model_validate(stored)
    except ValueError as error:
        raise ValueError(f"{source}: not a valid pre-training config ({error})") from None


def backbone_state(checkpoint: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The student backbone's tensors under their own names (``method.backbone.`` removed)."""
    state = checkpoint.get("state_dict", {})
    tensors = {k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    if not tensors:
        raise ValueError(f"{source}: no '{BACKBONE_PREFIX}*' tensors in state_dict; not an mssl pre-training checkpoint")
    return tensors


def full_backbone_state(config: PretrainConfig, tensors: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every tensor of the run's backbone, and the decoder keys that are an initialisation (S²DC: all of them).

    S²DC's student has no decoder (it would sit idle), yet exports keep the whole backbone's keys and
    shapes, so they load into SwinUNETR or nnU-Net as before: an untrained decoder is the backbone's own
    initialisation (seeded with the run's seed, so an export is reproducible) and the sidecar says so.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        backbone = build_backbone(config.backbone)
    decoder = tuple(f"{name}." for name in backbone.decoder_names)
    encoder_only = set(tensors) == {k for k in backbone.state_dict() if not k.startswith(decoder)}
    try:
        backbone.load_state_dict(tensors, strict=not encoder_only)
    except RuntimeError as error:
        raise ValueError(f"{source}: backbone weights do not match its config.backbone ({error})") from None
    # runs from before S²DC's student lost its decoder saved an untrained one: the method decides, not the keys
    state = backbone.state_dict()
    trained = bool(DECODING_OBJECTIVES.intersection(config.objectives))
    return state, [] if trained else [k for k in state if k.startswith(decoder)]


def untrained_tensors(tensors: dict[str, torch.Tensor], run: Path, initialised_decoder: list[str]) -> list[str] | None:
    """Keys of ``tensors`` pre-training left as initialised: unchanged since the run's first fingerprints, or
    a decoder the method never had. None when neither is known (runs from before this was measured)."""
    measured = untrained_keys(tensors, run)
    if measured is None and not initialised_decoder:
        return None
    return sorted(set(measured or []) | set(initialised_decoder))


def crop_sizes(config: PretrainConfig) -> dict[str, list[int]]:
    """The crop each objective trained on, in voxels."""
    return {objective: list(getattr(config, objective).roi) for objective in config.objectives}


def data_provenance(data: DataConfig) -> dict[str, Any]:
    """Intensity preset, spacing, case count and content hash of the cases the run trained on.

    When the cache is gone (weights exported on another machine) the fields are None, not an error.
    """
    from mssl.data.cache import CacheIndex
    from mssl.data.errors import DataError

    unknown = {"cache": str(data.cache) if data.cache else None, "available": False, "preset": None, "spacing": None}
    if data.cache is None or not Path(data.cache).is_dir():
        return unknown
    try:
        index = CacheIndex.open(data.cache).select(split=data.split, case_ids=data.case_ids)
    except (DataError, KeyError) as error:
        return {**unknown, "error": str(error)}
    spacings = sorted({tuple(case.spacing) for case in index.cases})
    spacing = index.preset.spacing or (spacings[0] if len(spacings) == 1 else None)
    return {
        "cache": str(Path(data.cache).resolve()),
        "available": True,
        "index_hash": index.hash(),
        "cases": len(index),
        "preset": index.preset.model_dump(mode="json"),
        "spacing": list(spacing) if spacing else None,
    }


def build_sidecar(
    config: PretrainConfig, checkpoint: dict[str, Any], run: Path, tensors: dict[str, torch.Tensor], initialised_decoder: list[str]
) -> dict[str, Any]:
    data = data_provenance(config.data)
    preset, spacing, index_hash = data.pop("preset"), data.pop("spacing"), data.pop("index_hash", None)
    return {
        "format": SIDECAR_FORMAT,
        "method": config.method,
        "backbone": backbone_spec(config.backbone),
        "in_channels": config.backbone.in_channels,
        "spacing": spacing,
        "preset": preset,
        "roi": crop_sizes(config),
        "steps": int(checkpoint.get("global_step", 0)),
        "data_index_hash": index_hash,
        "data": data,  # cache folder, whether it was found, number of cases
        "tensors": len(tensors),
        "decoder_trained": not initialised_decoder,  # False: the decoder tensors are an untrained initialisation (S²DC)
        # tensors no step of the method changed (measured against the run's initial fingerprints, plus an
        # initialised decoder): loaded as "not trained by the method", never as pre-trained
        "untrained": untrained_tensors(tensors, run, initialised_decoder),
        # nnU-Net's decoder holds the encoder too: a tensor saved under two names counts once
        "parameters": int(sum(t.numel() for t in {(t.data_ptr(), t.shape): t for t in tensors.values()}.values())),
        "source": {"run": str(run.resolve()), "checkpoint": str((run / LAST_CHECKPOINT).resolve())},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "config": config.model_dump(mode="json"),
    }


def read_run(run: Path) -> tuple[Path, dict[str, Any], PretrainConfig]:
    """The last checkpoint of a run folder, its content and the config it was trained with."""
    checkpoint_file = run / LAST_CHECKPOINT
    if not checkpoint_file.is_file():
        raise FileNotFoundError(f"{run}: no {LAST_CHECKPOINT}; is this a run folder written by `mssl pretrain`?")
    checkpoint = read_checkpoint(checkpoint_file)
    return checkpoint_file, checkpoint, run_config(run, checkpoint)


def export(run: str | Path, out: str | Path | None = None, format: ExportFormat = "monai", in_channels: int | None = None) -> Path:
    """Export the encoder of ``run`` to ``out`` (default RUN/export); returns the weight file.

    ``monai``: ``encoder.safetensors`` (no pickle; the sidecar is embedded in its header too);
    ``torch``: ``encoder.pt``, a plain state dict readable with ``torch.load(weights_only=True)``.
    Both come with ``encoder.json``. ``nnunet``: see :func:`mssl.weights.nnunet.export_nnunet`, whose
    stem ``in_channels`` adapts to the target dataset (nnU-Net loads only matching shapes).
    """
    if format == "nnunet":
        from mssl.weights.nnunet import export_nnunet  # it builds on this module

        return export_nnunet(run, out, in_channels)
    if in_channels is not None:
        raise ValueError("in_channels applies to format='nnunet' only (`mssl inspect --in-channels` adapts other exports)")
    if format not in FILE_NAMES:
        raise ValueError(f"unknown export format {format!r}; choose one of {sorted([*FILE_NAMES, 'nnunet'])}")
    run = Path(run)
    checkpoint_file, checkpoint, config = read_run(run)
    tensors = backbone_state(checkpoint, str(checkpoint_file))
    check_finite(tensors, str(checkpoint_file))  # a diverged run exports nothing
    tensors, initialised_decoder = full_backbone_state(config, tensors, str(checkpoint_file))
    sidecar = build_sidecar(config, checkpoint, run, tensors, initialised_decoder)
    weights = Path(out) if out is not None else run / EXPORT_DIR
    weights = weights / FILE_NAMES[format]
    if format == "monai":
        write_safetensors(tensors, weights, {METADATA_KEY: json.dumps(sidecar, default=str)})
    else:
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, weights)
    sidecar["weights"] = {"file": weights.name, "sha256": file_sha256(weights)}
    write_sidecar(sidecar, weights)
    return weights
