"""nnU-Net-style post-processing: keep the largest connected component of a class, only where it helps.

Removing stray islands helps organs that come in one piece (mandible, brainstem) and can hurt those that
do not, so the choice is made per class on the validation cases: a class is post-processed when that
raises its mean validation Dice (nnU-Net's rule) and no validation case loses more than ``MAX_CASE_LOSS``.
The second condition matters with the few validation cases a CPU budget affords: where the largest component
is the wrong organ (a right parotid predicted on both sides), that case loses most of its Dice while a +0.004
mean gain on four cases elsewhere would still have chosen it (OpenKBP, 2026-12-05). A small loss is the
benign kind: an organ predicted in two true pieces (a spinal cord split at a vertebra) loses the smaller one,
while the far islands the operation removes elsewhere are what dominate HD95. Refusing every loss kept
SpinalCord's islands in an OpenKBP k=10 run whose one losing validation case lost 0.046: test SpinalCord HD95
63.6 mm, against 19.4 mm with keep-largest-component (benchmarks/results/postprocessing_candidates.md).
The decision is stored with the run and applied at evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent

# the largest per-case validation Dice loss that still lets a class be post-processed: far above what a split
# organ's smaller true piece costs (a few hundredths), far below a wrong-organ largest component (most of the Dice)
MAX_CASE_LOSS = 0.1


def keep_largest_component(prediction: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Label map (*S) with every class in ``classes`` reduced to its largest connected component (26-connected)."""
    if not classes:
        return prediction
    kept = KeepLargestConnectedComponent(applied_labels=list(classes), independent=True, connectivity=3)(prediction[None].clone())  # MONAI edits its input in place
    return torch.as_tensor(kept)[0]


@dataclass(frozen=True)
class Decision:
    """One class's validation evidence: mean Dice without and with keep-largest-component, and the largest
    per-case fall it causes (0 when no case loses)."""

    without: float
    with_: float
    worst_case_change: float

    @property
    def applies(self) -> bool:
        return self.with_ > self.without and self.worst_case_change >= -MAX_CASE_LOSS


def choose_postprocessing(
    predictions: Sequence[torch.Tensor],
    dice_of: Callable[[torch.Tensor, int], np.ndarray],
    classes: Sequence[int],
) -> dict[int, Decision]:
    """Per class contoured on some validation case: its :class:`Decision`.

    predictions: label maps of the validation cases; dice_of(prediction, case_index) → per-foreground-
    class Dice (NaN where not evaluable).
    """
    plain = np.stack([dice_of(p, i) for i, p in enumerate(predictions)])  # (cases, C - 1)
    decisions = {}
    for c in classes:
        processed = np.stack([dice_of(keep_largest_component(p, [c]), i) for i, p in enumerate(predictions)])
        without, with_ = plain[:, c - 1], processed[:, c - 1]
        evaluable = np.isfinite(without)
        if evaluable.any():
            change = with_[evaluable] - without[evaluable]
            decisions[c] = Decision(float(without[evaluable].mean()), float(with_[evaluable].mean()), float(min(change.min(), 0.0)))
    return decisions


def selected_classes(decisions: dict[int, Decision]) -> list[int]:
    """The classes keep-largest-component helps on validation (mean up, no case down by more than MAX_CASE_LOSS)."""
    return sorted(c for c, decision in decisions.items() if decision.applies)
