"""mssl: self-supervised pre-training of 3D medical image encoders (S²DC, GVSL) and its downstream proof.

The Python API mirrors the CLI one to one (``mssl.prepare(...)`` ≡ ``mssl prepare ...``). Names are
resolved lazily so that ``import mssl`` does not import torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("mssl")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

# public name -> "module:attribute"; each command's owner adds its entry here
_API: dict[str, str] = {
    "prepare": "mssl.data.prepare:prepare",
    "load_pretrained": "mssl.weights.loading:load_pretrained",
    "export": "mssl.weights.exporter:export",
    "inspect_weights": "mssl.weights.inspect:inspect_weights",
    "visualize": "mssl.viz.visualize:visualize",
    "demo": "mssl.pipelines.demo:run_demo",
    "pretrain": "mssl.pipelines.pretrain:pretrain",
    "finetune": "mssl.downstream.finetune:finetune",
    "evaluate": "mssl.downstream.evaluate:evaluate",
    "probe": "mssl.downstream.probe:probe",
    "benchmark": "mssl.pipelines.benchmark:benchmark",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attribute = _API[name].split(":")
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'mssl' has no attribute {name!r}")
