"""A fine-tuned run on disk: ``model.json`` (what to build, how data were preprocessed) + ``best.safetensors``.

No pickle anywhere: ``mssl evaluate`` rebuilds the network from ``model.json`` and loads plain tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from mssl.config import BackboneConfig
from mssl.downstream.networks import build_classifier, build_segmentation_network

MODEL_FILE = "model.json"
WEIGHTS_FILE = "best.safetensors"
RESULT_FILE = "result.json"


def save_weights(network: nn.Module, out: Path) -> Path:
    """Write the network's tensors (CPU, contiguous) as ``best.safetensors``."""
    path = Path(out) / WEIGHTS_FILE
    save_file({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, str(path))
    return path


def write_json(path: Path, content: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def read_model_description(run: Path) -> dict[str, Any]:
    path = Path(run) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run}: not a fine-tuned run ({MODEL_FILE} missing)")
    return json.loads(path.read_text(encoding="utf-8"))


def load_finetuned(run: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the run's network from ``model.json`` and load ``best.safetensors`` strictly."""
    description = read_model_description(run)
    weights = Path(run) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{run}: {WEIGHTS_FILE} missing (did the fine-tuning finish?)")
    backbone = BackboneConfig(**description["backbone"])
    if description["task"] == "seg":
        network = build_segmentation_network(backbone, description["num_classes"], description.get("deep_supervision", 0))
    else:
        network = build_classifier(backbone, description["num_outputs"])
    network.load_state_dict(load_file(str(weights)))
    network.eval()
    return network, description
