"""Per-step randomness and RNG snapshots, so that a resumed run draws exactly what the original drew."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

_SEED_BITS = 63


def step_seed(seed: int, step: int, micro_batch: int, rank: int) -> int:
    """A well-mixed seed for one micro-batch of one optimiser step on one rank."""
    return int(np.random.SeedSequence([seed, step, micro_batch, rank]).generate_state(1, np.uint64)[0] >> (64 - _SEED_BITS))


def seed_init(seed: int) -> None:
    """Seed torch, NumPy and ``random`` before the model is built: the same seed gives the same initial weights."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def seed_step(seed: int, step: int, micro_batch: int, rank: int) -> None:
    """Seed torch (CPU and every CUDA device), NumPy and ``random`` for this micro-batch."""
    value = step_seed(seed, step, micro_batch, rank)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def rng_state() -> dict[str, Any]:
    """Every global RNG state as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position, "has_gauss": has_gauss, "cached": cached},
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]
