"""Which exported tensors did pre-training actually change?

A method may leave parts of its backbone untouched: S²DC trains SwinUNETR's ``swinViT`` only, so its
``encoder*``/``decoder*`` tensors leave training exactly as initialised. Presenting them as pre-trained
misleads every fine-tuning comparison. At the start of a run we store one fingerprint per backbone tensor;
at export a tensor whose fingerprint is unchanged is recorded in the sidecar as ``untrained``, and loading
reports it apart from the pre-trained ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from mssl.runs import PretrainRun


def fingerprint(tensor: torch.Tensor) -> str:
    """A digest of a tensor's dtype, shape and bytes: equal digests mean bit-identical tensors."""
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:32]


def write_initial_fingerprints(tensors: Mapping[str, torch.Tensor], run: Path) -> Path:
    """Fingerprints of the untrained backbone, once per run (a resumed run keeps the first file)."""
    path = PretrainRun(run).initial_fingerprints
    if not path.is_file():
        path.write_text(json.dumps({key: fingerprint(t) for key, t in tensors.items()}, indent=0), encoding="utf-8")
    return path


def untrained_keys(tensors: Mapping[str, torch.Tensor], run: Path) -> list[str] | None:
    """The keys of ``tensors`` still bit-identical to the run's initialisation; None for runs that
    recorded no fingerprints (written before this check existed)."""
    path = PretrainRun(run).initial_fingerprints
    if not path.is_file():
        return None
    initial = json.loads(path.read_text(encoding="utf-8"))
    return sorted(key for key, tensor in tensors.items() if initial.get(key) == fingerprint(tensor))
