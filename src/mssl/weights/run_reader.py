"""What every export of a pre-training run starts from: its last checkpoint, its config, the student
backbone's tensors and the sidecar that describes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mssl.config import PretrainConfig, load_yaml
from mssl.methods import DECODING_OBJECTIVES
from mssl.models.backbones import build_backbone
from mssl.runs import PretrainRun
from mssl.weights.checks import check_finite
from mssl.weights.fingerprints import untrained_keys
from mssl.weights.safe_io import read_checkpoint
from mssl.weights.sidecar import EncoderSidecar, build_sidecar

BACKBONE_PREFIX = "method.backbone."
HPARAMS_CONFIG = ("hyper_parameters", "config")  # where PretrainModule stores the resolved config


def run_config(run: Path, checkpoint: dict[str, Any]) -> PretrainConfig:
    """The resolved config the checkpoint was trained with (its own copy, else RUN/config.yaml)."""
    files = PretrainRun(run)
    stored = checkpoint.get(HPARAMS_CONFIG[0], {}).get(HPARAMS_CONFIG[1])
    source = f"{files.checkpoint} ({'.'.join(HPARAMS_CONFIG)})"
    if stored is None:
        source, stored = str(files.config), load_yaml(files.config)
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


def exported_state(checkpoint_file: Path, checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone tensors every export format starts from; a diverged run (NaN/inf) exports nothing."""
    tensors = backbone_state(checkpoint, str(checkpoint_file))
    check_finite(tensors, str(checkpoint_file))
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


def read_run(run: Path) -> tuple[Path, dict[str, Any], PretrainConfig]:
    """The last checkpoint of a run folder, its content and the config it was trained with."""
    checkpoint_file = PretrainRun(run).checkpoint
    if not checkpoint_file.is_file():
        raise FileNotFoundError(f"{run}: no {checkpoint_file.relative_to(run)}; is this a run folder written by `mssl pretrain`?")
    checkpoint = read_checkpoint(checkpoint_file)
    return checkpoint_file, checkpoint, run_config(run, checkpoint)


def export_sidecar(config: PretrainConfig, checkpoint: dict[str, Any], run: Path, tensors: dict[str, torch.Tensor], initialised_decoder: list[str]) -> EncoderSidecar:
    """The sidecar of the backbone ``tensors`` exported from ``run`` (``initialised_decoder``: see :func:`full_backbone_state`)."""
    untrained = untrained_tensors(tensors, run, initialised_decoder)
    return build_sidecar(config, int(checkpoint.get("global_step", 0)), run, tensors, untrained, decoder_trained=not initialised_decoder)
