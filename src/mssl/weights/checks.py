"""Refuse weights that would silently poison a model: NaN/inf values, or integer/bool tensors for float ones.

One shared check for everything that writes or reads weights (checkpoint writes, ``mssl export``,
``mssl inspect``, :func:`mssl.weights.loading.load_pretrained` and so fine-tuning): a diverged run
must never leave a NaN checkpoint behind, and a NaN or integer weight file must never load as if it
were fine.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

LISTED_NAMES = 5  # tensor names shown in a message; the rest are counted


class BadWeightsError(ValueError):
    """Weights with non-finite values or the wrong kind of dtype; the message names the tensors."""


def named_tensors(content: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts/lists/tuples (a Lightning checkpoint, an optimiser state), by dotted path."""
    if isinstance(content, torch.Tensor):
        yield prefix, content
    elif isinstance(content, Mapping):
        for key, value in content.items():
            yield from named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(content, (list, tuple)):
        for number, value in enumerate(content):
            yield from named_tensors(value, f"{prefix}.{number}" if prefix else str(number))


def nonfinite_names(content: Any) -> list[str]:
    """Paths of the floating-point tensors in ``content`` holding NaN or ±inf."""
    return [name for name, t in named_tensors(content) if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def check_finite(content: Any, source: str) -> None:
    """Raise :class:`BadWeightsError` naming every tensor of ``content`` with NaN/inf values."""
    bad = nonfinite_names(content)
    if bad:
        raise BadWeightsError(f"{source}: NaN/inf values in {listed(bad)}; refusing to use them")


def check_loadable(tensors: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`BadWeightsError` when a tensor headed for a float parameter is not float, or any is NaN/inf.

    ``targets`` maps each source key to the network tensor it would replace.
    """
    wrong_kind = [f"{k} ({tensors[k].dtype})" for k, t in targets.items() if t.is_floating_point() and not tensors[k].is_floating_point()]
    if wrong_kind:
        raise BadWeightsError(f"{source}: integer/bool values in {listed(wrong_kind)} where the network has float weights; refusing to cast them")
    check_finite(tensors, source)


def listed(names: list[str]) -> str:
    """``"3 tensors (a, b, c)"``, at most ``LISTED_NAMES`` names shown."""
    shown = ", ".join(names[:LISTED_NAMES]) + (f" and {len(names) - LISTED_NAMES} more" if len(names) > LISTED_NAMES else "")
    return f"{len(names)} tensor{'s' if len(names) != 1 else ''} ({shown})"
