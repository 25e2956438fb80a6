"""nnU-Net-style post-processing of connected components, chosen per class on validation.

Two operations, from milder to stronger:
- ``islands``: remove the class's components smaller than ``ISLAND_FRACTION`` of its largest one. This drops a
  few stray voxels far from the organ but keeps an organ predicted in two large pieces (a spinal cord split at
  a vertebra), which keep-largest-component would halve.
- ``largest``: keep the class's largest component only (nnU-Net's choice).

Removing components helps organs that come in one piece and can hurt those that do not, so the choice is
made per class on the validation cases: an operation qualifies when it raises the class's mean validation
Dice and lowers it on no validation case, and the qualifying operation with the highest mean is chosen (the
milder one on a tie). The no-case-lower condition matters with the few validation cases a CPU budget affords:
where the largest component is the wrong organ (a right parotid predicted on both sides), one case loses most
of its Dice while a +0.004 mean gain on four cases elsewhere would still have chosen it (OpenKBP, 2026-12-05).
The decision is stored with the run and applied at evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import KeepLargestConnectedComponent
from skimage.measure import label as label_components

# A component smaller than this share of the class's largest is an island. Stray predictions are a few voxels
# against organs of hundreds to thousands; the two halves of a split organ are each far above a tenth.
ISLAND_FRACTION = 0.1
OPERATIONS = ("islands", "largest")  # milder first: ties go to the earlier one
DESCRIPTIONS = {"islands": "small islands removed", "largest": "largest component kept"}


def keep_largest_component(prediction: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Label map (*S) with every class in ``classes`` reduced to its largest connected component (26-connected)."""
    if not classes:
        return prediction
    kept = KeepLargestConnectedComponent(applied_labels=list(classes), independent=True, connectivity=3)(prediction[None].clone())  # MONAI edits its input in place
    return torch.as_tensor(kept)[0]


def remove_small_islands(prediction: torch.Tensor, classes: Sequence[int], fraction: float = ISLAND_FRACTION) -> torch.Tensor:
    """Label map (*S) with the components (26-connected) of each class in ``classes`` that are smaller than
    ``fraction`` of that class's largest component set to background.

    Labels the components with scikit-image, as MONAI's component transforms do: MONAI's RemoveSmallObjects
    takes an absolute size, and the threshold here is relative to the largest component.
    """
    result = prediction.clone()
    for c in classes:
        components = torch.from_numpy(label_components((prediction == c).cpu().numpy(), connectivity=3)).to(prediction.device)
        sizes = torch.bincount(components.flatten())[1:]
        if sizes.numel() == 0:
            continue
        small = torch.nonzero(sizes < fraction * sizes.max()).flatten() + 1
        result[torch.isin(components, small)] = 0
    return result


def apply_postprocessing(prediction: torch.Tensor, operations: Mapping[int, str]) -> torch.Tensor:
    """``prediction`` with each class's chosen operation (``OPERATIONS``) applied."""
    apply = {"islands": remove_small_islands, "largest": keep_largest_component}
    for operation in OPERATIONS:
        classes = sorted(c for c, op in operations.items() if op == operation)
        if classes:
            prediction = apply[operation](prediction, classes)
    return prediction


@dataclass(frozen=True)
class Evidence:
    """An operation's effect on one class over the validation cases: mean Dice with it, and the largest
    per-case fall it causes (0 when no case loses)."""

    dice: float
    worst_case_change: float


@dataclass(frozen=True)
class Decision:
    """One class's validation evidence: mean Dice without post-processing and with each operation."""

    without: float
    operations: dict[str, Evidence]

    @property
    def chosen(self) -> str | None:
        """The qualifying operation (mean up, no case down) with the highest mean; None when none qualifies."""
        qualifying = [op for op in OPERATIONS if self.operations[op].dice > self.without and self.operations[op].worst_case_change >= 0.0]
        return max(qualifying, key=lambda op: self.operations[op].dice, default=None)  # max keeps the first of equals


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
        without = plain[:, c - 1]
        evaluable = np.isfinite(without)
        if not evaluable.any():
            continue
        evidence = {}
        for op in OPERATIONS:
            processed = np.stack([dice_of(apply_postprocessing(p, {c: op}), i) for i, p in enumerate(predictions)])[:, c - 1]
            change = processed[evaluable] - without[evaluable]
            evidence[op] = Evidence(float(processed[evaluable].mean()), float(min(change.min(), 0.0)))
        decisions[c] = Decision(float(without[evaluable].mean()), evidence)
    return decisions


def chosen_operations(decisions: Mapping[int, Decision]) -> dict[int, str]:
    """Class → the operation validation chose for it (classes with none are left out)."""
    return {c: d.chosen for c, d in sorted(decisions.items()) if d.chosen is not None}


def stored_operations(postprocessing: Mapping, class_names: Sequence[str]) -> dict[int, str]:
    """Class index → operation from a run's stored decision. Runs written before the islands operation
    (2026-12-06) list their keep-largest-component classes under "classes"."""
    if "operations" in postprocessing:
        return {class_names.index(name): op for name, op in postprocessing["operations"].items()}
    return {class_names.index(name): "largest" for name in postprocessing.get("classes", [])}


def describe_operations(operations: Mapping[int, str], class_names: Sequence[str]) -> str:
    """'SpinalCord: small islands removed, Mandible: largest component kept', or 'none'."""
    return ", ".join(f"{class_names[c]}: {DESCRIPTIONS[op]}" for c, op in sorted(operations.items())) or "none"
