"""Learning-rate schedules, stepped every optimiser step: warm-up then half-cosine (or constant); poly decay."""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine:
    """Multiplier of the base lr at step ``s`` (0-based).

    Warm-up: (s + 1) / warmup_steps, reaching 1 at the last warm-up step. Then ``cosine`` decays
    to ``min_ratio`` at ``max_steps``; ``constant`` stays at 1. A plain object (not a lambda) so its
    fields go into the checkpoint as numbers.
    """

    def __init__(self, warmup_steps: int, max_steps: int, schedule: Literal["cosine", "constant"], min_ratio: float = 0.0) -> None:
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.schedule = schedule
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, max_steps: int, schedule: Literal["cosine", "constant"], min_ratio: float = 0.0) -> LambdaLR:
    """A per-step ``LambdaLR`` following :class:`WarmupCosine`."""
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, max_steps, schedule, min_ratio))


class PolyDecay:
    """Multiplier (1 - s / max_steps) ** exponent, nnU-Net's schedule (exponent 0.9); 0 from ``max_steps`` on."""

    def __init__(self, max_steps: int, exponent: float = 0.9) -> None:
        self.max_steps = max_steps
        self.exponent = exponent

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.max_steps) ** self.exponent


def poly(optimizer: Optimizer, max_steps: int, exponent: float = 0.9) -> LambdaLR:
    """A per-step ``LambdaLR`` following :class:`PolyDecay`."""
    return LambdaLR(optimizer, PolyDecay(max_steps, exponent))
