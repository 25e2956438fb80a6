"""What a pre-trained export says about itself, and loading it into a downstream network.

The sidecar (``encoder.json`` next to ``encoder.safetensors``; ``config.yaml`` of a run folder) tells us
which backbone to build and how the pre-training data were preprocessed, so fine-tuning reuses both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from torch import nn

from mssl.config import BackboneConfig
from mssl.export.safe_io import resolve_weights

SIDECAR = "encoder.json"
RUN_CONFIG = "config.yaml"
# the U-Net's constructor calls its widths ``channels``; BackboneConfig calls them ``unet_channels``
_CONSTRUCTOR_TO_CONFIG = {"channels": "unet_channels", "use_checkpoint": "gradient_checkpointing"}


@dataclass
class PretrainedInfo:
    """Backbone and preprocessing of a pre-trained encoder (None where the source does not say)."""

    path: Path
    backbone: BackboneConfig
    preset: str | None
    spacing: tuple[float, float, float] | None
    method: str | None


def _backbone(raw: dict[str, Any], source: Path) -> BackboneConfig:
    fields = {_CONSTRUCTOR_TO_CONFIG.get(k, k): v for k, v in raw.items()}
    known = {k: v for k, v in fields.items() if k in BackboneConfig.model_fields}
    if "name" not in known:
        raise ValueError(f"{source}: backbone description {raw} has no 'name'")
    return BackboneConfig(**known)


def _sidecar_of(weights_file: Path) -> Path | None:
    for candidate in (weights_file.with_suffix(".json"), weights_file.parent / SIDECAR):
        if candidate.is_file():
            return candidate
    return None


def _run_config_of(weights_file: Path) -> Path | None:
    for folder in (weights_file.parent, *weights_file.parents[:3]):
        if (folder / RUN_CONFIG).is_file():
            return folder / RUN_CONFIG
    return None


def describe_weights(weights: Path) -> PretrainedInfo:
    """Read the sidecar of an export (or the config of a run folder) behind ``weights``."""
    weights_file = resolve_weights(weights)
    sidecar = _sidecar_of(weights_file)
    if sidecar is not None:
        meta = json.loads(sidecar.read_text())
    else:
        run_config = _run_config_of(weights_file)
        if run_config is None:
            raise FileNotFoundError(f"{weights}: no {SIDECAR} or {RUN_CONFIG} says which backbone these weights belong to")
        sidecar = run_config
        meta = yaml.safe_load(run_config.read_text()) or {}
    if "backbone" not in meta:
        raise ValueError(f"{sidecar}: no 'backbone' entry")
    backbone = meta["backbone"]
    if isinstance(backbone, dict) and isinstance(backbone.get("args"), dict):
        backbone = {"name": backbone["name"], **backbone["args"]}
    preset = meta.get("preset")
    if isinstance(preset, dict):
        preset = preset.get("name")
    spacing = meta.get("spacing")
    return PretrainedInfo(
        path=weights_file,
        backbone=_backbone(backbone, sidecar),
        preset=preset,
        spacing=tuple(float(s) for s in spacing) if spacing else None,
        method=meta.get("method"),
    )


def load_encoder(network: nn.Module, weights: Path, console: Console | None = None) -> Any:
    """Load pre-trained weights into ``network`` (non-strict) and print the per-module load report."""
    from mssl.export.loading import load_pretrained

    report = load_pretrained(network, weights, strict=False)
    (console or Console()).print(report)
    if not report.loaded and not report.adapted:
        raise ValueError(f"{weights}: no tensor matched {type(network).__name__}; wrong backbone or key layout")
    return report
