"""What a pre-trained export says about itself, and loading it into a downstream network.

The sidecar (``encoder.json`` next to ``encoder.safetensors``; ``config.yaml`` of a run folder) tells us
which backbone to build and how the pre-training data were preprocessed, so fine-tuning reuses both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from torch import nn

from mssl.config import BackboneConfig
from mssl.data.preprocess import PresetConfig
from mssl.runs import PretrainRun
from mssl.weights.inspect import check_claimed_sizes
from mssl.weights.safe_io import SAFETENSORS_SUFFIX, read_shapes, resolve_weights
from mssl.weights.sidecar import EncoderSidecar, backbone_from_description, read_sidecar


@dataclass
class PretrainedInfo:
    """Backbone and preprocessing of a pre-trained encoder (None where the source does not say)."""

    path: Path
    backbone: BackboneConfig
    preset: PresetConfig | None
    method: str | None


def _run_config_of(weights_file: Path) -> Path | None:
    configs = (PretrainRun(folder).config for folder in (weights_file.parent, *weights_file.parents[:3]))
    return next((config for config in configs if config.is_file()), None)


def _from_run_config(weights: Path, weights_file: Path) -> tuple[EncoderSidecar, Path]:
    """What the ``config.yaml`` of the run behind a checkpoint says: its backbone and method."""
    run_config = _run_config_of(weights_file)
    if run_config is None:
        raise FileNotFoundError(f"{weights}: no sidecar or run {PretrainRun(Path()).config} says which backbone these weights belong to")
    config = yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{run_config}: expected a mapping of options, got {type(config).__name__}")
    if "backbone" not in config:
        raise ValueError(f"{run_config}: no 'backbone' entry")
    return EncoderSidecar(backbone=backbone_from_description(config["backbone"], run_config), method=config.get("method")), run_config


def describe_weights(weights: Path) -> PretrainedInfo:
    """Read the sidecar of an export (or the ``config.yaml`` of a run folder) behind ``weights``."""
    weights_file = resolve_weights(weights)
    sidecar = read_sidecar(weights_file) if weights_file.suffix == SAFETENSORS_SUFFIX else None
    source = weights_file
    if sidecar is None:
        sidecar, source = _from_run_config(weights, weights_file)
    if sidecar.backbone is None:
        raise ValueError(f"{source}: no 'backbone' entry")
    check_claimed_sizes(sidecar.backbone, read_shapes(weights_file), str(source))  # before anything is built from it
    return PretrainedInfo(path=weights_file, backbone=sidecar.backbone, preset=sidecar.preset, method=sidecar.method)


def load_encoder(network: nn.Module, weights: Path, console: Console | None = None) -> Any:
    """Load pre-trained weights into ``network`` (non-strict) and print the per-module load report."""
    from mssl.weights.loading import load_pretrained

    report = load_pretrained(network, weights, strict=False, verbose=False)
    (console or Console()).print(report)
    if not report.loaded and not report.adapted:
        raise ValueError(f"{weights}: no tensor matched {type(network).__name__}; wrong backbone or key layout")
    return report
