"""When fine-tuning has converged: validation Dice no longer rises.

``steps="auto"`` trains until the best validation Dice of the last ``window`` validations exceeds the
best before them by no more than ``delta``; the same test says whether a fixed-length run ended on a
plateau, which ``result.json`` reports as ``converged``.
"""

from __future__ import annotations

from typing import Sequence


def on_plateau(history: Sequence[float], window: int, delta: float) -> bool:
    """True when the last ``window`` values gained at most ``delta`` over the best value before them.

    NaN values (no evaluable case) count as no gain; fewer than ``window + 1`` values is never a plateau.
    """
    if len(history) <= window:
        return False
    earlier = max((v for v in history[:-window] if v == v), default=float("-inf"))
    recent = max((v for v in history[-window:] if v == v), default=float("-inf"))
    return recent - earlier <= delta
