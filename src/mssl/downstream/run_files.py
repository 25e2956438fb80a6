"""A fine-tuned run on disk (:class:`mssl.runs.FinetuneRun`): the model description and the best weights.

No pickle anywhere: ``mssl evaluate`` rebuilds the network from its description and loads plain tensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from mssl.models.task_networks import finetuned_network
from mssl.runs import FinetuneRun
from mssl.train.checkpoint import NonFiniteStateError
from mssl.weights.checks import listed, nonfinite_names


def save_weights(network: nn.Module, out: Path) -> Path:
    """Write copies of the network's tensors (CPU, contiguous) as ``best.safetensors``, atomically.

    A diverged network (NaN/inf anywhere) is refused with :class:`~mssl.train.checkpoint.NonFiniteStateError`
    before anything is written, and a write that fails midway never replaces the file: either way the
    previous best weights stay as they were.
    """
    path = FinetuneRun(out).weights
    # copies: safetensors refuses shared storage (nnU-Net's networks hold the encoder under two names)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in network.state_dict().items()}
    bad = nonfinite_names(tensors)
    if bad:  # the same refusal as a diverged pre-training's checkpoint write
        raise NonFiniteStateError(
            f"{path}: not written, the network diverged (NaN/inf in {listed(bad)}); the previous best weights are kept. "
            "Try a lower --lr."
        )
    partial = path.with_name(f".{path.name}.partial")
    try:
        save_file(tensors, str(partial))
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, content: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def load_finetuned(run: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the run's network from ``model.json`` and load ``best.safetensors`` strictly."""
    files = FinetuneRun(run)
    description, weights = files.description(), files.weights
    if not weights.is_file():
        raise FileNotFoundError(f"{run}: {weights.name} missing (did the fine-tuning finish?)")
    network = finetuned_network(description)
    network.load_state_dict(load_file(str(weights)))
    network.eval()
    return network, description
