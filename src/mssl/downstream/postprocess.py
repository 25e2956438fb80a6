"""nnU-Net-style post-processing: keep the largest connected component of a class, only where it helps.

Removing stray islands helps organs that come in one piece (mandible, brainstem) and can hurt those that
do not, so the choice is made per class on the validation cases: a class is post-processed when that
raises its mean validation Dice. The decision is stored with the run and applied at evaluation.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent


def keep_largest_component(prediction: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Label map (*S) with every class in ``classes`` reduced to its largest connected component (26-connected)."""
    if not classes:
        return prediction
    kept = KeepLargestConnectedComponent(applied_labels=list(classes), independent=True, connectivity=3)(prediction[None].clone())  # MONAI edits its input in place
    return torch.as_tensor(kept)[0]


def choose_postprocessing(
    predictions: Sequence[torch.Tensor],
    dice_of: Callable[[torch.Tensor, int], np.ndarray],
    classes: Sequence[int],
) -> dict[int, tuple[float, float]]:
    """Per class: (mean validation Dice without, with keep-largest-component).

    predictions: label maps of the validation cases; dice_of(prediction, case_index) → per-foreground-
    class Dice (NaN where not evaluable). A class is then post-processed when its 'with' beats 'without'.
    """
    plain = np.stack([dice_of(p, i) for i, p in enumerate(predictions)])  # (cases, C - 1)
    decisions = {}
    for c in classes:
        processed = np.stack([dice_of(keep_largest_component(p, [c]), i) for i, p in enumerate(predictions)])
        column = plain[:, c - 1], processed[:, c - 1]
        if np.isfinite(column[0]).any():
            decisions[c] = (float(np.nanmean(column[0])), float(np.nanmean(column[1])))
    return decisions


def selected_classes(decisions: dict[int, tuple[float, float]]) -> list[int]:
    """The classes whose validation Dice rose with keep-largest-component."""
    return sorted(c for c, (without, with_) in decisions.items() if with_ > without)
