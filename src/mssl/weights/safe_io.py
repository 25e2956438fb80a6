"""Read and write weight files without ever unpickling untrusted code.

``.safetensors`` files are plain tensors plus a string header. Every other file (``.pt``, ``.pth``,
Lightning ``.ckpt``) goes through ``torch.load(weights_only=True)``, which only rebuilds tensors and
containers; a file that needs anything else is refused with :class:`UnsafeWeightsError`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mssl.runs import ExportFolder, PretrainRun

SAFETENSORS_SUFFIX = ".safetensors"

# Containers that checkpoints of common projects wrap their weights in, most specific first:
# Lightning / MONAI / VoCo ``state_dict``, generic ``model``, nnssl ``network_weights``, ``net``, VoCo ``student``.
WRAPPER_KEYS = ("state_dict", "model", "network_weights", "net", "student")
UNPICKLER_DETAIL = "WeightsUnpickler error:"  # the line of torch's refusal that names the offending global


class UnsafeWeightsError(ValueError):
    """A weight file that can only be read by executing pickled code."""


def resolve_weights(path: str | Path) -> Path:
    """The weight file behind ``path``: the file itself, an export folder, or a run folder.

    A folder resolves to ``encoder.safetensors``, then ``export/encoder.safetensors``, then
    ``checkpoints/last.ckpt`` (the raw training checkpoint).
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        run = PretrainRun(path)
        candidates = (ExportFolder(path).encoder, run.export.encoder, run.checkpoint)
        found = next((candidate for candidate in candidates if candidate.is_file()), None)
        if found is None:
            looked = ", ".join(str(candidate.relative_to(path)) for candidate in candidates)
            raise FileNotFoundError(f"{path}: no weights found (looked for {looked})")
        return found
    raise FileNotFoundError(f"{path}: no such weight file or folder")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a weight file, unwrapped from checkpoint containers (``state_dict``, ``model``, ...).

    Never unpickles code: safetensors, or ``torch.load(weights_only=True)``.
    """
    path = resolve_weights(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as error:
            raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    return unwrap_state_dict(read_checkpoint(path), source=str(path))


def read_shapes(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weight file as shape-only ``meta`` tensors: from the safetensors header alone
    (nothing allocated), else read like :func:`read_weights`."""
    path = resolve_weights(path)
    if path.suffix != SAFETENSORS_SUFFIX:
        return {k: v.to("meta") for k, v in read_weights(path).items()}
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: torch.empty(handle.get_slice(k).get_shape(), device="meta") for k in handle.keys()}
    except SafetensorError as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None


def read_checkpoint(path: str | Path) -> Any:
    """The whole content of a torch / Lightning file through ``torch.load(weights_only=True)``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines()]
        detail = next((line for line in lines if line.startswith(UNPICKLER_DETAIL)), "unsupported pickle content")
        raise UnsafeWeightsError(
            f"{path}: refused to load, the file needs pickled objects that weights-only loading does not execute "
            f"({detail.split('. ')[0]}); re-save it as a plain state dict or safetensors from a trusted source"
        ) from None
    except (RuntimeError, EOFError) as error:
        raise ValueError(f"{path}: not a readable torch checkpoint ({str(error).splitlines()[0]})") from None


def unwrap_state_dict(content: Any, source: str = "weights") -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint: descend through known wrapper keys, keep tensor values."""
    while isinstance(content, Mapping):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(content.get(k), Mapping)), None)
        if wrapper is None:
            break
        content = content[wrapper]
    if isinstance(content, torch.nn.Module):
        content = content.state_dict()
    if not isinstance(content, Mapping):
        raise ValueError(f"{source}: expected a mapping of tensors, got {type(content).__name__}")
    tensors = {str(k): v for k, v in content.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{source}: no tensors found (top-level keys: {sorted(map(str, content))[:10]})")
    return tensors


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string header of a safetensors file ({} for other formats)."""
    path = resolve_weights(path)
    if path.suffix != SAFETENSORS_SUFFIX:
        return {}
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str]) -> Path:
    """Write contiguous CPU copies of ``tensors`` (shared storage is split, as safetensors requires)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(plain, str(path), metadata=dict(metadata))
    return path
