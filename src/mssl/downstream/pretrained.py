"""What a pre-trained export says about itself, and loading it into a downstream network.

The sidecar (``encoder.json`` next to ``encoder.safetensors``; ``config.yaml`` of a run folder) tells us
which backbone to build and how the pre-training data were preprocessed, so fine-tuning reuses both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from rich.console import Console
from torch import nn

from mssl.config import BackboneConfig, one_line_errors
from mssl.data.preprocess import PresetConfig
from mssl.runs import PretrainRun
from mssl.weights.inspect import check_claimed_sizes
from mssl.weights.safe_io import read_shapes, resolve_weights
from mssl.weights.sidecar import backbone_spec, read_sidecar

# the U-Net's constructor calls its widths ``channels``; BackboneConfig calls them ``unet_channels``
_CONSTRUCTOR_TO_CONFIG = {"channels": "unet_channels", "use_checkpoint": "gradient_checkpointing"}
M = TypeVar("M", bound=BaseModel)


@dataclass
class PretrainedInfo:
    """Backbone and preprocessing of a pre-trained encoder (None where the source does not say)."""

    path: Path
    backbone: BackboneConfig
    preset: PresetConfig | None
    method: str | None


def _backbone(raw: dict[str, Any], source: Path) -> BackboneConfig:
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: backbone description must be a mapping, got {raw!r}")
    fields = {_CONSTRUCTOR_TO_CONFIG.get(k, k): v for k, v in raw.items()}
    known = {k: v for k, v in fields.items() if k in BackboneConfig.model_fields}
    if "name" not in known:
        raise ValueError(f"{source}: backbone description {raw} has no 'name'")
    return _validated(BackboneConfig, known, f"{source}: backbone")


def _preset(meta: dict[str, Any], source: Path) -> PresetConfig | None:
    """A preset given as a PresetConfig dump or as a bare name (with a separate ``spacing``)."""
    preset = meta.get("preset")
    if preset is None:
        return None
    # a full preset dump says itself whether it resampled (spacing None = native); a bare name borrows ``spacing``
    fields = dict(preset) if isinstance(preset, dict) else {"name": preset, "spacing": meta.get("spacing")}
    return _validated(PresetConfig, {k: v for k, v in fields.items() if k in PresetConfig.model_fields}, f"{source}: preset")


def _validated(model: type[M], fields: dict[str, Any], what: str) -> M:
    """``model(**fields)``, or one ValueError line naming ``what`` and every bad key (a sidecar may be damaged or hostile)."""
    try:
        return model(**fields)
    except ValidationError as error:
        raise ValueError(f"{what}: {one_line_errors(error)}") from None


def _run_config_of(weights_file: Path) -> Path | None:
    for folder in (weights_file.parent, *weights_file.parents[:3]):
        if PretrainRun(folder).config.is_file():
            return PretrainRun(folder).config
    return None


def describe_weights(weights: Path) -> PretrainedInfo:
    """Read the sidecar of an export (or the ``config.yaml`` of a run folder) behind ``weights``."""
    weights_file = resolve_weights(weights)
    meta = read_sidecar(weights_file) if weights_file.suffix == ".safetensors" else None
    source = weights_file
    if meta is None:
        run_config = _run_config_of(weights_file)
        if run_config is None:
            raise FileNotFoundError(f"{weights}: no sidecar or run {PretrainRun(Path()).config} says which backbone these weights belong to")
        source = run_config
        meta = yaml.safe_load(run_config.read_text(encoding="utf-8")) or {}
        if not isinstance(meta, dict):
            raise ValueError(f"{source}: expected a mapping of options, got {type(meta).__name__}")
    if "backbone" not in meta:
        raise ValueError(f"{source}: no 'backbone' entry")
    backbone = meta["backbone"]
    if isinstance(backbone, dict) and isinstance(backbone.get("args"), dict):
        backbone = {"name": backbone["name"], **backbone["args"]}
    config = _backbone(backbone, source)
    check_claimed_sizes(backbone_spec(config), read_shapes(weights_file), str(source))  # before anything is built from it
    return PretrainedInfo(path=weights_file, backbone=config, preset=_preset(meta, source), method=meta.get("method"))


def load_encoder(network: nn.Module, weights: Path, console: Console | None = None) -> Any:
    """Load pre-trained weights into ``network`` (non-strict) and print the per-module load report."""
    from mssl.weights.loading import load_pretrained

    report = load_pretrained(network, weights, strict=False, verbose=False)
    (console or Console()).print(report)
    if not report.loaded and not report.adapted:
        raise ValueError(f"{weights}: no tensor matched {type(network).__name__}; wrong backbone or key layout")
    return report
