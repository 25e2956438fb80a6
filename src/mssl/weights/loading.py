"""Load pre-trained weights into any network and say exactly what happened.

The top complaint of users of every 3D SSL project is loading weights: wrapper dicts, key prefixes
(``module.``, ``student.``, ``backbone.``, ``_orig_mod.``), ``swin_vit`` vs ``swinViT``, and a
first convolution trained on one channel when the data has four. :func:`load_pretrained` handles
all of these and returns a :class:`LoadReport` instead of failing or silently loading nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from mssl.weights.checks import check_loadable
from mssl.weights.load_report import LoadReport
from mssl.weights.safe_io import read_weights, resolve_weights, unwrap_state_dict
from mssl.weights.sidecar import read_sidecar
from mssl.weights.stem import adapt_input_channels, is_input_channel_mismatch

V2_BLOCK = re.compile(r"(^|\.)layers\dc\.")  # SwinUNETR v2's extra residual block per stage

# Prefixes that training wrappers put in front of the encoder's own names, tried in this order and
# repeatedly (``module.student.backbone.x`` → ``x``); a key is only rewritten when that finds a home.
STRIP_PREFIXES = ("method.backbone.", "_orig_mod.", "module.", "student.", "backbone.", "model.")
# Module names that different code bases spell differently (MONAI SSL pre-training saves ``swin_vit``).
NAME_ALIASES = {"swin_vit": "swinViT"}

Weights = str | Path | Mapping[str, torch.Tensor]


def canonical(key: str) -> str:
    """``key`` with aliased module names replaced by their canonical spelling."""
    return ".".join(NAME_ALIASES.get(part, part) for part in key.split("."))


def stripped_forms(key: str) -> Iterator[str]:
    """``key`` then each form with one more wrapper prefix removed."""
    yield key
    while True:
        prefix = next((p for p in STRIP_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            return
        key = key[len(prefix) :]
        yield key


def _roots(keys: Iterable[str]) -> list[str]:
    """Every dotted prefix of ``keys`` (``""``, ``"swinViT."``, ``"backbone.swinViT."``...), shortest first."""
    roots = {""}
    for key in keys:
        parts = key.split(".")
        roots.update(".".join(parts[:i]) + "." for i in range(1, len(parts)))
    return sorted(roots, key=lambda r: (len(r), r))


def align_keys(source_keys: Iterable[str], target_keys: Iterable[str]) -> dict[str, str]:
    """Map source keys to target keys: strip wrapper prefixes, unify aliases, re-root under one prefix.

    The root is the one target prefix under which most source keys find a home (``""`` on ties), so
    bare ``patch_embed.*`` keys land in ``swinViT.patch_embed.*`` and ``swinViT.*`` keys land in a
    segmentation net's ``backbone.swinViT.*``. Each target key receives at most one source key.
    """
    by_canonical = {canonical(t): t for t in target_keys}
    forms = {k: [canonical(f) for f in stripped_forms(k)] for k in source_keys}

    def homes(root: str) -> int:
        return sum(any(root + f in by_canonical for f in fs) for fs in forms.values())

    root = max(_roots(by_canonical), key=homes)  # max keeps the first (shortest) root among ties
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    for key, fs in forms.items():
        target = next((by_canonical[root + f] for f in fs if root + f in by_canonical), None)
        if target is not None and target not in taken:
            mapping[key] = target
            taken.add(target)
    return mapping


def input_channels_of(state: Mapping[str, torch.Tensor]) -> int | None:
    """Input channels of a network: dim 1 of its first convolution kernel in registration order."""
    first = next((v for k, v in state.items() if k.endswith("weight") and v.ndim >= 3), None)
    return None if first is None else int(first.shape[1])


def load_pretrained(
    network: nn.Module,
    weights: Weights,
    in_channels: int | None = None,
    strict: bool = False,
    source: str | None = None,
    verbose: bool = True,
    untrained: Sequence[str] | None = None,
) -> LoadReport:
    """Load ``weights`` into ``network`` in place and report what loaded, per top-level module.

    weights: a safetensors / weights-only torch / Lightning checkpoint file, an export or run folder,
        or a state dict. Files are never unpickled (see :mod:`mssl.weights.safe_io`).
    in_channels: the network's input channels; stem kernels trained with another count are adapted
        (see :mod:`mssl.weights.stem`). Default: read from the network's first convolution.
    strict: raise instead of loading when any key is missing, unexpected or shape-mismatched.
    source: the name messages give a state dict (default "state dict"; files are named by their path).
    verbose: print the report (per-module table, shape problems, hints such as a SwinUNETR v1/v2 mismatch).
    untrained: source keys pre-training never changed, reported as "not trained" instead of pre-trained
        (default: the ``untrained`` list of a file's sidecar; unknown for a state dict).
    Keys that do not load keep the network's own initialisation. NaN/inf tensors, or integer/bool ones
    for float weights, refuse the whole file (:class:`~mssl.weights.checks.BadWeightsError`).
    """
    untrained_source = untrained
    if isinstance(weights, Mapping):
        source, tensors = source or "state dict", unwrap_state_dict(weights, source=source or "state dict")
    else:
        path = resolve_weights(weights)
        source, tensors = str(path), read_weights(path)
        if untrained_source is None:
            sidecar = read_sidecar(path)
            untrained_source = sidecar.untrained if sidecar else None
    target = network.state_dict()
    target_channels = in_channels if in_channels is not None else input_channels_of(target)
    report = LoadReport(source=source, target=type(network).__name__, network_keys=list(target))
    to_load: dict[str, torch.Tensor] = {}
    mapping = align_keys(tensors, target)
    check_loadable(tensors, {key: target[name] for key, name in mapping.items()}, source)
    for key, name in mapping.items():
        tensor, expected = tensors[key], target[name]
        if key != name:
            report.renamed[key] = name
        if tensor.shape == expected.shape:
            to_load[name] = tensor
            report.loaded.append(name)
        elif is_input_channel_mismatch(tensor.shape, expected.shape) and expected.shape[1] == target_channels:
            to_load[name] = adapt_input_channels(tensor, target_channels)
            report.adapted[name] = (tuple(tensor.shape), tuple(expected.shape))
        else:
            report.mismatched[name] = (tuple(tensor.shape), tuple(expected.shape))
    report.unexpected = [k for k in tensors if k not in mapping]
    report.missing = [k for k in target if k not in to_load and k not in report.mismatched]
    if untrained_source is not None:
        report.trained_known = True
        report.untrained = [mapping[key] for key in untrained_source if key in mapping and mapping[key] in to_load]
    report.hints = swin_version_hints(report)
    if verbose:
        Console(stderr=True).print(report)
    problems = {"missing": report.missing, "unexpected": report.unexpected, "shape-mismatched": list(report.mismatched)}
    if strict and any(problems.values()):
        summary = "; ".join(f"{len(keys)} {kind} (e.g. {', '.join(keys[:3])})" for kind, keys in problems.items() if keys)
        raise ValueError(f"{source}: strict loading failed: {summary}")
    network.load_state_dict({k: v.to(dtype=target[k].dtype) for k, v in to_load.items()}, strict=False)
    return report


def swin_version_hints(report: LoadReport) -> list[str]:
    """SwinUNETR v2 adds a residual block per stage (``swinViT.layers{i}c.*``); a v1 network built with
    MONAI's default ``use_v2=False`` silently drops those tensors of v2 weights, and the reverse leaves
    them at their initialisation. Either way one line says which flag to change."""
    if any(V2_BLOCK.search(k) for k in report.unexpected):
        return ["the weights are SwinUNETR v2 (swinViT.layers*c.* tensors) but the network is v1: build it with use_v2=True"]
    if any(V2_BLOCK.search(k) for k in report.missing) and report.loaded and not any(V2_BLOCK.search(k) for k in report.loaded):
        return ["the network is SwinUNETR v2 but the weights are v1 (no swinViT.layers*c.* tensors): build it with use_v2=False"]
    return []
